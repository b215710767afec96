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

from services.forecaster.features import METRIC_FEATURES, FeatureConfig
from services.forecaster.partials import Partial, empty_bucket, merge_bucket
from shared.records import UTILITIES

Z_CLIP = 50.0
HUBER_K = 3.0
TOTAL = "#total"  # profile key suffix of a key metric's zone total
_NF = len(METRIC_FEATURES)


def slog(z: float) -> float:
    """Signed log: keeps the sign and order of a z-score but tames its tail for the network."""
    z = max(-Z_CLIP, min(Z_CLIP, z))
    return math.copysign(math.log1p(abs(z)), z)


def _sd(stat: list[float], mu_for_floor: float | None = None) -> float:
    """Standard deviation of an EW baseline ``[n, mu, var]``, floored so a flat signal cannot divide by zero."""
    mu = stat[1] if mu_for_floor is None else mu_for_floor
    return math.sqrt(max(stat[2], 0.0)) + 1e-3 * abs(mu) + 1e-6


def _ew_update(stat: list[float], x: float, alpha: float) -> None:
    """Bias-corrected, Huberised exponentially weighted mean and variance, updated in place."""
    n, mu, var = stat
    a = max(alpha, 1.0 / (n + 1.0))
    d = x - mu
    if n >= 10:
        lim = HUBER_K * (math.sqrt(var if var > 0.0 else 0.0) + 1e-3 * abs(mu) + 1e-6)
        d = -lim if d < -lim else lim if d > lim else d
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
                    lim = HUBER_K * (math.sqrt(max(slot[2], 0.0)) + 1e-3 * abs(slot[1]) + 1e-6)
                    d = -lim if d < -lim else lim if d > lim else d
                prof[int(acc[0]) % 24] = [slot[0] + 1.0, slot[1] + a * d, slot[2], slot[3]]
        acc = prof[24] = [float(abs_hour), 0.0, 0.0]
    acc[1] += 1.0
    acc[2] += x
    expect = profile_expect_raw(prof, step, step_s)
    if expect is not None:
        slot = prof[int(abs_hour % 24)]
        resid = x - expect
        if slot[3] >= 10 and abs(resid) > HUBER_K * (math.sqrt(max(slot[2], 0.0)) + 1e-3 * abs(expect) + 1e-6):
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


