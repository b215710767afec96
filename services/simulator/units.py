"""Canonical metrics and the other units some field devices report in.

The simulator computes every value in canonical units; a device configured with a
different unit converts on the way out (``to_device``), the way a real device
would, and says so in the payload's ``units`` so ingest can convert it back.
"""

from __future__ import annotations

#: Canonical metric -> canonical unit. The column order of every values matrix.
CANONICAL_UNITS: dict[str, str] = {
    "pressure": "kPa",
    "flow": "m3/h",
    "level": "m",
    "ph": "pH",
    "turbidity": "NTU",
    "chlorine": "mg/L",
    "conductivity": "uS/cm",
    "temperature": "C",
    "energy": "kWh",
    "power": "kW",
    "voltage": "V",
    "current": "A",
    "density": "kg/m3",
    "vibration": "mm/s",
    "pressure_diff": "kPa",
    "bearing_temperature": "C",
}
METRICS: tuple[str, ...] = tuple(CANONICAL_UNITS)
METRIC_INDEX: dict[str, int] = {m: i for i, m in enumerate(METRICS)}

#: Decimals a device sends per metric (real devices do not send 17 significant digits).
DECIMALS: dict[str, int] = {
    "pressure": 2,
    "flow": 2,
    "level": 3,
    "ph": 2,
    "turbidity": 3,
    "chlorine": 3,
    "conductivity": 1,
    "temperature": 2,
    "energy": 4,
    "power": 3,
    "voltage": 1,
    "current": 2,
    "density": 4,
    "vibration": 3,
    "pressure_diff": 2,
    "bearing_temperature": 2,
}

#: Range a real measurement stays in (canonical units): incident effects are clipped to it, so an
#: anomaly is unusual but possible (ingest passes it on to the detector) rather than impossible
#: (ingest would quarantine it as out of range, and impossible values are the corrupt faults' job).
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "pressure": (0.0, 9000.0),
    "flow": (0.0, 19000.0),
    "level": (0.0, 90.0),
    "ph": (2.5, 11.5),
    "turbidity": (0.0, 900.0),
    "chlorine": (0.0, 9.0),
    "conductivity": (0.0, 90000.0),
    "temperature": (-35.0, 90.0),
    "energy": (0.0, 1.0e9),
    "power": (0.0, 9.0e5),
    "voltage": (0.0, 450000.0),
    "current": (0.0, 90000.0),
    "density": (0.1, 1400.0),
    "vibration": (0.0, 90.0),
    "pressure_diff": (0.0, 900.0),
    "bearing_temperature": (-35.0, 140.0),
}
#: A device's "no reading" code, chosen per metric so it is outside any physical range:
#: -9999 where a metric cannot be that negative, the Modbus-style 9.9e37 where it can (flow, power...).
SENTINELS: dict[str, float] = {
    m: (9.9e37 if m in ("flow", "energy", "power", "current") else -9999.0) for m in PLAUSIBLE
}

#: Unit -> (scale, offset) such that device_value = canonical_value * scale + offset.
DEVICE_UNITS: dict[str, tuple[float, float]] = {
    "psi": (0.14503773773, 0.0),  # from kPa
    "bar": (0.01, 0.0),  # from kPa
    "L/s": (1 / 3.6, 0.0),  # from m3/h
    "°F": (1.8, 32.0),  # from C
    "Wh": (1000.0, 0.0),  # from kWh
}
#: Which canonical unit each device unit converts from.
DEVICE_UNIT_BASE: dict[str, str] = {"psi": "kPa", "bar": "kPa", "L/s": "m3/h", "°F": "C", "Wh": "kWh"}


def conversion(metric: str, unit: str | None) -> tuple[float, float]:
    """``(scale, offset)`` from canonical to ``unit`` for ``metric``; identity for the canonical unit."""
    canonical = CANONICAL_UNITS[metric]
    if unit is None or unit == canonical:
        return 1.0, 0.0
    if DEVICE_UNIT_BASE.get(unit) != canonical:
        raise ValueError(f"unit {unit!r} is not a unit of {metric} (canonical {canonical})")
    return DEVICE_UNITS[unit]


#: Extra decimals a device unit needs so a converted value keeps the canonical precision.
_EXTRA_DECIMALS = {"psi": 1, "bar": 2, "L/s": 1, "°F": 0, "Wh": -3}


def decimals_for(metric: str, unit: str | None) -> int:
    return max(0, DECIMALS[metric] + _EXTRA_DECIMALS.get(unit or "", 0))
