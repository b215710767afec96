"""Incidents: what can go wrong in the network, when it happens, and what it does to the readings.

The planner cuts time into epochs (a day, times ``incident_scale``) and plans each
epoch on its own from ``(seed, epoch)``: incident types by weight, targets among the
sensors that can have them, durations, magnitudes. It keeps adding incidents until
the readings they cover reach the configured anomaly fraction of the epoch's
readings. Incidents never overlap on a sensor (with a guard gap between them), so
each reading belongs to at most one incident and the labels are unambiguous.

An incident's effect is a vectorised function of the affected rows' values, their
progress through the incident (0 at the start, 1 at the end) and reference levels
of the sensor taken when the incident was planned.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.simulator.network import Network
from services.simulator.units import METRIC_INDEX, METRICS
from shared.records import INCIDENT_TYPES, IncidentLabel

HOUR_S = 3600.0
_M = len(METRICS)
_I = METRIC_INDEX


class PlanContext(Protocol):
    network: Network
    seed: int
    interval_ms: np.ndarray  # per sensor
    phase_ms: np.ndarray  # per sensor

    def evaluate(self, sensors: list[int], t_ms: np.ndarray) -> np.ndarray:
        """Noise-free values [len(t), len(sensors), M] (NaN for metrics a sensor does not report)."""
        ...


@dataclass
class Incident:
    """A planned incident. ``sensors`` are indices into the network; times are epoch ms, half-open."""

    id: str
    type: str
    start_ms: int
    end_ms: int
    site: str
    zone: str
    utility: str
    sensors: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    #: Typical (day-mean) noise-free level of each affected sensor, [len(sensors), M].
    typical: np.ndarray = field(default_factory=lambda: np.zeros((0, _M)))
    #: Noise-free value at the start (what a stuck sensor keeps sending), [len(sensors), M].
    at_start: np.ndarray = field(default_factory=lambda: np.zeros((0, _M)))

    def label(self, network: Network, start_ms: int | None = None, end_ms: int | None = None) -> IncidentLabel:
        """The ground-truth record, optionally clipped to a range."""
        lo = self.start_ms if start_ms is None else max(self.start_ms, start_ms)
        hi = self.end_ms if end_ms is None else min(self.end_ms, end_ms)
        return IncidentLabel(
            incident_id=self.id,
            type=self.type,
            start_ms=int(lo),
            end_ms=int(hi),
            site=self.site,
            zone=self.zone,
            utility=self.utility,
            sensors=[network.sensors[i].id for i in self.sensors],
        )


# ---- effects ------------------------------------------------------------------------------------------------------
# Each effect gets the affected rows' values [n, M] (a copy it may modify and returns), progress u in [0, 1),
# the typical level of each row's sensor [n, M], the incident, and a generator for per-row randomness.

Effect = Callable[[np.ndarray, np.ndarray, np.ndarray, Incident, np.random.Generator], np.ndarray]


def _ramp(u: np.ndarray, rise: float) -> np.ndarray:
    return np.clip(u / rise, 0.0, 1.0)


def _bump(u: np.ndarray, edge: float) -> np.ndarray:
    """Rises over the first ``edge`` of the incident, holds, falls over the last ``edge``."""
    return np.clip(np.minimum(u, 1.0 - u) / edge, 0.0, 1.0)


def _flow_loss(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rise: float) -> np.ndarray:
    """Water escaping the network: extra inlet flow (most visible in the night minimum), lower pressure."""
    r = _ramp(u, rise)
    v[:, _I["flow"]] += inc.params["extra_flow"] * ref[:, _I["flow"]] * r
    v[:, _I["pressure"]] -= inc.params["pressure_drop"] * ref[:, _I["pressure"]] * r
    return v


def _leak(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    return _flow_loss(v, u, ref, inc, rise=0.3)


def _burst(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    return _flow_loss(v, u, ref, inc, rise=0.01)


def _contamination(
    v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator
) -> np.ndarray:
    b = _bump(u, 0.15)
    v[:, _I["turbidity"]] *= 1 + inc.params["turbidity_factor"] * b
    v[:, _I["chlorine"]] *= 1 - inc.params["chlorine_loss"] * b
    v[:, _I["conductivity"]] *= 1 + inc.params["conductivity_rise"] * b
    v[:, _I["ph"]] -= inc.params["ph_shift"] * b
    return v


def _cavitation(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    b = _bump(u, 0.08)
    z = rng.standard_normal(len(u))
    v[:, _I["vibration"]] += inc.params["vibration_add"] * b * (1 + 0.4 * np.abs(z))
    v[:, _I["pressure"]] *= 1 - inc.params["pressure_loss"] * b * (1 + 0.3 * z)
    v[:, _I["flow"]] *= 1 - inc.params["flow_loss"] * b
    wobble = 1 + inc.params["current_wobble"] * b * rng.standard_normal(len(u))
    v[:, _I["current"]] *= wobble
    v[:, _I["power"]] *= wobble
    return v


def _bearing(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    v[:, _I["vibration"]] *= 1 + inc.params["vibration_factor"] * u**2
    v[:, _I["bearing_temperature"]] += inc.params["temperature_rise"] * u**1.5
    v[:, _I["current"]] *= 1 + 0.05 * u
    v[:, _I["power"]] *= 1 + 0.05 * u
    return v


def _stuck(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    stuck = inc.params["stuck_values"]  # [M]
    present = ~np.isnan(v)
    return np.where(present, stuck[None, :], v)


def _drift(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    m = _I[inc.params["metric"]]
    v[:, m] += inc.params["amount"] * np.abs(ref[:, m]) * u
    return v


def _spike(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    m = _I[inc.params["metric"]]
    v[:, m] += inc.params["amount"] * np.abs(ref[:, m])
    return v


def _overconsumption(
    v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator
) -> np.ndarray:
    r = _ramp(u, 0.05)
    extra = inc.params["extra"]
    for metric in ("power", "energy", "current"):
        v[:, _I[metric]] += extra * ref[:, _I[metric]] * r
    v[:, _I["voltage"]] -= 1.5 * r
    return v


def _gas_excursion(
    v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator
) -> np.ndarray:
    b = _bump(u, 0.12)
    v[:, _I["pressure"]] *= 1 + inc.params["direction"] * inc.params["amount"] * b
    v[:, _I["pressure_diff"]] *= 1 + inc.params["dp_factor"] * b
    return v


def _tampering(v: np.ndarray, u: np.ndarray, ref: np.ndarray, inc: Incident, rng: np.random.Generator) -> np.ndarray:
    # A bypass: the register under-reports energy and power while the current keeps flowing.
    k = inc.params["reported_fraction"]
    v[:, _I["energy"]] *= k
    v[:, _I["power"]] *= k
    return v


# ---- catalogue ----------------------------------------------------------------------------------------------------

Target = tuple[str, list[int]]  # (zone id, candidate sensors)


@dataclass(frozen=True)
class IncidentKind:
    name: str
    #: Duration range in seconds (log-uniform), before ``incident_scale``; spikes count readings instead.
    duration_s: tuple[float, float]
    #: "all": every candidate sensor of the target; "some": 1..3 of them; "one": a single sensor.
    pick: str
    effect: Effect
    targets: Callable[[Network], list[Target]]
    draw: Callable[[np.random.Generator], dict[str, Any]]


def _by_zone(asset: str) -> Callable[[Network], list[Target]]:
    def targets(net: Network) -> list[Target]:
        out = []
        for z in net.zones:
            members = net.sensors_in(zone=z.id, asset=asset)
            if members:
                out.append((z.id, members))
        return out

    return targets


def _pipes_with(metric: str) -> Callable[[Network], list[Target]]:
    """Zones with pipes; a loss of water shows on every pipe sensor of the zone."""

    def targets(net: Network) -> list[Target]:
        out = []
        for z in net.zones:
            members = net.sensors_in(zone=z.id, asset="pipe")
            if any(metric in net.sensors[i].metrics for i in members):
                out.append((z.id, members))
        return out

    return targets


def _each(asset: str | None) -> Callable[[Network], list[Target]]:
    def targets(net: Network) -> list[Target]:
        return [(s.zone, [i]) for i, s in enumerate(net.sensors) if asset is None or s.asset == asset]

    return targets


def _u(lo: float, hi: float) -> Callable[[np.random.Generator], float]:
    return lambda rng: float(rng.uniform(lo, hi))


KINDS: dict[str, IncidentKind] = {
    "leak": IncidentKind(
        "leak",
        (2 * HOUR_S, 12 * HOUR_S),
        "all",
        _leak,
        _pipes_with("flow"),
        lambda rng: {"extra_flow": rng.uniform(0.18, 0.45), "pressure_drop": rng.uniform(0.05, 0.12)},
    ),
    "burst": IncidentKind(
        "burst",
        (0.25 * HOUR_S, 2 * HOUR_S),
        "all",
        _burst,
        _pipes_with("flow"),
        lambda rng: {"extra_flow": rng.uniform(0.7, 1.8), "pressure_drop": rng.uniform(0.2, 0.45)},
    ),
    "contamination": IncidentKind(
        "contamination",
        (1 * HOUR_S, 6 * HOUR_S),
        "all",
        _contamination,
        _by_zone("quality_station"),
        lambda rng: {
            "turbidity_factor": rng.uniform(4, 15),
            "chlorine_loss": rng.uniform(0.5, 0.9),
            "conductivity_rise": rng.uniform(0.08, 0.3),
            "ph_shift": rng.uniform(0.2, 0.6),
        },
    ),
    "pump_cavitation": IncidentKind(
        "pump_cavitation",
        (0.33 * HOUR_S, 3 * HOUR_S),
        "one",
        _cavitation,
        _each("pump"),
        lambda rng: {
            "vibration_add": rng.uniform(2.5, 7.0),
            "pressure_loss": rng.uniform(0.08, 0.2),
            "flow_loss": rng.uniform(0.05, 0.15),
            "current_wobble": rng.uniform(0.04, 0.1),
        },
    ),
    "bearing_fault": IncidentKind(
        "bearing_fault",
        (4 * HOUR_S, 20 * HOUR_S),
        "one",
        _bearing,
        _each("pump"),
        lambda rng: {"vibration_factor": rng.uniform(1.5, 4.0), "temperature_rise": rng.uniform(10, 30)},
    ),
    "stuck_sensor": IncidentKind(
        "stuck_sensor", (0.5 * HOUR_S, 6 * HOUR_S), "one", _stuck, _each(None), lambda rng: {}
    ),
    "drift": IncidentKind(
        "drift",
        (3 * HOUR_S, 18 * HOUR_S),
        "one",
        _drift,
        _each(None),
        lambda rng: {"amount": float(rng.choice([-1, 1])) * rng.uniform(0.1, 0.3)},
    ),
    "spike": IncidentKind(
        "spike",
        (1, 3),  # readings
        "one",
        _spike,
        _each(None),
        lambda rng: {"amount": rng.uniform(0.6, 2.0) if rng.random() < 0.6 else -rng.uniform(0.5, 0.9)},
    ),
    "overconsumption": IncidentKind(
        "overconsumption",
        (2 * HOUR_S, 10 * HOUR_S),
        "some",
        _overconsumption,
        _by_zone("meter"),
        lambda rng: {"extra": rng.uniform(0.6, 1.6)},
    ),
    "gas_pressure_excursion": IncidentKind(
        "gas_pressure_excursion",
        (0.33 * HOUR_S, 4 * HOUR_S),
        "some",
        _gas_excursion,
        _by_zone("gas_station"),
        lambda rng: {
            "direction": float(rng.choice([-1, 1])),
            "amount": rng.uniform(0.12, 0.35),
            "dp_factor": rng.uniform(0.5, 2.0),
        },
    ),
    "tampering": IncidentKind(
        "tampering",
        (4 * HOUR_S, 20 * HOUR_S),
        "one",
        _tampering,
        _each("meter"),
        lambda rng: {"reported_fraction": rng.uniform(0.15, 0.5)},
    ),
}

DEFAULT_WEIGHTS: dict[str, float] = {
    "leak": 1.0,
    "burst": 0.6,
    "contamination": 0.6,
    "pump_cavitation": 0.7,
    "bearing_fault": 0.5,
    "stuck_sensor": 1.0,
    "drift": 0.8,
    "spike": 2.0,
    "overconsumption": 0.8,
    "gas_pressure_excursion": 0.8,
    "tampering": 0.5,
}

EPOCH_S = 24 * HOUR_S
#: Quiet time kept between two incidents on the same sensor, before ``incident_scale``.
GUARD_S = 0.5 * HOUR_S


@dataclass
class PlanConfig:
    anomaly_fraction: float
    weights: dict[str, float]
    incident_scale: float

    @property
    def epoch_ms(self) -> int:
        return max(1000, int(EPOCH_S * 1000 * self.incident_scale))


def _ticks_in(start: int, end: int, interval: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Readings each sensor sends in [start, end): ticks t = k*interval + phase."""
    first = np.ceil((start - phase) / interval)
    last = np.ceil((end - phase) / interval)
    return np.maximum(last - first, 0)


