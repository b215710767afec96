"""Stage 2: one zone's rolling state, from merged partials to closed steps and their features.

A :class:`ZoneState` is the value of the forecaster's table (keyed by zone). It is
bounded by construction: at most ``max_open_steps`` open steps, ``window_steps``
of key-metric history, one baseline per (sensor, metric) with sensors forgotten
after ``sensor_ttl_steps``, and a 24-slot hour-of-day profile per metric.

Closing a step yields a :class:`Step`: its feature vector (measured against the
baselines *before* the step updates them) and the key-metric actuals. What the
forecast history remembers is decided by the caller (:meth:`ZoneState.remember`):
during an incident it is frozen, so the expected value keeps describing the zone
without the leak, and the excess over it measures the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.forecaster.features import METRIC_FEATURES, ZONE_FEATURES, FeatureConfig
from services.forecaster.partials import Partial, empty_bucket, merge_bucket
from shared.records import UTILITIES

Z_CLIP = 50.0
HUBER_K = 3.0
TOTAL = "#total"  # profile key suffix of a key metric's zone total
READINGS, SENSORS = "__n", "__ns"  # baselines of the readings and of the sensors a zone reports per step
STATE_VERSION = 2
_NF = len(METRIC_FEATURES)


def slog(z: float) -> float:
    """Signed log: keeps the sign and order of a z-score but tames its tail for the network."""
    z = _clip(z, Z_CLIP)
    return math.copysign(math.log1p(abs(z)), z)


def _floored_sd(var: float, mu: float) -> float:
    """A standard deviation floored by the level it spreads around, so a flat signal cannot divide by zero."""
    return math.sqrt(var if var > 0.0 else 0.0) + 1e-3 * abs(mu) + 1e-6


def _sd(stat: list[float]) -> float:
    """Floored standard deviation of an EW baseline ``[n, mu, var]``."""
    return _floored_sd(stat[2], stat[1])


def _clip(x: float, limit: float) -> float:
    return -limit if x < -limit else limit if x > limit else x


def _ew_update(stat: list[float], x: float, alpha: float) -> None:
    """Bias-corrected, Huberised exponentially weighted mean and variance, updated in place."""
    n, mu, var = stat
    a = max(alpha, 1.0 / (n + 1.0))
    d = x - mu
    if n >= 10:
        d = _clip(d, HUBER_K * _floored_sd(var, mu))
    stat[0] = n + 1.0
    stat[1] = mu + a * d
    stat[2] = (1.0 - a) * (var + a * d * d)


def new_profile() -> list[list[float]]:
    """24 hour slots ``[days folded, hourly mean, residual variance, residual count]`` + the open hour's
    accumulator ``[absolute hour, count, sum]`` (index 24)."""
    return [[0.0, 0.0, 0.0, 0.0] for _ in range(24)] + [[-1.0, 0.0, 0.0]]


def profile_expect(prof: list[list[float]], step: int, step_s: int) -> tuple[float, float] | None:
    """Usual value at a step's time of day and the variance of values around it (None before a full day).

    Slots hold hourly means of past days; between slot centres the expectation is
    linear, so a morning ramp is followed, not mistaken for variance.
    """
    pos = ((step * step_s) % 86400) / 3600.0
    h = int(pos)
    a = prof[h]
    if a[0] < 1 or a[3] < 5:
        return None
    frac = pos - h - 0.5
    b = prof[(h + 1) % 24 if frac >= 0 else (h - 1) % 24]
    mu = a[1] if b[0] < 1 else (1.0 - abs(frac)) * a[1] + abs(frac) * b[1]
    return mu, a[2]


def profile_update(prof: list[list[float]], step: int, step_s: int, x: float, day_alpha: float) -> None:
    """Add a step's value: hourly means fold in once per hour (weight ``day_alpha`` for the newest day), the
    variance around the expectation moves every step."""
    abs_hour = (step * step_s) // 3600
    acc = prof[24]
    if acc[0] != abs_hour:
        if acc[1] > 0:
            slot = prof[int(acc[0]) % 24]
            avg = acc[2] / acc[1]
            if slot[0] < 1:
                prof[int(acc[0]) % 24] = [1.0, avg, slot[2], slot[3]]
            else:
                a = max(day_alpha, 1.0 / (slot[0] + 1.0))
                d = avg - slot[1]
                if slot[3] >= 5:  # an incident that filled the hour moves the profile by a bounded step only
                    d = _clip(d, HUBER_K * _floored_sd(slot[2], slot[1]))
                prof[int(acc[0]) % 24] = [slot[0] + 1.0, slot[1] + a * d, slot[2], slot[3]]
        acc = prof[24] = [float(abs_hour), 0.0, 0.0]
    acc[1] += 1.0
    acc[2] += x
    expect = profile_expect_raw(prof, step, step_s)
    if expect is not None:
        slot = prof[int(abs_hour % 24)]
        resid = x - expect
        if slot[3] >= 10 and abs(resid) > HUBER_K * _floored_sd(slot[2], expect):
            return  # an outlier (an incident, most likely) must not widen what counts as usual
        a = max(day_alpha / 20.0, 1.0 / (slot[3] + 1.0))
        slot[2] = (1.0 - a) * slot[2] + a * resid * resid
        slot[3] += 1.0


def profile_expect_raw(prof: list[list[float]], step: int, step_s: int) -> float | None:
    """The expectation alone, as soon as a day was folded (the variance may still be warming up)."""
    pos = ((step * step_s) % 86400) / 3600.0
    h = int(pos)
    a = prof[h]
    if a[0] < 1:
        return None
    frac = pos - h - 0.5
    b = prof[(h + 1) % 24 if frac >= 0 else (h - 1) % 24]
    return a[1] if b[0] < 1 else (1.0 - abs(frac)) * a[1] + abs(frac) * b[1]


def hour_of(step: int, step_s: int) -> int:
    return int((step * step_s) // 3600) % 24


@dataclass(slots=True)
class Step:
    """A closed step of one zone: features for the models and what actually happened."""

    zone: str
    site: str
    utility: str
    step: int  # step index: ts // step_ms
    ts: int  # end of the step, epoch ms
    features: np.ndarray
    actual: dict[str, float] = field(default_factory=dict)  # key metric -> zone total (sum of sensor means)
    units: dict[str, str] = field(default_factory=dict)
    profile: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # usual total: next, now
    # key metric -> [q10, q50, q90] forecast for this step at the previous one (set by the processor)
    expected: dict[str, list[float]] = field(default_factory=dict)


#: Position of each per-metric feature in a metric's block, and of each zone feature after the blocks.
_AT = {name: i for i, name in enumerate(METRIC_FEATURES)}
_ZONE_AT = {name: i for i, name in enumerate(ZONE_FEATURES)}


@dataclass(slots=True)
class SensorDeviations:
    """How the sensors of one metric stood against their own baselines in a step."""

    zs: list[float] = field(default_factory=list)  # each sensor's step mean, in its own standard deviations
    spike: float = 0.0  # the most extreme single value of any sensor, in its standard deviations
    repeats: int = 0  # sensors whose step mean repeated their previous one exactly (stuck)
    seen: int = 0


class ZoneState:
    __slots__ = (
        "baselines",
        "closed",
        "history",
        "incident",
        "incident_loss",
        "last_step",
        "late",
        "offsets",
        "open",
        "pending",
        "profiles",
        "recent_z",
        "sensors",
        "site",
        "step_ms",
        "units",
        "utility_counts",
        "watermarks",
        "zone",
    )

    def __init__(self, zone: str, step_ms: int) -> None:
        self.zone = zone
        self.step_ms = step_ms
        self.site = ""
        self.utility_counts: dict[str, int] = {}  # readings per utility (decayed), to name the zone's utility
        self.units: dict[str, str] = {}
        self.watermarks: dict[str, int] = {}  # source partition -> max event ts
        self.offsets: dict[str, int] = {}  # source partition -> max offset applied (dedup after redelivery)
        self.open: dict[int, dict[str, Any]] = {}  # step -> merged bucket stats
        self.closed = -1  # highest step closed
        self.last_step = -1  # highest step closed that had data
        self.late = 0  # partial steps that arrived after their step closed
        self.baselines: dict[str, list[float]] = {}  # metric (and __n, __ns) -> [n, mu, var]
        self.profiles: dict[str, list[list[float]]] = {}  # metric -> 24 x [n, mu, var] + the open hour
        # sensor -> {"seen": last step with data, "stats": {metric: [n, mu, var]}, "last": {metric: last mean}}
        self.sensors: dict[str, dict[str, Any]] = {}
        self.recent_z: dict[str, list[float]] = {}  # metric -> last z_hour values (for d1/d4)
        self.history: dict[str, list[float]] = {}  # key metric -> last window_steps totals (frozen in incidents)
        self.pending: dict[str, list[float]] = {}  # key metric -> forecast [q10, q50, q90] for the next step
        self.incident: dict[str, Any] | None = None  # ongoing incident: since_ms, type, steps
        self.incident_loss: list[float] | None = None  # [incident since_ms, volume lost so far]

    # -- (de)serialisation: the table value is a plain dict (orjson) ------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "zone": self.zone,
            "step_ms": self.step_ms,
            "site": self.site,
            "utility_counts": self.utility_counts,
            "units": self.units,
            "watermarks": self.watermarks,
            "offsets": self.offsets,
            "open": {str(k): v for k, v in self.open.items()},
            "closed": self.closed,
            "last_step": self.last_step,
            "late": self.late,
            "baselines": self.baselines,
            "profiles": self.profiles,
            "sensors": self.sensors,
            "recent_z": self.recent_z,
            "history": self.history,
            "pending": self.pending,
            "incident": self.incident,
            "incident_loss": self.incident_loss,
        }

    @classmethod
    def from_bytes(cls, raw: bytes) -> ZoneState:
        """A state from its table value (the bytes of ``to_dict``): freshly decoded, so it shares nothing."""
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZoneState:
        """A state that takes over ``d`` (freshly decoded, not shared: updating the state changes it)."""
        if d.get("v", 1) == 1:
            d = _from_version_1(d)
        s = cls(d["zone"], int(d["step_ms"]))
        s.site = d.get("site", "")
        s.utility_counts = dict(d.get("utility_counts", {}))
        s.units = dict(d.get("units", {}))
        s.watermarks = dict(d.get("watermarks", {}))
        s.offsets = dict(d.get("offsets", {}))
        s.open = {int(k): v for k, v in d.get("open", {}).items()}
        s.closed = int(d.get("closed", -1))
        s.last_step = int(d.get("last_step", -1))
        s.late = int(d.get("late", 0))
        s.baselines = d.get("baselines", {})
        s.profiles = d.get("profiles", {})
        s.sensors = d.get("sensors", {})
        s.recent_z = d.get("recent_z", {})
        s.history = d.get("history", {})
        s.pending = d.get("pending", {})
        s.incident = d.get("incident")
        s.incident_loss = d.get("incident_loss")
        return s

    # -- input ----------------------------------------------------------------------------------

    @property
    def utility(self) -> str:
        return max(self.utility_counts, key=self.utility_counts.__getitem__) if self.utility_counts else ""

    def ingest(self, partial: Partial) -> bool:
        """Merge one partial; returns False when it was a duplicate (already applied after a redelivery)."""
        offs = partial.get("off", {})
        if offs and all(o <= self.offsets.get(p, -1) for p, o in offs.items()):
            return False
        for p, o in offs.items():
            if o > self.offsets.get(p, -1):
                self.offsets[p] = o
        for p, ts in partial.get("wm", {}).items():
            if ts > self.watermarks.get(p, -1):
                self.watermarks[p] = ts
        if partial.get("site"):
            self.site = partial["site"]
        counts = self.utility_counts
        for u, n in partial.get("u", {}).items():
            counts[u] = counts.get(u, 0) + n
        if sum(counts.values()) > 1_000_000:
            # bounded, and recent readings weigh more: halve the counts now and then
            self.utility_counts = {u: n // 2 for u, n in counts.items()}
        self.units.update(partial.get("units", {}))
        for key, bucket in partial.get("b", {}).items():
            step = int(key)
            if step <= self.closed:
                self.late += 1
                continue
            mine = self.open.get(step)
            if mine is None:
                self.open[step] = mine = empty_bucket()
            merge_bucket(mine, bucket)
        return True

    def closable(
        self,
        source_wm: dict[str, int] | None = None,
        partitions: int = 0,
        *,
        lateness_ms: int = 0,
        max_open_steps: int = 240,
    ) -> list[int]:
        """Open steps that are complete: every source partition has passed their end (plus the lateness).

        A partition's progress is the newer of the zone's own data from it and the
        partition's broadcast watermark (``source_wm``), so a quiet sensor does not
        hold the zone while its partition moves on. All ``partitions`` source
        partitions (0..n-1) must have reported, so a replay in which one partition
        runs hours ahead of another closes nothing on half the data. Beyond
        ``max_open_steps`` open steps the oldest close anyway (bounded state).
        """
        if not self.open:
            return []
        source_wm = source_wm or {}
        mine = self.watermarks
        names = set(mine) | set(source_wm) | {str(p) for p in range(partitions)}
        progress = min(max(mine.get(p, -1), source_wm.get(p, -1)) for p in names) if names else -1
        limit = progress - lateness_ms
        ready = sorted(s for s in self.open if (s + 1) * self.step_ms <= limit)
        excess = len(self.open) - len(ready) - max_open_steps
        if excess > 0:
            rest = sorted(s for s in self.open if (s + 1) * self.step_ms > limit)
            ready = sorted(ready + rest[:excess])
        return ready

    # -- closing a step: features against the baselines, then baseline updates ---------------------

    def close_step(self, step: int, cfg: FeatureConfig) -> Step:
        """Close ``step``: its features, measured against the baselines before the step moves them."""
        bucket = self.open.pop(step, None) or empty_bucket()
        gap = step - self.last_step if self.last_step >= 0 else 1
        self.closed = max(self.closed, step)
        self.last_step = step
        blocks = len(cfg.metrics) * _NF
        feats = np.zeros(blocks + len(ZONE_FEATURES), dtype=np.float32)
        deviations = self._sensor_deviations(step, bucket["s"], cfg)
        means = self._metric_features(step, bucket["m"], deviations, cfg, feats)
        utility = self.utility
        self._zone_features(step, gap, bucket, utility, cfg, feats[blocks:])
        if len(self.sensors) > len(bucket["s"]):
            self._forget_quiet_sensors(step, cfg.sensor_ttl_steps)
        actual, units, profile = self._key_totals(step, means, cfg)
        return Step(
            zone=self.zone,
            site=self.site,
            utility=utility,
            step=step,
            ts=(step + 1) * self.step_ms,
            features=feats,
            actual=actual,
            units=units,
            profile=profile,
        )

    def _sensor_deviations(
        self, step: int, sensors: dict[str, dict[str, list[float]]], cfg: FeatureConfig
    ) -> dict[str, SensorDeviations]:
        """Each sensor against its own baseline (measured before the baseline moves), then the baseline update."""
        alpha = cfg.baseline_alpha
        index = cfg.metric_index
        found: dict[str, SensorDeviations] = {}
        for sensor, accs in sensors.items():
            st = self.sensors.get(sensor)
            if st is None:
                st = self.sensors[sensor] = {"seen": step, "stats": {}, "last": {}}
            st["seen"] = step
            stats, last_means = st["stats"], st["last"]
            for metric, acc in accs.items():
                mean = acc[1] / acc[0]
                sb = stats.get(metric)
                if sb is None:
                    stats[metric] = [1.0, mean, 0.0]
                    last_means[metric] = mean
                    continue
                if sb[0] >= 3 and metric in index:
                    mu = sb[1]
                    sd = _floored_sd(sb[2], mu)
                    dev = found.get(metric)
                    if dev is None:
                        dev = found[metric] = SensorDeviations()
                    dev.zs.append((mean - mu) / sd)
                    spike = max(abs(acc[3] - mu), abs(acc[2] - mu)) / sd
                    if spike > dev.spike:
                        dev.spike = spike
                    dev.seen += 1
                    if last_means.get(metric) == mean:
                        dev.repeats += 1
                _ew_update(sb, mean, alpha)
                last_means[metric] = mean
        return found

    def _metric_features(
        self,
        step: int,
        metrics: dict[str, list[float]],
        deviations: dict[str, SensorDeviations],
        cfg: FeatureConfig,
        feats: np.ndarray,
    ) -> dict[str, float]:
        """Each model metric's block of ``METRIC_FEATURES``; then its baseline and profile move. Returns the
        step mean of every metric the zone reported."""
        index = cfg.metric_index
        means: dict[str, float] = {}
        for metric, (n, total, sumsq, lo, hi) in metrics.items():
            mean = total / n
            means[metric] = mean
            base = self.baselines.get(metric)
            prof = self.profiles.get(metric)
            if prof is None:
                prof = self.profiles[metric] = new_profile()
            i = index.get(metric)
            if i is not None and base is not None:
                expect = profile_expect(prof, step, cfg.step_s)
                row = feats[i * _NF : (i + 1) * _NF]
                sd = _sd(base)
                row[_AT["present"]] = 1.0
                row[_AT["z_base"]] = slog((mean - base[1]) / sd)
                if expect is not None:
                    ref = expect[0]
                    z_hour = slog((mean - expect[0]) / _floored_sd(expect[1], expect[0]))
                else:
                    ref = base[1]
                    z_hour = slog((mean - base[1]) / sd)
                row[_AT["z_hour"]] = z_hour
                row[_AT["rel_hour"]] = _clip((mean - ref) / (abs(ref) + sd), 5.0)
                row[_AT["spread"]] = math.log((math.sqrt(max(sumsq / n - mean * mean, 0.0)) + 1e-6) / sd)
                row[_AT["range"]] = slog((hi - lo) / sd)
                dev = deviations.get(metric)
                if dev is not None:
                    zs = sorted(dev.zs)
                    row[_AT["sensor_median_z"]] = slog(zs[len(zs) // 2])
                    row[_AT["sensor_max_z"]] = slog(max(zs[0], zs[-1], key=abs))
                    row[_AT["sensor_spike"]] = slog(dev.spike)
                    row[_AT["repeat_frac"]] = dev.repeats / dev.seen
                recent = self.recent_z.get(metric)
                if recent:
                    row[_AT["d1"]] = z_hour - recent[-1]
                    row[_AT["d4"]] = z_hour - sum(recent) / len(recent)
                    self.recent_z[metric] = [*recent[-3:], z_hour]
                else:
                    self.recent_z[metric] = [z_hour]
            # baselines move after the features were measured against them
            if base is None:
                self.baselines[metric] = [1.0, mean, 0.0]
            else:
                _ew_update(base, mean, cfg.baseline_alpha)
            profile_update(prof, step, cfg.step_s, mean, cfg.profile_alpha)
        return means

    def _zone_features(
        self, step: int, gap: int, bucket: dict[str, Any], utility: str, cfg: FeatureConfig, row: np.ndarray
    ) -> None:
        """``ZONE_FEATURES`` into ``row``: how much the zone reported against the usual, gaps, time of day."""
        readings = float(bucket["n"])
        sensors = float(len(bucket["s"]))
        usual_readings = self.baselines.get(READINGS)
        usual_sensors = self.baselines.get(SENSORS)
        row[_ZONE_AT["count_ratio"]] = math.log((readings + 1.0) / (usual_readings[1] + 1.0)) if usual_readings else 0.0
        row[_ZONE_AT["sensor_ratio"]] = math.log((sensors + 1.0) / (usual_sensors[1] + 1.0)) if usual_sensors else 0.0
        row[_ZONE_AT["gap_steps"]] = math.log1p(max(gap - 1, 0))
        angle = 2.0 * math.pi * (((step * cfg.step_s) % 86400) / 86400.0)
        row[_ZONE_AT["hour_sin"]] = math.sin(angle)
        row[_ZONE_AT["hour_cos"]] = math.cos(angle)
        if utility in UTILITIES:
            row[_ZONE_AT[f"utility_{utility}"]] = 1.0
        for key, x in ((READINGS, readings), (SENSORS, sensors)):
            if key in self.baselines:
                _ew_update(self.baselines[key], x, cfg.baseline_alpha)
            else:
                self.baselines[key] = [1.0, x, 0.0]

    def _forget_quiet_sensors(self, step: int, ttl_steps: int) -> None:
        for sensor in [s for s, st in self.sensors.items() if step - st["seen"] > ttl_steps]:
            del self.sensors[sensor]

    def _key_totals(
        self, step: int, means: dict[str, float], cfg: FeatureConfig
    ) -> tuple[dict[str, float], dict[str, str], dict[str, tuple[float | None, float | None]]]:
        """The zone total of each key metric it reported, its unit, and its usual total at this step and the next.

        Key metrics are rates that add up (flow, power): the zone's total is the sum over its sensors, a sensor
        that skipped this step counting with its last value (so one lost reading is not a dip).
        """
        totals: dict[str, float] = {}
        units: dict[str, str] = {}
        profile: dict[str, tuple[float | None, float | None]] = {}
        for utility in self.utility_counts:
            km = cfg.key_metric(utility)
            if not km or km not in means:
                continue
            total = 0.0
            for st in self.sensors.values():
                last = st["last"].get(km)
                if last is not None and step - st["seen"] <= cfg.window_steps:
                    total += last
            totals[km] = total
            if km in self.units:
                units[km] = self.units[km]
            # the usual zone total at this hour and the next: the forecast's seasonal inputs
            slots = self.profiles.get(km + TOTAL)
            if slots is None:
                slots = self.profiles[km + TOTAL] = new_profile()
            profile_update(slots, step, cfg.step_s, total, cfg.profile_alpha)
            profile[km] = (
                profile_expect_raw(slots, step + 1, cfg.step_s),
                profile_expect_raw(slots, step, cfg.step_s),
            )
        return totals, units, profile

    # -- forecast history ----------------------------------------------------------------------

    def forecast_input(self, metric: str, step: Step, cfg: FeatureConfig) -> tuple[np.ndarray, float] | None:
        """Forecast features for the step after ``step`` and the scale they are expressed in.

        Uses the history as it is now (the caller appends steps in order) and the
        profile as it was when ``step`` closed (later steps of the batch may have moved it).
        """
        hist = self.history.get(metric)
        if not hist:
            return None
        w = cfg.window_steps
        scale = sum(abs(x) for x in hist) / len(hist) + 1e-6
        x = np.zeros(w + 4 + len(UTILITIES), dtype=np.float32)
        # left-pad a short history with its oldest value, so the first steps still forecast
        padded = [hist[0]] * (w - len(hist)) + hist[-w:]
        x[:w] = [v / scale - 1.0 for v in padded]
        p_next, p_now = step.profile.get(metric, (None, None))
        x[w] = p_next / scale - 1.0 if p_next is not None else x[w - 1]
        x[w + 1] = p_now / scale - 1.0 if p_now is not None else x[w - 1]
        nxt = step.step + 1
        angle = 2.0 * math.pi * (((nxt * cfg.step_s) % 86400) / 86400.0)
        x[w + 2] = math.sin(angle)
        x[w + 3] = math.cos(angle)
        utility = metric.split(".", 1)[0]
        if utility in UTILITIES:
            x[w + 4 + UTILITIES.index(utility)] = 1.0
        return x, scale

    def remember(self, step: Step, cfg: FeatureConfig, frozen: bool) -> None:
        """Append the step's actuals to the forecast history, unless an incident froze it."""
        if frozen:
            return
        for metric, value in step.actual.items():
            hist = self.history.get(metric, [])
            self.history[metric] = [*hist[-(cfg.window_steps - 1) :], float(value)]

    # -- incident volume, carried from step to step (and batch to batch) ----------------------------

    def incident_volume(self, incident: dict[str, Any] | None) -> float:
        """Volume lost so far by ``incident`` before the current step (0 for a new incident)."""
        loss = self.incident_loss
        if incident is None or loss is None or loss[0] != incident["since_ms"]:
            return 0.0
        return float(loss[1])

    def set_incident_volume(self, incident: dict[str, Any] | None) -> None:
        self.incident_loss = None if incident is None else [incident["since_ms"], incident["volume"]]


_VERSION_1_NAMES = {
    "util": "utility_counts",
    "wm": "watermarks",
    "off": "offsets",
    "base": "baselines",
    "prof": "profiles",
    "recent": "recent_z",
    "hist": "history",
    "vol": "incident_loss",
}


def _from_version_1(d: dict[str, Any]) -> dict[str, Any]:
    """A state written before the names were spelled out (v1 kept each sensor's metric stats beside its
    ``_b``/``_m`` keys, where a metric of either name would have overwritten them)."""
    out = {_VERSION_1_NAMES.get(k, k): v for k, v in d.items() if k != "sens"}
    out["sensors"] = {
        sensor: {
            "seen": st.get("_b", -1),
            "stats": {m: v for m, v in st.items() if m not in ("_b", "_m")},
            "last": st.get("_m", {}),
        }
        for sensor, st in d.get("sens", {}).items()
    }
    return out
