"""The vectorised generator: the network's readings block by block, in delivery order.

Time is cut into fixed blocks aligned to the epoch (a multiple of every sensor's
reporting interval, sized to hold a few tens of thousands of readings). A block is
a pure function of ``(seed, block index)``: the signals are pure functions of time,
the noise comes from a generator seeded with the block index, incidents from the
epoch plan. So any range of history is the same data however it is requested.

Delivery: each reading has a delivery time (its own time, or later when a fault
delays it). :meth:`Engine.batches` yields rows in delivery order, carrying delayed
rows over to later blocks: once block ``b`` is generated, nothing still to come can
be delivered before the end of ``b`` (delivery never precedes a reading's time).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import reduce

import numpy as np

from services.simulator.assets import ASSETS, SIGNED_METRICS
from services.simulator.faults import FAULT_CODE, FaultConfig, assign
from services.simulator.hashing import uniform
from services.simulator.incidents import DEFAULT_WEIGHTS, KINDS, Incident, PlanConfig, Planner
from services.simulator.network import Network
from services.simulator.profiles import HOUR_MS, PROFILE_INDEX, ZoneDemand
from services.simulator.units import METRIC_INDEX, METRICS, PLAUSIBLE

M = len(METRICS)
_SIGNED = np.array([m in SIGNED_METRICS for m in METRICS])
#: How long incidents are remembered after their epoch ends: longer than any delivery delay.
_KEEP_MS = 2 * 3_600_000
_PLAUSIBLE_LO = np.array([PLAUSIBLE[m][0] for m in METRICS])
_PLAUSIBLE_HI = np.array([PLAUSIBLE[m][1] for m in METRICS])


@dataclass(frozen=True)
class SimConfig:
    """How the simulator behaves (the network says what exists; this says what happens)."""

    #: Fraction of readings that belong to an incident (on an affected sensor, during it).
    anomaly_fraction: float = 0.05
    #: Relative frequency of each incident type; 0 disables a type.
    incident_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: Multiplies incident durations (and the planning epoch of one day): 0.02 turns a 10 h leak into 12 min.
    incident_scale: float = 1.0
    faults: FaultConfig = field(default_factory=FaultConfig)
    #: Multiplies every sensor's reporting interval (``run --rate`` sets it from the target rate).
    interval_scale: float = 1.0
    #: Every sensor reports on the same instants instead of its own phase.
    aligned: bool = False
    #: Readings per generation block (a performance knob; part of what the seed reproduces).
    block_rows: int = 40_000
    #: A regime shift: from this time (epoch ms) on, every zone's demand is ``regime_factor`` times what it was
    #: (flows, loads, pressures and everything that follows demand move to a new normal; no incident, no label).
    regime_shift_ms: int | None = None
    regime_factor: float = 1.6

    def validate(self) -> None:
        if not 0.0 <= self.anomaly_fraction <= 0.9:
            raise ValueError(f"anomaly_fraction={self.anomaly_fraction} must be within 0..0.9")
        if self.regime_factor <= 0:
            raise ValueError(f"regime_factor={self.regime_factor} must be positive")
        if self.incident_scale <= 0 or self.interval_scale <= 0:
            raise ValueError("incident_scale and interval_scale must be positive")
        unknown = set(self.incident_weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown incident types {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.faults.validate(self.anomaly_fraction)


@dataclass
class Batch:
    """Readings as columns. ``values`` is [n, len(METRICS)] in canonical units, NaN where absent."""

    sensor: np.ndarray  # int32 index into the network
    ts: np.ndarray  # int64 epoch ms (device time)
    values: np.ndarray  # float64 [n, M]
    incident: np.ndarray  # int32 index into Engine.incidents, -1 when normal
    fault: np.ndarray  # int8, faults.FAULTS
    detail: np.ndarray  # int8, faults.DETAILS
    burst: np.ndarray  # bool
    deliver: np.ndarray  # int64 epoch ms (sim time the message is handed to the sink)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray) -> Batch:
        return Batch(*(getattr(self, f)[idx] for f in _BATCH_FIELDS))

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Batch.empty()
        if len(parts) == 1:
            return parts[0]
        return Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in _BATCH_FIELDS))

    @staticmethod
    def empty() -> Batch:
        return Batch(
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            np.zeros((0, M)),
            np.zeros(0, np.int32),
            np.zeros(0, np.int8),
            np.zeros(0, np.int8),
            np.zeros(0, bool),
            np.zeros(0, np.int64),
        )


_BATCH_FIELDS = ("sensor", "ts", "values", "incident", "fault", "detail", "burst", "deliver")


@dataclass
class _Group:
    """Sensors of one asset kind and one interval: generated together as a [time, sensor] array."""

    asset: str
    interval_ms: float
    steps: int  # ticks of each sensor in one block
    sensors: np.ndarray
    params: dict[str, np.ndarray]
    demand: ZoneDemand
    phase_ms: np.ndarray
    absent: np.ndarray  # [S, M] metrics the sensor does not report


class Engine:
    """Generation for one network, config, seed and timebase (``step_ms`` puts every sensor on one grid)."""

    def __init__(self, network: Network, config: SimConfig, seed: int, step_ms: int | None = None):
        config.validate()
        if step_ms is not None:
            if step_ms <= 0:
                raise ValueError("step must be positive")
            config = replace(config, aligned=True)
        self.network = network
        self.config = config
        self.seed = int(seed)
        n = len(network)
        if n == 0:
            raise ValueError("the network has no sensors")
        # Intervals are integer multiples of one unit, so a block (a multiple of their lcm) holds a whole
        # number of every sensor's ticks. The unit may be fractional (a target rate rarely divides evenly);
        # tick k of a sensor is at floor(k * interval + phase) ms, whichever block computes it.
        if step_ms is not None:
            mult = np.ones(n, dtype=np.int64)
            unit = float(step_ms)
        else:
            natural = np.array([max(1, round(s.interval_s * 1000)) for s in network.sensors], dtype=np.int64)
            base = reduce(math.gcd, natural.tolist())
            mult = natural // base
            unit = base * config.interval_scale
        if unit * mult.min() < 1.0:
            raise ValueError(
                f"a sensor would report more than once per millisecond ({unit * mult.min():.3f} ms): ask for a lower"
                " rate or a bigger network (--scale)"
            )
        self.mult = mult
        self.interval_ms = mult * unit
        lcm_mult = reduce(math.lcm, np.unique(mult).tolist())
        rows_per_lcm = float((lcm_mult / mult).sum())
        self.block_mult = lcm_mult * max(1, round(config.block_rows / rows_per_lcm))
        self.block_ms = self.block_mult * unit
        idx = np.arange(n)
        self.phase_ms = np.zeros(n) if config.aligned else uniform(self.seed, 0x9A5E, idx) * self.interval_ms
        self.rate_per_s = float((1000.0 / self.interval_ms).sum())

        site_ids = {s.id: i for i, s in enumerate(network.sites)}
        self.site_of = np.array([site_ids[s.site] for s in network.sensors], dtype=np.int32)
        zones = [network.zone_by_id[s.zone] for s in network.sensors]
        site_offset = np.array([network.site_by_id[s.site].tz_offset_h for s in network.sensors])
        weather = uniform(self.seed, 0x3EA7, self.site_of[:, None], np.arange(3)[None, :]) * 2 * np.pi
        self._demand = ZoneDemand(
            profile=np.array([PROFILE_INDEX[z.profile] for z in zones]),
            offset_ms=((site_offset + np.array([z.phase_h for z in zones])) * HOUR_MS).astype(np.int64),
            scale=np.array([z.scale for z in zones]),
            weather_phase=weather,
            shift_ms=config.regime_shift_ms,
            shift_factor=config.regime_factor,
        )
        self.present = np.zeros((n, M), dtype=bool)
        self.noise_rel = np.zeros((n, M))
        self.noise_abs = np.zeros((n, M))
        for i, s in enumerate(network.sensors):
            kind = ASSETS[s.asset]
            for m in s.metrics:
                self.present[i, METRIC_INDEX[m]] = True
            for m, (rel, ab) in kind.noise.items():
                self.noise_rel[i, METRIC_INDEX[m]] = rel
                self.noise_abs[i, METRIC_INDEX[m]] = ab
        # Present metrics of each sensor as a padded table, for picking "a missing metric" per row.
        self.n_present = self.present.sum(axis=1)
        self.present_table = np.zeros((n, M), dtype=np.int64)
        for i in range(n):
            cols = np.flatnonzero(self.present[i])
            self.present_table[i, : len(cols)] = cols

        self.groups: list[_Group] = []
        self._group_of = np.zeros(n, dtype=np.int64)
        self._col_of = np.zeros(n, dtype=np.int64)
        keys = sorted({(s.asset, int(mult[i])) for i, s in enumerate(network.sensors)})
        for gi, (asset, m) in enumerate(keys):
            members = np.array([i for i, s in enumerate(network.sensors) if s.asset == asset and mult[i] == m])
            self._group_of[members] = gi
            self._col_of[members] = np.arange(len(members))
            self.groups.append(
                _Group(
                    asset=asset,
                    interval_ms=m * unit,
                    steps=self.block_mult // m,
                    sensors=members,
                    params={
                        k: np.array([network.sensors[i].params[k] for i in members]) for k in ASSETS[asset].param_ranges
                    },
                    demand=self._demand.take(members),
                    phase_ms=self.phase_ms[members],
                    absent=~self.present[members],
                )
            )

        self.plan_config = PlanConfig(config.anomaly_fraction, dict(config.incident_weights), config.incident_scale)
        self._planner = Planner(self, self.plan_config)
        self.incidents: list[Incident | None] = []
        self._epochs: dict[int, list[int]] = {}

    # ---- signals --------------------------------------------------------------------------------------------------

    def evaluate(self, sensors: list[int], t_ms: np.ndarray) -> np.ndarray:
        """Noise-free, incident-free values [len(t), len(sensors), M] of some sensors at given times."""
        out = np.full((len(t_ms), len(sensors), M), np.nan)
        t = np.asarray(t_ms, dtype=np.int64)
        for j, s in enumerate(sensors):
            g = self.groups[self._group_of[s]]
            c = self._col_of[s : s + 1]
            params = {k: v[c] for k, v in g.params.items()}
            sig = ASSETS[g.asset].generate(t[:, None], g.demand.take(c), params, g.interval_ms)
            for metric, arr in sig.items():
                if self.present[s, METRIC_INDEX[metric]]:
                    out[:, j, METRIC_INDEX[metric]] = arr[:, 0]
        return out

    def _signals(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sensors, times, values = [], [], []
        for g in self.groups:
            steps = g.steps
            k = b * steps + np.arange(steps, dtype=np.int64)
            t = np.floor(k[:, None] * g.interval_ms + g.phase_ms[None, :]).astype(np.int64)
            sig = ASSETS[g.asset].generate(t, g.demand, g.params, g.interval_ms)
            vals = np.full((t.size, M), np.nan)
            rel, ab = self.noise_rel[g.sensors], self.noise_abs[g.sensors]
            for metric, arr in sig.items():
                m = METRIC_INDEX[metric]
                noisy = arr + (rel[:, m] * np.abs(arr) + ab[:, m]) * rng.standard_normal(arr.shape)
                vals[:, m] = noisy.ravel()
            vals[np.tile(g.absent, (steps, 1))] = np.nan
            sensors.append(np.tile(g.sensors, steps))
            times.append(t.ravel())
            values.append(vals)
        sensor = np.concatenate(sensors).astype(np.int32)
        ts = np.concatenate(times)
        vals = np.concatenate(values)
        order = np.argsort(ts, kind="stable")
        return sensor[order], ts[order], vals[order]

    # ---- incidents ------------------------------------------------------------------------------------------------

    def _epoch(self, e: int) -> list[int]:
        if e not in self._epochs:
            planned = self._planner.plan(e)
            first = len(self.incidents)
            self.incidents.extend(planned)
            self._epochs[e] = list(range(first, first + len(planned)))
        return self._epochs[e]

    def _forget_before(self, t_ms: float) -> None:
        """Drop incidents of epochs that ended before ``t_ms``: an endless run keeps bounded memory.

        Their indices stay valid (the slots become None); nothing generated after ``t_ms`` refers to them.
        """
        epoch_ms = self.plan_config.epoch_ms
        for e in [e for e in self._epochs if (e + 1) * epoch_ms < t_ms]:
            for i in self._epochs.pop(e):
                self.incidents[i] = None  # type: ignore[call-overload]

    def incidents_between(self, start_ms: int, end_ms: int) -> list[int]:
        """Indices of incidents overlapping [start_ms, end_ms), planning their epochs if needed."""
        epoch_ms = self.plan_config.epoch_ms
        out = []
        for e in range(start_ms // epoch_ms, (end_ms - 1) // epoch_ms + 1):
            out.extend(
                i for i in self._epoch(e) if self.incidents[i].start_ms < end_ms and self.incidents[i].end_ms > start_ms
            )
        return out

    def _apply_incidents(
        self, sensor: np.ndarray, ts: np.ndarray, values: np.ndarray, t0: int, t1: int, rng: np.random.Generator
    ) -> np.ndarray:
        incident = np.full(len(ts), -1, dtype=np.int32)
        for idx in self.incidents_between(t0, t1):
            inc = self.incidents[idx]
            rows = np.flatnonzero((ts >= inc.start_ms) & (ts < inc.end_ms) & np.isin(sensor, inc.sensors))
            if not len(rows):
                continue
            u = (ts[rows] - inc.start_ms) / max(1, inc.end_ms - inc.start_ms)
            pos = (
                np.searchsorted(np.array(inc.sensors), sensor[rows])
                if _sorted(inc.sensors)
                else np.array([inc.sensors.index(s) for s in sensor[rows]])
            )
            before = values[rows]
            after = KINDS[inc.type].effect(before.copy(), u, inc.typical[pos], inc, rng)
            np.clip(after, _PLAUSIBLE_LO, _PLAUSIBLE_HI, out=after)
            after[np.isnan(before)] = np.nan
            values[rows] = after
            incident[rows] = idx
        return incident

    # ---- blocks ---------------------------------------------------------------------------------------------------

    def block(self, b: int) -> Batch:
        """Block ``b`` (rows in time order): signals, noise, incidents and faults applied."""
        t0 = math.floor(b * self.block_ms)
        t1 = math.ceil((b + 1) * self.block_ms)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0xB10C, b & 0xFFFFFFFF, (b >> 32) & 0xFFFFFFFF])
        sensor, ts, values = self._signals(b, rng)
        incident = self._apply_incidents(sensor, ts, values, t0, t1, rng)
        cfg = self.config.faults
        assigned = assign(
            cfg,
            self.config.anomaly_fraction,
            rng,
            self.seed,
            ts,
            self.site_of[sensor],
            self.interval_ms[sensor],
            incident >= 0,
        )
        noisy = np.flatnonzero(assigned.fault == FAULT_CODE["noise"])
        if len(noisy):
            s = sensor[noisy]
            sd = self.noise_rel[s] * np.abs(values[noisy]) + self.noise_abs[s]
            values[noisy] += cfg.noise_factor * sd * rng.standard_normal((len(noisy), M))
        missing = np.flatnonzero(assigned.fault == FAULT_CODE["missing"])
        if len(missing):
            s = sensor[missing]
            rank = rng.integers(0, 1 << 20, len(missing)) % self.n_present[s]
            values[missing, self.present_table[s, rank]] = np.nan
        np.maximum(values, 0.0, out=values, where=~_SIGNED[None, :] & ~np.isnan(values))
        batch = Batch(sensor, ts, values, incident, assigned.fault, assigned.detail, assigned.burst, assigned.deliver)
        if len(assigned.duplicates):
            copies = batch.take(assigned.duplicates)
            copies.fault = np.full(len(copies), FAULT_CODE["duplicate"], dtype=np.int8)
            copies.detail = np.zeros(len(copies), dtype=np.int8)
            copies.deliver = assigned.duplicate_deliver
            batch = Batch.concat([batch, copies])
        return batch

    def batches(self, start_ms: int, end_ms: int | None = None) -> Iterator[Batch]:
        """Readings with ``start_ms <= ts < end_ms`` (forever when ``end_ms`` is None) in delivery order."""
        pending = Batch.empty()
        b = math.floor(start_ms / self.block_ms)
        while end_ms is None or b * self.block_ms < end_ms:
            block = self.block(b)
            keep = block.ts >= start_ms
            if end_ms is not None:
                keep &= block.ts < end_ms
            merged = Batch.concat([pending, block.take(np.flatnonzero(keep))])
            horizon = (b + 1) * self.block_ms
            ready = merged.deliver < horizon
            out = merged.take(np.flatnonzero(ready))
            pending = merged.take(np.flatnonzero(~ready))
            yield out.take(np.argsort(out.deliver, kind="stable"))
            b += 1
            if end_ms is None:  # an endless run: keep memory bounded (a finite range keeps every label)
                self._forget_before(b * self.block_ms - _KEEP_MS)
        if len(pending):
            yield pending.take(np.argsort(pending.deliver, kind="stable"))

    def count_between(self, start_ms: int, end_ms: int) -> int:
        """Readings generated for [start_ms, end_ms) before duplicates (for progress bars)."""
        first = np.ceil((start_ms - self.phase_ms) / self.interval_ms)
        last = np.ceil((end_ms - self.phase_ms) / self.interval_ms)
        return int(np.maximum(last - first, 0).sum())


def _sorted(t: tuple[int, ...]) -> bool:
    return all(a < b for a, b in itertools.pairwise(t))