class Planner:
    """Plans incidents epoch by epoch; ``plan(e)`` is a pure function of (seed, config, e)."""

    def __init__(self, ctx: PlanContext, config: PlanConfig):
        self.ctx = ctx
        self.config = config
        weights = {k: w for k, w in config.weights.items() if w > 0}
        unknown = set(weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown incident types {sorted(unknown)}; known: {', '.join(INCIDENT_TYPES)}")
        self.targets = {k: KINDS[k].targets(ctx.network) for k in weights}
        self.types = [k for k in weights if self.targets[k]]
        p = np.array([weights[k] for k in self.types], dtype=float)
        self.p = p / p.sum() if len(p) else p

    def plan(self, epoch: int) -> list[Incident]:
        cfg, ctx = self.config, self.ctx
        if cfg.anomaly_fraction <= 0 or not self.types:
            return []
        rng = np.random.default_rng([ctx.seed, 0x1C1D, epoch])
        e0 = epoch * cfg.epoch_ms
        e1 = e0 + cfg.epoch_ms
        guard = int(GUARD_S * 1000 * cfg.incident_scale)
        budget = cfg.anomaly_fraction * float(_ticks_in(e0, e1, ctx.interval_ms, ctx.phase_ms).sum())
        busy: dict[int, list[tuple[int, int]]] = {}
        covered = 0.0
        out: list[Incident] = []
        misses = 0
        while misses < 60:
            kind = KINDS[self.types[int(rng.choice(len(self.types), p=self.p))]]
            zone, candidates = self.targets[kind.name][int(rng.integers(len(self.targets[kind.name])))]
            sensors = self._pick(kind, candidates, rng)
            start, end = self._window(kind, sensors, e0, e1, rng)
            params = kind.draw(rng)
            if end <= start or any(
                s0 < end + guard and start < s1 + guard for s in sensors for s0, s1 in busy.get(s, ())
            ):
                misses += 1
                continue
            n = float(_ticks_in(start, end, ctx.interval_ms[sensors], ctx.phase_ms[sensors]).sum())
            # Stop as close to the budget as possible: take an incident only if it brings coverage nearer.
            if abs(covered + n - budget) >= abs(covered - budget):
                misses += 1
                continue
            covered += n
            for s in sensors:
                busy.setdefault(s, []).append((start, end))
            out.append(self._incident(kind, f"{len(out):03d}", epoch, zone, sensors, start, end, params, rng))
        return out

    def _pick(self, kind: IncidentKind, candidates: list[int], rng: np.random.Generator) -> list[int]:
        if kind.pick == "all":
            return list(candidates)
        if kind.pick == "some":
            k = int(rng.integers(1, min(3, len(candidates)) + 1))
            return sorted(int(i) for i in rng.choice(candidates, size=k, replace=False))
        return [int(candidates[int(rng.integers(len(candidates)))])]

    def _window(
        self, kind: IncidentKind, sensors: list[int], e0: int, e1: int, rng: np.random.Generator
    ) -> tuple[int, int]:
        ctx = self.ctx
        if kind.name == "spike":
            # A spike is a few consecutive readings: align the window to the sensor's own ticks.
            s = sensors[0]
            interval, phase = float(ctx.interval_ms[s]), float(ctx.phase_ms[s])
            n = int(rng.integers(int(kind.duration_s[0]), int(kind.duration_s[1]) + 1))
            k_lo = math.ceil((e0 - phase) / interval)
            k_hi = math.floor((e1 - 1 - phase) / interval) - n
            if k_hi < k_lo:
                return 0, 0
            k = int(rng.integers(k_lo, k_hi + 1))
            # The same expression the engine uses for a tick's time, so the window holds exactly n readings.
            start = int(np.floor(np.int64(k) * interval + phase))
            return start, int(np.floor(np.int64(k + n - 1) * interval + phase)) + 1
        lo, hi = kind.duration_s
        dur = int(np.exp(rng.uniform(np.log(lo), np.log(hi))) * 1000 * self.config.incident_scale)
        span = e1 - e0 - dur
        if span <= 0:
            return 0, 0
        start = e0 + int(rng.integers(0, span))
        return start, start + dur

    def _incident(
        self,
        kind: IncidentKind,
        suffix: str,
        epoch: int,
        zone_id: str,
        sensors: list[int],
        start: int,
        end: int,
        params: dict[str, Any],
        rng: np.random.Generator,
    ) -> Incident:
        net, ctx = self.ctx.network, self.ctx
        zone = net.zone_by_id[zone_id]
        # Typical level: the noise-free mean over the day before the start, so a magnitude
        # like "+20 % of flow" means the same whether the incident starts at 3 am or at noon.
        probe = start - np.arange(24, dtype=np.int64) * 3_600_000
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: metrics the sensor lacks
            typical = np.nanmean(ctx.evaluate(sensors, probe), axis=0)
        at_start = ctx.evaluate(sensors, np.array([start], dtype=np.int64))[0]
        if kind.name in ("drift", "spike"):
            present = [m for m in net.sensors[sensors[0]].metrics]
            params["metric"] = present[int(rng.integers(len(present)))]
        if kind.name == "stuck_sensor":
            params["stuck_values"] = at_start[0]
        return Incident(
            id=f"s{ctx.seed}-e{epoch}-{suffix}",
            type=kind.name,
            start_ms=int(start),
            end_ms=int(end),
            site=zone.site,
            zone=zone.id,
            utility=zone.utility,
            sensors=tuple(sensors),
            params=params,
            typical=typical,
            at_start=at_start,
        )
