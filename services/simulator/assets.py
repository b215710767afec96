"""The kinds of field asset the simulator knows and how each one behaves.

Each asset kind says which utility it belongs to, what it measures, how often it
reports, how to draw the parameters of one device (baselines and noise, so no two
devices are alike), and how its noise-free signal follows its zone's demand.
Everything is vectorised: one call computes a [time, sensor] array per metric for
every sensor of that kind in a block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.simulator.profiles import DAY_MS, HOUR_MS, ZoneDemand

Params = dict[str, np.ndarray]
Signals = dict[str, np.ndarray]
_SQRT3 = float(np.sqrt(3.0))


@dataclass(frozen=True)
class AssetKind:
    name: str
    utility: str
    metrics: tuple[str, ...]
    interval_s: float
    #: param -> (low, high) of the uniform draw for a new device.
    param_ranges: dict[str, tuple[float, float]]
    #: metric -> (relative sd, absolute sd) of measurement noise.
    noise: dict[str, tuple[float, float]]
    generate: Callable[[np.ndarray, ZoneDemand, Params, int], Signals]

    def sample_params(self, rng: np.random.Generator) -> dict[str, float]:
        return {k: round(float(rng.uniform(lo, hi)), 4) for k, (lo, hi) in self.param_ranges.items()}


def _water_temperature(t: np.ndarray, zd: ZoneDemand, base: np.ndarray) -> np.ndarray:
    hours = zd.local_hours(t)
    doy = (t / DAY_MS) % 365.25
    return base + 0.4 * np.sin(2 * np.pi * (hours - 9) / 24) + 3.5 * np.cos(2 * np.pi * (doy - 220) / 365.25)


def _pipe(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    d = zd(t)
    # Head loss grows with flow to the power 1.85 (Hazen-Williams): pressure dips at peak demand.
    return {"flow": p["flow_base"] * d, "pressure": p["p_static"] - p["headloss"] * d**1.85}


def _reservoir(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    # Level is the integral of supply minus demand: it fills at night and drains by day.
    return {
        "level": p["level_mean"] - p["level_amp"] * zd.integral(t),
        "temperature": _water_temperature(t, zd, p["temp_base"]),
    }


def _quality(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    d = zd(t)
    hours = zd.local_hours(t)
    days = t / DAY_MS
    return {
        "ph": p["ph_base"] + 0.04 * np.sin(2 * np.pi * (hours - 14) / 24),
        "turbidity": p["turbidity_base"] * (0.8 + 0.2 * d),
        # Fresher water at high demand carries more residual chlorine; night water is older.
        "chlorine": p["chlorine_base"] * (0.82 + 0.18 * np.minimum(d, 1.6)),
        "conductivity": p["conductivity_base"] * (1 + 0.03 * np.sin(2 * np.pi * days / 3.3 + p["ph_base"])),
        "temperature": _water_temperature(t, zd, p["temp_base"]),
    }


def _pump(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    load = np.clip(zd(t) / 1.5, 0.25, 1.1)
    # Bearings warm up with the load of the last hour, not the load of this second.
    lagged = np.clip(zd(t - HOUR_MS // 2) / 1.5, 0.25, 1.1)
    current = p["current_idle"] + p["current_span"] * load
    return {
        "flow": p["q_rated"] * load,
        "pressure": p["p_shutoff"] - p["p_drop"] * load**2,
        "current": current,
        "power": _SQRT3 * 0.4 * current * p["power_factor"],
        "vibration": p["vibration_base"] * (0.85 + 0.3 * load),
        "bearing_temperature": p["bearing_base"] + p["bearing_rise"] * lagged,
    }


def _meter(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    d = zd(t)
    power = p["power_base"] * d
    voltage = p["voltage_nominal"] - 2.0 * (d - 1)  # the supply sags a little under load
    return {
        "power": power,
        "energy": power * (interval_ms / HOUR_MS),  # kWh consumed during the reporting interval
        "voltage": voltage,
        "current": power * 1000 / (3 * voltage * p["power_factor"]),  # per phase, three-phase supply
    }


def _gas_station(t: np.ndarray, zd: ZoneDemand, p: Params, interval_ms: int) -> Signals:
    d = zd(t)
    hours = zd.local_hours(t)
    doy = (t / DAY_MS) % 365.25
    return {
        "flow": p["flow_base"] * d,
        # A regulated outlet: the setpoint with a small droop at high flow.
        "pressure": p["p_set"] * (1 - 0.015 * (d - 1)),
        "pressure_diff": p["dp_base"] * d**2,
        "temperature": p["ground_temp"]
        + 1.2 * np.sin(2 * np.pi * (hours - 10) / 24)
        + 3.0 * np.cos(2 * np.pi * (doy - 230) / 365.25),
        "density": p["density_base"] * (1 + 0.004 * np.sin(2 * np.pi * t / (2.3 * DAY_MS) + p["p_set"])),
    }


ASSETS: dict[str, AssetKind] = {
    "pipe": AssetKind(
        "pipe",
        "water",
        ("pressure", "flow"),
        10,
        {"p_static": (430, 620), "headloss": (30, 90), "flow_base": (40, 260)},
        {"pressure": (0.004, 0.5), "flow": (0.02, 0.3)},
        _pipe,
    ),
    "reservoir": AssetKind(
        "reservoir",
        "water",
        ("level", "temperature"),
        30,
        {"level_mean": (3.0, 6.5), "level_amp": (0.5, 1.4), "temp_base": (9, 15)},
        {"level": (0.0, 0.008), "temperature": (0.0, 0.05)},
        _reservoir,
    ),
    "quality_station": AssetKind(
        "quality_station",
        "water",
        ("ph", "turbidity", "chlorine", "conductivity", "temperature"),
        60,
        {
            "ph_base": (7.1, 7.8),
            "turbidity_base": (0.12, 0.45),
            "chlorine_base": (0.35, 0.9),
            "conductivity_base": (280, 720),
            "temp_base": (9, 15),
        },
        {
            "ph": (0.0, 0.02),
            "turbidity": (0.06, 0.004),
            "chlorine": (0.02, 0.004),
            "conductivity": (0.005, 1.0),
            "temperature": (0.0, 0.05),
        },
        _quality,
    ),
    "pump": AssetKind(
        "pump",
        "water",
        ("flow", "pressure", "current", "power", "vibration", "bearing_temperature"),
        5,
        {
            "q_rated": (120, 420),
            "p_shutoff": (620, 780),
            "p_drop": (80, 180),
            "current_idle": (12, 28),
            "current_span": (45, 110),
            "power_factor": (0.84, 0.92),
            "vibration_base": (1.0, 2.4),
            "bearing_base": (30, 40),
            "bearing_rise": (12, 22),
        },
        {
            "flow": (0.015, 0.5),
            "pressure": (0.005, 0.5),
            "current": (0.015, 0.2),
            "power": (0.015, 0.1),
            "vibration": (0.05, 0.02),
            "bearing_temperature": (0.0, 0.15),
        },
        _pump,
    ),
    "meter": AssetKind(
        "meter",
        "energy",
        ("energy", "power", "voltage", "current"),
        60,
        {"power_base": (6, 120), "voltage_nominal": (226, 234), "power_factor": (0.88, 0.97)},
        {"energy": (0.02, 0.0001), "power": (0.02, 0.02), "voltage": (0.0, 0.6), "current": (0.02, 0.05)},
        _meter,
    ),
    "gas_station": AssetKind(
        "gas_station",
        "gas",
        ("pressure", "pressure_diff", "flow", "temperature", "density"),
        30,
        {
            "p_set": (380, 720),
            "dp_base": (15, 60),
            "flow_base": (400, 3000),
            "ground_temp": (6, 13),
            "density_base": (0.70, 0.80),
        },
        {
            "pressure": (0.003, 0.3),
            "pressure_diff": (0.03, 0.2),
            "flow": (0.02, 1.0),
            "temperature": (0.0, 0.1),
            "density": (0.0, 0.0008),
        },
        _gas_station,
    ),
}

#: Metrics that may go below zero; every other metric is clipped at 0 after noise.
SIGNED_METRICS = frozenset({"temperature"})
