"""Readings as field devices put them on the wire: JSON with each device's quirks, or broken bytes.

The encoder turns a :class:`Batch` into ``(key, payload)`` pairs. Values are converted
to the device's units and rounded the way devices round; timestamps take the device's
format (epoch ms, epoch seconds, ISO 8601 in UTC or with a local offset). Corrupt rows
become one of the corruptions ingest must quarantine. Every random choice is a pure
function of (seed, sensor, ts), so the same reading always encodes to the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from services.simulator.faults import DETAIL_CODE, DETAILS, FAULT_CODE
from services.simulator.generator import Batch, Engine
from services.simulator.hashing import uniform
from services.simulator.units import CANONICAL_UNITS, METRIC_INDEX, METRICS, SENTINELS, conversion, decimals_for

M = len(METRICS)
_TS_MS, _TS_S, _TS_ISO, _TS_ISO_LOCAL = range(4)
_TS_CODES = {"ms": _TS_MS, "s": _TS_S, "iso": _TS_ISO, "iso_local": _TS_ISO_LOCAL}
_NAN_MARK = "\x00nan\x00"
_GARBAGE_TEXT = (
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"ERR 0x1F sensor timeout",
    b"AT+CSQ\r\nOK",
    b"{'sensor_id': 'x', 'ts': 1}",  # Python repr, not JSON
)


class Encoder:
    def __init__(self, engine: Engine):
        net = engine.network
        self.seed = engine.seed
        n = len(net)
        self.keys = [s.id.encode() for s in net.sensors]
        self.heads = [
            {"sensor_id": s.id, "site": s.site, "zone": s.zone, "utility": s.utility, "asset": s.asset}
            for s in net.sensors
        ]
        self.scale = np.ones((n, M))
        self.offset = np.zeros((n, M))
        self.pow10 = np.ones((n, M))
        self.metric_cols: list[list[tuple[str, int]]] = []
        self.units: list[dict[str, str] | None] = []
        for i, s in enumerate(net.sensors):
            cols = []
            units = {}
            for m in s.metrics:
                c = METRIC_INDEX[m]
                unit = s.units.get(m)
                self.scale[i, c], self.offset[i, c] = conversion(m, unit)
                self.pow10[i, c] = 10.0 ** decimals_for(m, unit)
                cols.append((m, c))
                units[m] = unit or CANONICAL_UNITS[m]
            self.metric_cols.append(cols)
            self.units.append(units if s.send_units else None)
        # Pre-serialised pieces: '{"sensor_id":..,"asset":..,"ts":' and ',"units":{..}' per sensor.
        self.prefix = [orjson.dumps(h)[:-1] + b',"ts":' for h in self.heads]
        self.tails = [b',"units":' + orjson.dumps(u) if u is not None else b"" for u in self.units]
        self.ts_format = np.array([_TS_CODES[s.ts_format] for s in net.sensors], dtype=np.int8)
        self.tz_offset_min = np.array([round(net.site_by_id[s.site].tz_offset_h * 60) for s in net.sensors])
        self.quality = np.array([s.send_quality for s in net.sensors])

    def device_values(self, batch: Batch) -> np.ndarray:
        s = batch.sensor
        dev = batch.values * self.scale[s] + self.offset[s]
        p = self.pow10[s]
        return np.round(dev * p) / p

    def timestamps(self, batch: Batch) -> list[Any]:
        fmt = self.ts_format[batch.sensor]
        out: list[Any] = batch.ts.tolist()
        sec = np.flatnonzero(fmt == _TS_S)
        if len(sec):
            whole = batch.ts[sec] % 1000 == 0
            secs = (batch.ts[sec] / 1000).tolist()
            for j, i in enumerate(sec.tolist()):
                out[i] = int(secs[j]) if whole[j] else secs[j]
        iso = np.flatnonzero(fmt == _TS_ISO)
        if len(iso):
            strings = np.datetime_as_string(batch.ts[iso].astype("datetime64[ms]"), unit="ms", timezone="UTC")
            for i, text in zip(iso.tolist(), strings.tolist(), strict=True):
                out[i] = text
        local = np.flatnonzero(fmt == _TS_ISO_LOCAL)
        if len(local):
            off = self.tz_offset_min[batch.sensor[local]]
            strings = np.datetime_as_string((batch.ts[local] + off * 60_000).astype("datetime64[ms]"), unit="ms")
            for i, text, o in zip(local.tolist(), strings.tolist(), off.tolist(), strict=True):
                out[i] = f"{text}{'+' if o >= 0 else '-'}{abs(o) // 60:02d}:{abs(o) % 60:02d}"
        return out

    def qualities(self, batch: Batch) -> np.ndarray:
        u = uniform(self.seed, 0x0A, batch.sensor, batch.ts)
        q = 0.9 + 0.1 * u
        q = np.where(batch.fault == FAULT_CODE["noise"], 0.7 + 0.2 * u, q)
        q = np.where(batch.fault == FAULT_CODE["missing"], 0.6 + 0.25 * u, q)
        return np.round(q, 3)

    def encode(self, batch: Batch) -> list[bytes]:
        """One payload per row, in the batch's order."""
        vals = self.device_values(batch).tolist()
        ts = self.timestamps(batch)
        sensors = batch.sensor.tolist()
        send_q = self.quality[batch.sensor].tolist()
        qual = self.qualities(batch).tolist() if any(send_q) else None
        special = ((batch.fault == FAULT_CODE["corrupt"]) | (batch.detail == DETAIL_CODE["null"])).tolist()
        out: list[bytes] = []
        dumps = orjson.dumps
        prefix, tails, cols_of = self.prefix, self.tails, self.metric_cols
        for i, s in enumerate(sensors):
            row = vals[i]
            values = {m: row[c] for m, c in cols_of[s] if row[c] == row[c]}
            if special[i]:
                d = {**self.heads[s], "ts": ts[i], "values": values}
                if self.units[s] is not None:
                    d["units"] = self.units[s]
                if send_q[i]:
                    d["quality"] = qual[i]  # type: ignore[index]
                out.append(self._special(batch, i, d, row))
                continue
            # The same bytes orjson.dumps(dict) gives, built from per-sensor pieces: most of a payload
            # (ids, units) never changes, so only the timestamp, values and quality are serialised per row.
            t = ts[i]
            t_bytes = b"%d" % t if type(t) is int else dumps(t)
            q = b',"quality":' + dumps(qual[i]) + b"}" if send_q[i] else b"}"  # type: ignore[index]
            out.append(b"".join((prefix[s], t_bytes, b',"values":', dumps(values), tails[s], q)))
        return out

    def _special(self, batch: Batch, i: int, d: dict[str, Any], row: list[float]) -> bytes:
        s, ts = int(batch.sensor[i]), int(batch.ts[i])
        detail = DETAILS[batch.detail[i]]
        if detail == "null":
            d["values"] = {m: (row[c] if row[c] == row[c] else None) for m, c in self.metric_cols[s]}
            return orjson.dumps(d)
        return corrupt(detail, d, np.random.default_rng([self.seed & 0xFFFFFFFF, s, ts & 0xFFFFFFFF, ts >> 32]))

    def pairs(self, batch: Batch) -> list[tuple[bytes, bytes]]:
        return list(zip([self.keys[s] for s in batch.sensor.tolist()], self.encode(batch), strict=True))


