"""A tiny, fast synthetic labelled history in the simulator's long-frame format.

The real training source is ``services.simulator``; this generator exists so unit
tests and quick experiments have a small history in seconds, with every risk
class present and a daily cycle, independent of the simulator's scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.forecaster.offline.history import History
from shared.records import INCIDENT_TYPES, IncidentLabel

HOUR_MS = 3_600_000

# zone kind -> sensors: (asset, {metric: base value}), and the incident types it can have
KINDS: dict[str, dict] = {
    "water": {
        "utility": "water",
        "sensors": [("pipe", {"flow": 120.0, "pressure": 430.0})] * 4
        + [("quality", {"chlorine": 0.6, "turbidity": 0.4})]
        + [("pump", {"power": 45.0, "current": 80.0, "vibration": 2.0})],
        # every mechanism but those of the other utilities
        "incidents": [t for t in INCIDENT_TYPES if t not in ("overconsumption", "gas_pressure_excursion")],
    },
    "energy": {
        "utility": "energy",
        "sensors": [("meter", {"power": 300.0, "voltage": 400.0})] * 3,
        "incidents": ["overconsumption", "tampering", "spike", "stuck_sensor"],
    },
    "gas": {
        "utility": "gas",
        "sensors": [("station", {"pressure": 400.0, "flow": 80.0})] * 3,
        "incidents": ["gas_pressure_excursion", "leak", "stuck_sensor", "drift"],
    },
}
UNITS = {
    "flow": "m3/h",
    "pressure": "kPa",
    "chlorine": "mg/L",
    "turbidity": "NTU",
    "power": "kW",
    "current": "A",
    "vibration": "mm/s",
    "voltage": "V",
}
NOISE = {
    "flow": 0.03,
    "pressure": 0.01,
    "chlorine": 0.03,
    "turbidity": 0.05,
    "power": 0.03,
    "current": 0.02,
    "vibration": 0.08,
    "voltage": 0.005,
}
DIURNAL = {"flow", "power", "current"}


def _daily(t_ms: np.ndarray) -> np.ndarray:
    """Demand shape over a day: low at night, morning and evening peaks (mean ~1)."""
    h = (t_ms / HOUR_MS) % 24.0
    return (
        0.65
        + 0.35 * np.exp(-((h - 7.5) ** 2) / 4.0)
        + 0.45 * np.exp(-((h - 19.0) ** 2) / 6.0)
        + 0.1 * np.sin(2 * np.pi * h / 24.0)
    )


def generate(
    *,
    zones: dict[str, int] | None = None,
    days: float = 2.0,
    step_s: int = 60,
    start_ms: int = 1_709_510_400_000,  # 2024-03-04T00:00Z
    incident_rate_per_day: float = 3.0,
    planned: list[tuple[str, str, float, float]] = (),  # type: ignore[assignment]
    seed: int = 7,
) -> History:
    """History of ``zones`` (kind -> how many zones) over ``days`` with incidents of every kind.

    ``planned`` adds incidents at fixed times: ``(zone, type, start hour, duration hours)``
    counted from ``start_ms``; random incidents keep clear of them.
    """
    rng = np.random.default_rng(seed)
    zones = zones or {"water": 3, "energy": 1, "gas": 1}
    n = int(days * 86400 // step_s)
    t = start_ms + np.arange(n, dtype=np.int64) * step_s * 1000
    shape = _daily(t)
    frames = []
    labels: list[IncidentLabel] = []
    for kind, count in zones.items():
        spec = KINDS[kind]
        for z in range(count):
            zone = f"{kind}-z{z + 1}"
            site = f"site-{kind}"
            sensors = [(f"{zone}-{asset}{i + 1:02d}", asset, base) for i, (asset, base) in enumerate(spec["sensors"])]
            # base signals per sensor and metric
            series: dict[tuple[str, str], np.ndarray] = {}
            for sid, _asset, base in sensors:
                scale = rng.uniform(0.7, 1.3)
                for metric, b in base.items():
                    level = b * scale
                    sig = level * (shape if metric in DIURNAL else 1.0 - 0.08 * (shape - 1.0) * (metric == "pressure"))
                    sig = np.broadcast_to(sig, (n,)).astype(np.float64).copy()
                    sig *= 1.0 + NOISE[metric] * rng.standard_normal(n)
                    series[(sid, metric)] = sig
            # incidents: non-overlapping within the zone, after a warm-up of 6 hours
            n_inc = rng.poisson(incident_rate_per_day * days)
            busy = np.zeros(n, dtype=bool)
            warm = int(6 * 3600 // step_s)
            for j, (pzone, typ, start_h, dur_h) in enumerate(p for p in planned if p[0] == zone):
                s0, dur = int(start_h * 3600 // step_s), int(dur_h * 3600 // step_s)
                busy[s0 : s0 + dur] = True
                affected = _inject(typ, series, sensors, s0, dur, rng)
                labels.append(
                    IncidentLabel(
                        incident_id=f"{pzone}-planned{j}",
                        type=typ,
                        start_ms=int(t[s0]),
                        end_ms=int(t[s0]) + dur * step_s * 1000,
                        site=site,
                        zone=zone,
                        utility=spec["utility"],
                        sensors=affected,
                    )
                )
            for k in range(n_inc):
                typ = (
                    spec["incidents"][(k + z) % len(spec["incidents"])]
                    if k < len(spec["incidents"])
                    else rng.choice(spec["incidents"])
                )
                dur = int(rng.integers(30, 120) * 60 // step_s)
                if n - dur <= warm:
                    continue  # too short a history for an incident after the warm-up
                for _ in range(20):
                    s0 = int(rng.integers(warm, n - dur))
                    if not busy[max(0, s0 - 30) : s0 + dur + 30].any():
                        break
                else:
                    continue
                busy[s0 : s0 + dur] = True
                affected = _inject(typ, series, sensors, s0, dur, rng)
                labels.append(
                    IncidentLabel(
                        incident_id=f"{zone}-{k}",
                        type=str(typ),
                        start_ms=int(t[s0]),
                        end_ms=int(t[min(s0 + dur, n - 1)]),
                        site=site,
                        zone=zone,
                        utility=spec["utility"],
                        sensors=affected,
                    )
                )
            for sid, asset, base in sensors:
                data = {
                    "sensor_id": sid,
                    "site": site,
                    "zone": zone,
                    "utility": spec["utility"],
                    "asset": asset,
                    "ts": t,
                }
                for metric in base:
                    data[metric] = np.round(series[(sid, metric)], 3)
                frames.append(pd.DataFrame(data))
    frame = pd.concat(frames, ignore_index=True).sort_values(["ts", "sensor_id"], kind="stable").reset_index(drop=True)
    return History(frame, sorted(labels, key=lambda lab: lab.start_ms))


def _inject(typ: str, series: dict, sensors: list, s0: int, dur: int, rng: np.random.Generator) -> list[str]:
    sl = slice(s0, s0 + dur)
    ramp = np.linspace(0.0, 1.0, dur)

    def all_of(metric: str) -> list[str]:
        return [sid for sid, _a, base in sensors if metric in base]

    def bump(metric: str, factor: np.ndarray | float, who: list[str]) -> None:
        for sid in who:
            series[(sid, metric)][sl] *= factor

    if typ == "leak":
        bump("flow", 1.0 + rng.uniform(0.2, 0.35) * np.minimum(1.0, ramp * 4), all_of("flow"))
        bump("pressure", 0.97, all_of("pressure"))
        return all_of("flow")
    if typ == "burst":
        bump("flow", 1.8, all_of("flow"))
        bump("pressure", 0.8, all_of("pressure"))
        return all_of("flow")
    if typ == "contamination":
        bump("chlorine", 0.35, all_of("chlorine"))
        bump("turbidity", 4.0, all_of("turbidity"))
        return all_of("chlorine")
    if typ == "pump_cavitation":
        who = all_of("vibration")
        for sid in who:
            series[(sid, "vibration")][sl] *= 2.5 + 0.8 * rng.standard_normal(dur)
        bump("current", 0.9 + 0.1 * rng.standard_normal(dur), who)
        return who
    if typ == "bearing_fault":
        who = all_of("vibration")
        bump("vibration", 1.0 + 3.0 * ramp, who)
        return who
    if typ == "overconsumption":
        bump("power", 1.45, all_of("power"))
        return all_of("power")
    if typ == "gas_pressure_excursion":
        bump("pressure", rng.choice([0.7, 1.3]), all_of("pressure"))
        return all_of("pressure")
    # one-sensor faults
    sid, _asset, base = sensors[int(rng.integers(0, len(sensors)))]
    metric = next(iter(base))
    s = series[(sid, metric)]
    if typ == "stuck_sensor":
        s[sl] = round(float(s[s0]), 3)
    elif typ == "drift":
        s[sl] *= 1.0 + 0.6 * ramp
    elif typ == "spike":
        idx = s0 + rng.choice(dur, size=max(3, dur // 6), replace=False)
        s[idx] *= rng.choice([4.0, 0.1], size=len(idx))
    elif typ == "tampering":
        s[sl] *= 0.2
    else:
        raise ValueError(f"unknown incident type {typ}")
    return [sid]


def with_units(history: History) -> dict[str, str]:
    return {m: UNITS[m] for m in history.metric_columns if m in UNITS}