class ZoneState:
    __slots__ = (
        "base",
        "closed",
        "hist",
        "incident",
        "last_step",
        "late",
        "off",
        "open",
        "pending",
        "prof",
        "recent",
        "sens",
        "site",
        "step_ms",
        "units",
        "util",
        "vol",
        "wm",
        "zone",
    )

    def __init__(self, zone: str, step_ms: int) -> None:
        self.zone = zone
        self.step_ms = step_ms
        self.site = ""
        self.util: dict[str, int] = {}  # readings per utility (decayed), to name the zone's utility
        self.units: dict[str, str] = {}
        self.wm: dict[str, int] = {}  # source partition -> max event ts
        self.off: dict[str, int] = {}  # source partition -> max offset applied (dedup after redelivery)
        self.open: dict[int, dict[str, Any]] = {}  # step -> merged bucket stats
        self.closed = -1  # highest step closed
        self.last_step = -1  # highest step closed that had data
        self.late = 0  # partial steps that arrived after their step closed
        self.base: dict[str, list[float]] = {}  # metric (and __n, __ns) -> [n, mu, var]
        self.prof: dict[str, list[list[float]]] = {}  # metric -> 24 x [n, mu, var]
        self.sens: dict[
            str, dict[str, Any]
        ] = {}  # sensor -> {"_b": last step, metric: [n, mu, var], "_m": {metric: last mean}}
        self.recent: dict[str, list[float]] = {}  # metric -> last z_hour values (for d1/d4)
        self.hist: dict[
            str, list[float]
        ] = {}  # key metric -> last window_steps step means (counterfactual in incidents)
        self.pending: dict[str, list[float]] = {}  # key metric -> forecast [q10, q50, q90] for the next step
        self.incident: dict[str, Any] | None = None  # ongoing incident: since_ms, type, steps
        self.vol: list[float] | None = None  # [incident since_ms, volume lost so far]

    # -- (de)serialisation: the table value is a plain dict (orjson) ------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": 1,
            "zone": self.zone,
            "step_ms": self.step_ms,
            "site": self.site,
            "util": self.util,
            "units": self.units,
            "wm": self.wm,
            "off": self.off,
            "open": {str(k): v for k, v in self.open.items()},
            "closed": self.closed,
            "last_step": self.last_step,
            "late": self.late,
            "base": self.base,
            "prof": self.prof,
            "sens": self.sens,
            "recent": self.recent,
            "hist": self.hist,
            "pending": self.pending,
            "incident": self.incident,
            "vol": self.vol,
        }

    @classmethod
    def from_bytes(cls, raw: bytes) -> ZoneState:
        """A state from its table value (the bytes of ``to_dict``): freshly decoded, so it shares nothing."""
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZoneState:
        """A state that takes over ``d`` (freshly decoded, not shared: updating the state changes it)."""
        s = cls(d["zone"], int(d["step_ms"]))
        s.site = d.get("site", "")
        s.util = dict(d.get("util", {}))
        s.units = dict(d.get("units", {}))
        s.wm = dict(d.get("wm", {}))
        s.off = dict(d.get("off", {}))
        s.open = {int(k): v for k, v in d.get("open", {}).items()}
        s.closed = int(d.get("closed", -1))
        s.last_step = int(d.get("last_step", -1))
        s.late = int(d.get("late", 0))
        s.base = d.get("base", {})
        s.prof = d.get("prof", {})
        s.sens = d.get("sens", {})
        s.recent = d.get("recent", {})
        s.hist = d.get("hist", {})
        s.pending = d.get("pending", {})
        s.incident = d.get("incident")
        s.vol = d.get("vol")
        return s

    # -- input ----------------------------------------------------------------------------------

    @property
    def utility(self) -> str:
        return max(self.util, key=self.util.__getitem__) if self.util else ""

    def ingest(self, partial: Partial) -> bool:
        """Merge one partial; returns False when it was a duplicate (already applied after a redelivery)."""
        offs = partial.get("off", {})
        if offs and all(o <= self.off.get(p, -1) for p, o in offs.items()):
            return False
        for p, o in offs.items():
            if o > self.off.get(p, -1):
                self.off[p] = o
        for p, ts in partial.get("wm", {}).items():
            if ts > self.wm.get(p, -1):
                self.wm[p] = ts
        if partial.get("site"):
            self.site = partial["site"]
        for u, n in partial.get("u", {}).items():
            self.util[u] = self.util.get(u, 0) + n
        if sum(self.util.values()) > 1_000_000:
            # bounded, and recent readings weigh more: halve the counts now and then
            self.util = {u: n // 2 for u, n in self.util.items()}
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
        names = set(self.wm) | set(source_wm) | {str(p) for p in range(partitions)}
        progress = min(max(self.wm.get(p, -1), source_wm.get(p, -1)) for p in names) if names else -1
        limit = progress - lateness_ms
        ready = sorted(s for s in self.open if (s + 1) * self.step_ms <= limit)
        excess = len(self.open) - len(ready) - max_open_steps
        if excess > 0:
            rest = sorted(s for s in self.open if (s + 1) * self.step_ms > limit)
            ready = sorted(ready + rest[:excess])
        return ready

    # -- closing a step: features against the baselines, then baseline updates ---------------------

    def close_step(self, step: int, cfg: FeatureConfig) -> Step:
        bucket = self.open.pop(step, None) or empty_bucket()
        gap = step - self.last_step if self.last_step >= 0 else 1
        self.closed = max(self.closed, step)
        self.last_step = step
        alpha = cfg.baseline_alpha
        index = cfg.metric_index
        feats = np.zeros(len(cfg.metrics) * _NF + 5 + len(UTILITIES), dtype=np.float32)
        metrics = bucket["m"]
        sensors = bucket["s"]
        sqrt, log, log1p, copysign = math.sqrt, math.log, math.log1p, math.copysign

        def slog(z: float) -> float:
            z = -Z_CLIP if z < -Z_CLIP else Z_CLIP if z > Z_CLIP else z
            return copysign(log1p(abs(z)), z)

        # per sensor: deviation from its own baseline (measured before the baseline moves), then update
        per_metric: dict[str, list] = {}  # metric -> [zs, max spike, repeats, seen]
        for sensor, accs in sensors.items():
            st = self.sens.get(sensor)
            if st is None:
                st = self.sens[sensor] = {"_b": step, "_m": {}}
            st["_b"] = step
            last_means = st["_m"]
            for metric, sacc in accs.items():
                smean = sacc[1] / sacc[0]
                sb = st.get(metric)
                if sb is None:
                    st[metric] = [1.0, smean, 0.0]
                    last_means[metric] = smean
                    continue
                if sb[0] >= 3 and metric in index:
                    mu = sb[1]
                    ssd = sqrt(sb[2] if sb[2] > 0.0 else 0.0) + 1e-3 * abs(mu) + 1e-6
                    agg = per_metric.get(metric)
                    if agg is None:
                        agg = per_metric[metric] = [[], 0.0, 0, 0]
                    agg[0].append((smean - mu) / ssd)
                    spike = max(abs(sacc[3] - mu), abs(sacc[2] - mu)) / ssd
                    if spike > agg[1]:
                        agg[1] = spike
                    agg[3] += 1
                    if last_means.get(metric) == smean:
                        agg[2] += 1
                _ew_update(sb, smean, alpha)
                last_means[metric] = smean

        actual: dict[str, float] = {}
        for metric, acc in metrics.items():
            n, total, sumsq, lo, hi = acc
            mean = total / n
            actual[metric] = mean
            base = self.base.get(metric)
            prof = self.prof.get(metric)
            if prof is None:
                prof = self.prof[metric] = new_profile()
            expect = profile_expect(prof, step, cfg.step_s)
            i = index.get(metric)
            if i is not None and base is not None:
                std = sqrt(max(sumsq / n - mean * mean, 0.0))
                sd = _sd(base)
                o = i * _NF
                feats[o] = 1.0
                feats[o + 1] = slog((mean - base[1]) / sd)
                ref = expect[0] if expect is not None else base[1]
                if expect is not None:
                    psd = sqrt(expect[1] if expect[1] > 0.0 else 0.0) + 1e-3 * abs(expect[0]) + 1e-6
                    z_hour = slog((mean - expect[0]) / psd)
                else:
                    z_hour = slog((mean - base[1]) / sd)
                feats[o + 2] = z_hour
                rel = (mean - ref) / (abs(ref) + sd)
                feats[o + 3] = -5.0 if rel < -5.0 else 5.0 if rel > 5.0 else rel
                feats[o + 4] = log((std + 1e-6) / sd)
                feats[o + 5] = slog((hi - lo) / sd)
                agg = per_metric.get(metric)
                if agg is not None:
                    zs = sorted(agg[0])
                    feats[o + 6] = slog(zs[len(zs) // 2])
                    feats[o + 7] = slog(max(zs[0], zs[-1], key=abs))
                    feats[o + 8] = slog(agg[1])
                    feats[o + 9] = agg[2] / agg[3]
                rec = self.recent.get(metric)
                if rec:
                    feats[o + 10] = z_hour - rec[-1]
                    feats[o + 11] = z_hour - sum(rec) / len(rec)
                    self.recent[metric] = [*rec[-3:], z_hour]
                else:
                    self.recent[metric] = [z_hour]
            # baselines move after the features were measured against them
            if base is None:
                self.base[metric] = [1.0, mean, 0.0]
            else:
                _ew_update(base, mean, alpha)
            profile_update(prof, step, cfg.step_s, mean, cfg.profile_alpha)

        z = len(cfg.metrics) * _NF
        n_read = float(bucket["n"])
        n_sens = float(len(sensors))
        bn = self.base.get("__n")
        bs = self.base.get("__ns")
        feats[z] = log((n_read + 1.0) / (bn[1] + 1.0)) if bn else 0.0
        feats[z + 1] = log((n_sens + 1.0) / (bs[1] + 1.0)) if bs else 0.0
        feats[z + 2] = log1p(max(gap - 1, 0))
        angle = 2.0 * math.pi * (((step * cfg.step_s) % 86400) / 86400.0)
        feats[z + 3] = math.sin(angle)
        feats[z + 4] = math.cos(angle)
        util = self.utility
        if util in UTILITIES:
            feats[z + 5 + UTILITIES.index(util)] = 1.0
        for key, x in (("__n", n_read), ("__ns", n_sens)):
            if key in self.base:
                _ew_update(self.base[key], x, alpha)
            else:
                self.base[key] = [1.0, x, 0.0]

        ttl = cfg.sensor_ttl_steps
        if len(self.sens) > len(sensors):
            for sensor in [s for s, st in self.sens.items() if step - st["_b"] > ttl]:
                del self.sens[sensor]

        # key metrics are rates that add up (flow, power): the zone's total is the sum over its sensors,
        # a sensor that skipped this step counting with its last value (so one lost reading is not a dip)
        keyed = {}
        units = {}
        profile: dict[str, tuple[float | None, float | None]] = {}
        for utility in self.util:
            km = cfg.key_metric(utility)
            if km and km in actual:
                total = 0.0
                for st in self.sens.values():
                    last = st["_m"].get(km)
                    if last is not None and step - st["_b"] <= cfg.window_steps:
                        total += last
                keyed[km] = total
                if km in self.units:
                    units[km] = self.units[km]
                # the usual zone total at this hour and the next: the forecast's seasonal inputs
                slots = self.prof.get(km + TOTAL)
                if slots is None:
                    slots = self.prof[km + TOTAL] = new_profile()
                profile_update(slots, step, cfg.step_s, total, cfg.profile_alpha)
                profile[km] = (
                    profile_expect_raw(slots, step + 1, cfg.step_s),
                    profile_expect_raw(slots, step, cfg.step_s),
                )
        return Step(
            zone=self.zone,
            site=self.site,
            utility=util,
            step=step,
            ts=(step + 1) * self.step_ms,
            features=feats,
            actual=keyed,
            units=units,
            profile=profile,
        )

    # -- forecast history ----------------------------------------------------------------------

    def forecast_input(self, metric: str, step: Step, cfg: FeatureConfig) -> tuple[np.ndarray, float] | None:
        """Forecast features for the step after ``step`` and the scale they are expressed in.

        Uses the history as it is now (the caller appends steps in order) and the
        profile as it was when ``step`` closed (later steps of the batch may have moved it).
        """
        hist = self.hist.get(metric)
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
            hist = self.hist.get(metric, [])
            self.hist[metric] = [*hist[-(cfg.window_steps - 1) :], float(value)]

    # -- incident volume, carried from step to step (and batch to batch) ----------------------------

    def incident_volume(self, incident: dict[str, Any] | None) -> float:
        """Volume lost so far by ``incident`` before the current step (0 for a new incident)."""
        if incident is None or self.vol is None or self.vol[0] != incident["since_ms"]:
            return 0.0
        return float(self.vol[1])

    def set_incident_volume(self, incident: dict[str, Any] | None) -> None:
        self.vol = None if incident is None else [incident["since_ms"], incident["volume"]]