def corrupt(kind: str, d: dict[str, Any], rng: np.random.Generator) -> bytes:
    """A broken payload of the given kind, made from a good reading ``d``. Never contains CR or LF."""
    values = d.get("values") or {}
    metric = next(iter(values), None)
    if kind == "garbage":
        if rng.random() < 0.5:
            return _GARBAGE_TEXT[int(rng.integers(len(_GARBAGE_TEXT)))].replace(b"\r\n", b" ")
        junk = rng.integers(0, 256, int(rng.integers(8, 120)), dtype=np.uint8).tobytes()
        junk = junk.replace(b"\n", b"\xfe").replace(b"\r", b"\xfd")  # one payload stays one line
        return b"\xff" + junk  # 0xff never occurs in UTF-8, so this can never parse as JSON
    if kind == "truncated":
        full = orjson.dumps(d)
        return full[: max(1, int(len(full) * rng.uniform(0.2, 0.85)))]
    if kind in ("nan", "infinity", "sentinel") and metric is not None:
        token = {"nan": "NaN", "infinity": "Infinity" if rng.random() < 0.5 else "-Infinity"}.get(kind)
        if token is None:
            d["values"] = {**values, metric: SENTINELS[metric]}
            return orjson.dumps(d)
        d["values"] = {**values, metric: _NAN_MARK}
        return orjson.dumps(d).replace(orjson.dumps(_NAN_MARK), token.encode())
    if kind == "string_value" and metric is not None:
        unit = (d.get("units") or {}).get(metric, CANONICAL_UNITS.get(metric, ""))
        d["values"] = {**values, metric: f"{values[metric]} {unit}".strip()}
        return orjson.dumps(d)
    if kind == "bad_ts":
        d["ts"] = ["yesterday", "", "2024-13-45T25:61:00Z", None, "NaN"][int(rng.integers(5))]
        return orjson.dumps(d)
    if kind == "missing_field":
        d.pop(["sensor_id", "values", "ts"][int(rng.integers(3))], None)
        return orjson.dumps(d)
    # wrong_type, and any kind that needs a value when the reading has none left
    d["values"] = list(values.values()) if values else "n/a"
    return orjson.dumps(d)
