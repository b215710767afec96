"""Readings in the device formats ingest's shipped payload mappings read (services/ingest/mappings.yaml).

``--format native`` is the flowwatch payload (:class:`Encoder`). The others are what other
systems send, each carrying the rows of the sensors it can describe:

- ``gas-station``: every sensor; local time (Asia/Baku, UTC+4 all year since 2016) without an
  offset, the sensor id as ``location``, metrics named with their units (``pressure_kpa``).
- ``water-meter``: sensors with a flow; ``value`` in the device's own unit, ``unit``, and the
  device's quality as ``quality_score``.
- ``building-energy``: energy meters (``electricity_kwh``), with the site as ``building`` and the
  meter's number in its zone as ``floor``. The simulator has no building water submeters, so
  ``water_l`` is ``null`` and ingest counts that half of each message as a missing value.
- ``scada-wide``: sensors with a level, flow or pressure; one historian row per reading with
  channels ``L_T<n>`` (m), ``F_PU<n>`` (L/s), ``P_J<n>`` (mH2O). Historians log hourly, so the
  timestamp is the hour (``%d/%m/%y %H``): use it with ``--step 1h``-spaced readings.

The mapping gives a reading its own identity (``gas-<location>``, ``scada-pu3``...), so a row
arrives under that sensor id, not the simulator's. Corrupt rows become truncated or garbage
bytes of the format (the other corruptions are native-payload shapes).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from services.simulator.encode import Encoder, corrupt
from services.simulator.faults import DETAIL_CODE, FAULT_CODE
from services.simulator.generator import Batch, Engine
from services.simulator.units import DECIMALS, METRICS

FORMATS = ("native", "gas-station", "building-energy", "water-meter", "scada-wide")
#: MQTT topic root per format: inside the mapping's topic filter (a test checks it against mappings.yaml).
MQTT_ROOTS = {
    "gas-station": "flowwatch/gas-station",
    "building-energy": "flowwatch/building",
    "water-meter": "flowwatch/water-meter",
}
#: Metric -> its name with the unit, as the gas-station format (and ingest's metric_names) spells it.
UNIT_NAMES = {
    "pressure": "pressure_kpa",
    "flow": "hourly_flow_m3",
    "level": "level_m",
    "ph": "ph_ph",
    "turbidity": "turbidity_ntu",
    "chlorine": "chlorine_mg_l",
    "conductivity": "conductivity_us_cm",
    "temperature": "temperature_c",
    "energy": "energy_kwh",
    "power": "power_kw",
    "voltage": "voltage_v",
    "current": "current_a",
    "density": "density_kg_m3",
    "vibration": "vibration_mm_s",
    "pressure_diff": "pressure_diff_kpa",
    "bearing_temperature": "bearing_temperature_c",
}
BAKU_OFFSET_MS = 4 * 3_600_000
_KPA_PER_MH2O = 9.80665
_SCADA_KIND = {"pump": "PU", "reservoir": "T", "valve": "V"}  # anything else is a junction (J)
_SCADA_CHANNELS = (("level", "L", 1.0, 3), ("flow", "F", 1 / 3.6, 3), ("pressure", "P", 1 / _KPA_PER_MH2O, 4))
_ID_NUMBER = re.compile(r"(\d+)$")


def mqtt_root(fmt: str, default: str) -> str:
    return MQTT_ROOTS.get(fmt, default)


def kafka_topic(fmt: str, default: str) -> str:
    """The mapping's source topic for a format (``gas-station.raw``); the given one for native."""
    return default if fmt == "native" else f"{fmt}.raw"


def http_url(fmt: str, url: str) -> str:
    return url if fmt == "native" else f"{url}{'&' if '?' in url else '?'}mapping={fmt}"


