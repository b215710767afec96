"""Replay any CSV (a timestamp column plus sensor columns) into the pipeline.

Each column maps to a (sensor_id, metric, unit). By default the whole file is one
device (``--sensor-id``) and every column one of its metrics; ``--per-column`` makes
each column its own sensor; a mapping file (YAML/JSON ``{column: {sensor_id, metric,
unit}}``) says exactly. Column names that name a canonical metric ("Pressure",
"Temperature_C", "Accelerometer1RMS" -> vibration) are mapped to it when that is
unambiguous within a device; otherwise the metric is the column name, lowercased.

Rows go out at the original pace (``speed=1``), faster (``speed=K``) or as fast as
the sink takes them (``speed=None``). Timestamps are sent as in the file
(``original``), moved so the first row is now (``shift``), or stamped with the wall
clock when sent (``wall``); ``auto`` is ``shift`` at original speed and ``wall`` otherwise,
so ingest's lateness and future checks hold for a live pipeline.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import yaml

from services.simulator.sinks import Sink
from services.simulator.units import METRICS
from shared.timeutil import now_ms

#: Column-name fragments that identify a canonical metric, most specific first.
_HINTS: tuple[tuple[str, str], ...] = (
    ("bearing", "bearing_temperature"),
    ("pressure_diff", "pressure_diff"),
    ("differential", "pressure_diff"),
    ("pressure", "pressure"),
    ("temp", "temperature"),
    ("thermocouple", "temperature"),
    ("flow", "flow"),
    ("volume_flow", "flow"),
    ("current", "current"),
    ("voltage", "voltage"),
    ("accelerometer", "vibration"),
    ("vibration", "vibration"),
    ("level", "level"),
    ("turbidity", "turbidity"),
    ("chlorine", "chlorine"),
    ("conductivity", "conductivity"),
    ("density", "density"),
    ("power", "power"),
    ("energy", "energy"),
)


def sanitize(name: str) -> str:
    """A column name as an id or metric: lowercase, runs of other characters become ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_") or "value"


def guess_metric(column: str) -> str | None:
    key = sanitize(column)
    if key in METRICS:
        return key
    if key in ("ph", "p_h"):
        return "ph"
    for hint, metric in _HINTS:
        if hint in key:
            return metric
    return None


@dataclass
class ColumnMap:
    column: str
    sensor_id: str
    metric: str
    unit: str | None = None


@dataclass
class ReplaySource:
    """A CSV file read and mapped: timestamps (epoch ms) and per-sensor value columns."""

    ts: np.ndarray
    columns: list[ColumnMap]
    data: np.ndarray  # [rows, columns] float64
    site: str
    zone: str
    utility: str
    asset: str
    sensors: list[str] = field(default_factory=list)

    @classmethod
    def read(
        cls,
        path: str | Path,
        time_column: str = "timestamp",
        sensor_id: str | None = None,
        per_column: bool = False,
        mapping: str | Path | None = None,
        site: str = "replay",
        zone: str | None = None,
        utility: str = "water",
        asset: str = "pump",
    ) -> ReplaySource:
        path = Path(path)
        frame = pd.read_csv(path)
        if time_column not in frame.columns:
            raise ValueError(f"{path}: no column {time_column!r} (columns: {', '.join(map(str, frame.columns[:12]))})")
        ts = _to_ms(frame[time_column], path, time_column)
        order = np.argsort(ts, kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        ts = ts[order]
        numeric = [c for c in frame.columns if c != time_column and pd.api.types.is_numeric_dtype(frame[c])]
        if not numeric:
            raise ValueError(f"{path}: no numeric sensor columns besides {time_column!r}")
        device = sanitize(sensor_id or path.stem)
        if mapping:
            spec = _load_mapping(mapping)
            unknown = set(spec) - set(numeric)
            if unknown:
                raise ValueError(f"mapping names columns that are not numeric columns of {path}: {sorted(unknown)}")
            cols = [
                ColumnMap(c, str(m.get("sensor_id", device)), str(m.get("metric", sanitize(c))), m.get("unit"))
                for c, m in spec.items()
            ]
        else:
            cols = [ColumnMap(c, f"{device}-{sanitize(c)}" if per_column else device, "") for c in numeric]
            _assign_metrics(cols)
        data = frame[[c.column for c in cols]].to_numpy(dtype=float)
        return cls(
            ts=ts,
            columns=cols,
            data=data,
            site=site,
            zone=zone or f"{site}-{device}",
            utility=utility,
            asset=asset,
            sensors=sorted({c.sensor_id for c in cols}),
        )

    def readings(self, i: int, ts_value: Any) -> list[tuple[str, dict[str, Any]]]:
        """The readings of row ``i``: one per sensor with at least one value."""
        by_sensor: dict[str, dict[str, Any]] = {}
        units: dict[str, dict[str, str]] = {}
        row = self.data[i].tolist()
        for col, v in zip(self.columns, row, strict=True):
            if v != v:  # NaN: the device sent nothing for this metric
                continue
            by_sensor.setdefault(col.sensor_id, {})[col.metric] = v
            if col.unit:
                units.setdefault(col.sensor_id, {})[col.metric] = col.unit
        out = []
        for sid, values in by_sensor.items():
            d: dict[str, Any] = {
                "sensor_id": sid,
                "ts": ts_value,
                "site": self.site,
                "zone": self.zone,
                "utility": self.utility,
                "asset": self.asset,
                "values": values,
            }
            if sid in units:
                d["units"] = units[sid]
            out.append((sid, d))
        return out


def _assign_metrics(cols: list[ColumnMap]) -> None:
    guesses: dict[tuple[str, str], list[ColumnMap]] = {}
    for c in cols:
        g = guess_metric(c.column)
        c.metric = g or sanitize(c.column)
        if g:
            guesses.setdefault((c.sensor_id, g), []).append(c)
    # Two columns of one device guessing the same metric keep their own names: never merge two sensors into one.
    for clash in (v for v in guesses.values() if len(v) > 1):
        for c in clash:
            c.metric = sanitize(c.column)


def _load_mapping(path: str | Path) -> dict[str, dict[str, Any]]:
    text = Path(path).read_text()
    data = orjson.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{column: {{sensor_id, metric, unit}}}}")
    return data


def _to_ms(col: pd.Series, path: Path, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col):
        v = col.to_numpy(dtype=float)
        return (v if np.nanmax(np.abs(v)) > 1e11 else v * 1000).astype(np.int64)
    try:
        parsed = pd.to_datetime(col, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        try:
            parsed = pd.to_datetime(col, utc=True, format="mixed")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: column {name!r} is not a time: {exc}") from None
    if parsed.isna().any():
        raise ValueError(f"{path}: column {name!r} has {int(parsed.isna().sum())} empty or unreadable times")
    return parsed.astype("datetime64[ms, UTC]").astype("int64").to_numpy()


@dataclass
class ReplayReport:
    sink: str
    target: str
    rows: int = 0
    messages: int = 0
    wall_s: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    stopped_by: str = ""

    def to_dict(self, sink: Sink) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "target": self.target,
            "rows": self.rows,
            "messages": self.messages,
            "wall_s": round(self.wall_s, 3),
            "rate_per_s": round(self.messages / self.wall_s, 1) if self.wall_s else None,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "stopped_by": self.stopped_by,
            "delivery": sink.stats.to_dict(),
        }


async def replay(
    source: ReplaySource,
    sink: Sink,
    index: dict[str, int],
    speed: float | None = 1.0,
    timestamps: str = "auto",
    tick_ms: int = 100,
    stop: asyncio.Event | None = None,
) -> ReplayReport:
    """Send every row of ``source``; ``index`` maps each sensor id to the sink's sensor index."""
    if timestamps == "auto":
        timestamps = "shift" if speed == 1.0 else "wall"
    if timestamps not in ("original", "shift", "wall"):
        raise ValueError("timestamps must be original, shift, wall or auto")
    stop = stop or asyncio.Event()
    report = ReplayReport(sink.name, sink.target)
    n = len(source.ts)
    if n == 0:
        return report
    t0 = int(source.ts[0])
    wall0 = time.monotonic()
    wall0_ms = now_ms()
    i = 0
    while i < n and not stop.is_set():
        if speed is None:
            j = min(n, i + 2000)
        else:
            due = t0 + (time.monotonic() - wall0) * 1000 * speed
            j = int(np.searchsorted(source.ts, due, side="right"))
            if j <= i:
                wait = min(max((source.ts[i] - due) / speed, 1.0), tick_ms) / 1000
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
        sensors, payloads = [], []
        for k in range(i, j):
            ts = int(source.ts[k])
            if timestamps == "shift":
                ts = wall0_ms + (ts - t0)
            elif timestamps == "wall":
                ts = now_ms()
            for sid, d in source.readings(k, ts):
                sensors.append(index[sid])
                payloads.append(orjson.dumps(d))
            report.first_ts = ts if report.first_ts is None else report.first_ts
            report.last_ts = ts
        await sink.send(sensors, payloads)
        report.rows += j - i
        report.messages += len(payloads)
        i = j
        await asyncio.sleep(0)
    report.stopped_by = "end of file" if i >= n else "signal"
    await sink.flush()
    report.wall_s = time.monotonic() - wall0
    return report