class FormatEncoder:
    """Rows of a batch as one format's payloads. :meth:`carried` keeps the rows the format can describe."""

    def __init__(self, engine: Engine, fmt: str):
        if fmt not in FORMATS or fmt == "native":
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        self.fmt = fmt
        self.native = Encoder(engine)
        self.sensors = engine.network.sensors
        self.fits = np.array([self._fits(s.metrics) for s in self.sensors], dtype=bool)
        self.number = self._numbers()
        self.pow10 = np.array([10.0 ** DECIMALS[m] for m in METRICS])

    def _fits(self, metrics: tuple[str, ...]) -> bool:
        if self.fmt == "water-meter":
            return "flow" in metrics
        if self.fmt == "building-energy":
            return "energy" in metrics
        if self.fmt == "scada-wide":
            return any(m in metrics for m, *_ in _SCADA_CHANNELS)
        return True

    def _numbers(self) -> list[int]:
        """A number per sensor, unique per (site, asset kind): a building's floor, a SCADA channel's id."""
        seen: dict[tuple[str, str], int] = {}
        out = []
        for s in self.sensors:
            key = (s.site, s.asset) if self.fmt == "building-energy" else ("", _SCADA_KIND.get(s.asset, "J"))
            seen[key] = seen.get(key, 0) + 1
            out.append(seen[key])
        return out

    def carried(self, batch: Batch) -> Batch:
        return batch.take(np.flatnonzero(self.fits[batch.sensor]))

    def encode(self, batch: Batch) -> list[bytes]:
        """One payload per row, in the batch's order; the batch must hold only :meth:`carried` rows."""
        canonical = (np.round(batch.values * self.pow10) / self.pow10).tolist()
        device = self.native.device_values(batch).tolist() if self.fmt == "water-meter" else None
        quality = self.native.qualities(batch).tolist()
        broken = (batch.fault == FAULT_CODE["corrupt"]).tolist()
        out = []
        for i, (s, ts) in enumerate(zip(batch.sensor.tolist(), batch.ts.tolist(), strict=True)):
            message = self.message(s, ts, canonical[i], device[i] if device else None, quality[i])
            if broken[i]:
                out.append(self._broken(message, batch, i))
            else:
                out.append(orjson.dumps(message))
        return out

    def message(self, s: int, ts: int, values: list[float], device: list[float] | None, quality: float) -> Any:
        sensor = self.sensors[s]
        present = {m: values[c] for m, c in self.native.metric_cols[s] if values[c] == values[c]}
        if self.fmt == "gas-station":
            local = np.datetime64(ts + BAKU_OFFSET_MS, "ms").astype(str)
            return {
                "timestamp": local,
                "location": sensor.id,
                "sensors": {UNIT_NAMES[m]: v for m, v in present.items()},
            }
        if self.fmt == "water-meter":
            c = dict(self.native.metric_cols[s])["flow"]
            value = device[c] if device is not None and device[c] == device[c] else None
            units = self.native.units[s] or {}
            return {"sensor_id": sensor.id, "timestamp": _iso_utc(ts), "value": value,
                    "unit": units.get("flow", "m3/h"), "quality_score": quality}  # fmt: skip
        if self.fmt == "building-energy":
            return {"timestamp": _iso_utc(ts), "building": sensor.site, "floor": self.number[s],
                    "electricity_kwh": present.get("energy"), "water_l": None}  # fmt: skip
        hour = np.datetime64(ts // 3_600_000 * 3_600_000, "ms").astype(object)
        row: dict[str, Any] = {"DATETIME": hour.strftime("%d/%m/%y %H")}
        kind = _SCADA_KIND.get(sensor.asset, "J")
        for metric, letter, scale, decimals in _SCADA_CHANNELS:
            if metric in present:
                row[f"{letter}_{kind}{self.number[s]}"] = round(present[metric] * scale, decimals)
        return row

    def _broken(self, message: dict[str, Any], batch: Batch, i: int) -> bytes:
        s, ts = int(batch.sensor[i]), int(batch.ts[i])
        rng = np.random.default_rng([self.native.seed & 0xFFFFFFFF, s, ts & 0xFFFFFFFF, ts >> 32])
        kind = "garbage" if batch.detail[i] == DETAIL_CODE["garbage"] else "truncated"
        return corrupt(kind, message, rng)


def _iso_utc(ts: int) -> str:
    return f"{np.datetime64(ts, 'ms').astype(str)}Z"
