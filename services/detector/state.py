"""Per-sensor rolling state and the causal features computed from it.

One sensor's state is a flat float64 vector (see :class:`Layout`): per metric a
short and a long exponentially weighted mean and variance, the last value, a
time-of-day profile (mean and variance per hour of day), plus the sensor's
observation count, last timestamp and the post-processing state of its anomaly
score. Flat vectors are cheap to stack into a ``(sensors, width)`` matrix, so a
micro-batch updates every sensor of a model profile with a handful of numpy
operations, and they serialise to bytes for a Faust table without a codec.

Processing is strictly causal and exact whatever the batching: a batch holding
several readings of one sensor is processed in *rounds* (round j takes the j-th
reading of every sensor), each reading's features are computed against the state
left by the readings before it, and the state is then written once per sensor.
Offline scoring of a CSV is the same code with one sensor and one reading per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import orjson

from services.detector import kernels

HOURS = kernels.HOURS
_EMPTY = np.zeros(0)
# Per-metric feature blocks, in the order they appear in a feature row.
FEATURE_BLOCKS = (
    "value",  # the reading (a missing metric: its smoothed level)
    "smooth",  # short EWMA of the level
    "spread",  # short EWMA standard deviation, in the metric's unit
    "z",  # (value - long mean) / long sigma
    "z_tod",  # (value - hour-of-day mean) / its sigma once the hour is known, else z
    "z_both",  # the smaller of z and z_tod (sign of z_tod): unusual for the hour *and* against the recent level
    "rate",  # change per second since the previous reading
    "spread_rel",  # spread / long sigma: unit-free, comparable across sensors
    "delta_z",  # change since the previous reading / long sigma
    "base",  # the usual level the reading was compared against (for reasons)
    "base_sd",  # its sigma
    "flat",  # readings the value has not moved / the longest still run seen in normal operation (x margin)
    "shift",  # smoothed level against a slow, drift-following baseline, in calibrated units (0 until fitted)
)


def alpha(halflife: float) -> float:
    """EWMA weight of the newest observation for a half-life in observations."""
    return float(1.0 - 0.5 ** (1.0 / max(halflife, 1e-9)))


@dataclass(frozen=True)
class StateConfig:
    """How fast the rolling statistics move, in observations (not seconds) so batching never changes them."""

    short_halflife: float = 3.0  # smoothing of level and spread: noise down, a few readings of delay
    long_halflife: float = 600.0  # the "usual" level a reading is compared against
    tod_max_count: int = 5000  # per hour-of-day bucket: cumulative mean until this many, then EWMA
    tod_min_count: int = 30  # a bucket is trusted (for z_tod and reasons) after this many readings
    warmup: int = 10  # z-scores are 0 until a metric has this many observations
    rel_floor: float = 1e-3  # sigma floor relative to |mean|: a constant sensor does not give infinite z
    abs_floor: float = 1e-6
    z_clip: float = 50.0
    clip_sigma: float = 3.0  # long and hour-of-day statistics learn from a reading at most this far out
    tz_offset_h: int = 0  # hour-of-day buckets in local time: UTC + this offset
    # flatline: a value that repeats longer than flat_margin x its longest still run in normal
    # operation (at least flat_min_run readings) is stuck; judged once it has moved flat_warmup times
    flat_min_run: int = 8
    flat_margin: float = 3.0
    flat_warmup: int = 60
    # level shift: the baseline follows the smoothed level with this half-life (readings) and
    # stops following while the level is shift_freeze calibrated units away from it
    shift_smooth_halflife: float = 8.0  # the level compared: smoother than the short EWMA
    shift_halflife: float = 120.0
    shift_freeze: float = 2.0
    # a metric whose training level follows a straight line this closely (R²) keeps drifting at that
    # slope while its baseline is frozen (a warming motor); 0 disables
    shift_trend_r2: float = 0.8


@dataclass(frozen=True)
class Layout:
    """Positions of each statistic inside a sensor's flat state vector for ``m`` metrics."""

    m: int

    # scalar slots
    N = 0  # observations of the sensor
    TS = 1  # last timestamp, ms
    SCORE = 2  # smoothed ensemble score
    FLAG = 3  # 1 while the sensor is in an anomalous episode (hysteresis)
    SCORED = 4  # readings scored so far (0: the smoothed score starts afresh)
    SCALARS = 5

    @cached_property
    def blocks(self) -> dict[str, slice]:
        m, pos, out = self.m, self.SCALARS, {}
        for name, size in (
            ("count", m),
            ("last", m),
            ("ms", m),
            ("vs", m),
            ("ml", m),
            ("vl", m),
            ("tod_m", HOURS * m),
            ("tod_v", HOURS * m),
            ("tod_n", HOURS * m),
            # appended later: a state stored before these existed is padded (see remap)
            ("run", m),  # readings the value has repeated
            ("runmax", m),  # longest still run seen while not judged stuck
            ("moves", m),  # readings that changed the value
            ("sl", m),  # level-shift smoothed level (seeded by a metric's first observation)
            ("sb", m),  # level-shift baseline (likewise)
        ):
            out[name] = slice(pos, pos + size)
            pos += size
        return out

    @property
    def width(self) -> int:
        return self.blocks["sb"].stop

    def empty(self, sensors: int = 1) -> np.ndarray:
        state = np.zeros((sensors, self.width))
        state[:, self.blocks["last"]] = np.nan
        return state

    def upgrade(self, vector: np.ndarray) -> np.ndarray:
        """A vector stored by an older layout (fewer trailing blocks) brought to this width."""
        if len(vector) == self.width:
            return vector
        if len(vector) > self.width:
            raise ValueError(f"state of {len(vector)} values is wider than the layout's {self.width}")
        out = self.empty(1)[0]
        out[: len(vector)] = vector
        return out


def ewma_rows(x: np.ndarray, a: float) -> np.ndarray:
    """EWMA down the rows of ``x`` seeded with the first value, a missing value holding the level (as ``step``)."""
    out = np.empty_like(x, dtype=np.float64)
    level = np.full(x.shape[1], np.nan)
    for i, row in enumerate(x):
        ok = np.isfinite(row)
        level = np.where(ok & np.isnan(level), row, np.where(ok, level + a * (row - level), level))
        out[i] = level
    return np.nan_to_num(out)


def occurrence(idx: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same value: the reading's round."""
    n = len(idx)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_idx)) + 1]
    occ = np.empty(n, dtype=np.int64)
    occ[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return occ


def pack(metrics: tuple[str, ...], vector: np.ndarray) -> bytes:
    """A sensor's state as table bytes: ``FW1``, header length, JSON metric names, float64 vector."""
    return _prefix(tuple(metrics)) + np.ascontiguousarray(vector, dtype="<f8").tobytes()


@lru_cache(maxsize=1024)
def _prefix(metrics: tuple[str, ...]) -> bytes:
    """What precedes the vector for ``metrics`` (a few metric lists serve every sensor: packed once each)."""
    header = orjson.dumps(list(metrics))
    return b"FW1" + len(header).to_bytes(2, "little") + header


def unpack(data: bytes) -> tuple[tuple[str, ...], np.ndarray]:
    if data[:3] != b"FW1":
        raise ValueError("not a detector state")
    size = int.from_bytes(data[3:5], "little")
    metrics = tuple(orjson.loads(data[5 : 5 + size]))
    return metrics, np.frombuffer(data[5 + size :], dtype="<f8").copy()


@lru_cache(maxsize=256)
def layout_for(m: int) -> Layout:
    """The layout for ``m`` metrics, built once (remap runs per sensor and batch)."""
    return Layout(m)


def remap(vector: np.ndarray, old: tuple[str, ...], new: tuple[str, ...]) -> np.ndarray:
    """A state vector for metrics ``new`` from one kept for ``old``: shared metrics keep their statistics."""
    lo = layout_for(len(old))
    if len(vector) != lo.width:
        vector = lo.upgrade(vector)
    if old == new:
        return vector
    ln = layout_for(len(new))
    out = ln.empty(1)[0]
    out[: Layout.SCALARS] = vector[: Layout.SCALARS]
    if not (old and new):  # nothing kept: a fresh state (a counter reset of every metric goes through here)
        return out
    for name, sl_new in ln.blocks.items():
        # rows of 1 (per-metric blocks) or 24 (hour-of-day blocks), one column per metric
        block_old = vector[lo.blocks[name]].reshape(-1, len(old))
        block_new = out[sl_new].reshape(-1, len(new))
        for j, metric in enumerate(new):
            if metric in old:
                block_new[:, j] = block_old[:, old.index(metric)]
        out[sl_new] = block_new.reshape(-1)
    return out


def rebaseline(vector: np.ndarray, metrics: tuple[str, ...], forget: frozenset[str]) -> np.ndarray:
    """``vector`` with the statistics of the metrics in ``forget`` started afresh, the others kept.

    For a cumulative counter that was reset (or a replaced meter): its old level says nothing about
    the new one, so it warms up again like a new metric instead of being judged against it.
    """
    kept = tuple(m for m in metrics if m not in forget)
    return remap(remap(vector, metrics, kept), kept, metrics)


class RollingState:
    """Vectorised update of many sensors' states; one instance per metric list and config."""

    def __init__(self, metrics: tuple[str, ...] | list[str], config: StateConfig | None = None):
        self.metrics = tuple(metrics)
        self.config = config or StateConfig()
        self.layout = Layout(len(self.metrics))
        self.a_short = alpha(self.config.short_halflife)
        self.a_long = alpha(self.config.long_halflife)
        self.a_shift = alpha(self.config.shift_halflife)
        self.a_shift_level = alpha(self.config.shift_smooth_halflife)
        # per metric unit of the level-shift feature, set by a fitted model (None: feature off)
        self.shift_scale: np.ndarray | None = None
        # per metric drift per reading that a frozen baseline still follows (None: none)
        self.shift_drift: np.ndarray | None = None
        self.track_shift = True  # False: the shift block stays 0 and its state untouched (streaming: no cost)

    @property
    def n_features(self) -> int:
        return len(FEATURE_BLOCKS) * len(self.metrics)

    def sigma(self, var: np.ndarray, mean: np.ndarray) -> np.ndarray:
        c = self.config
        return np.sqrt(np.maximum(var, 0.0) + (c.rel_floor * mean) ** 2 + c.abs_floor**2)

    def hour_of_day(self, ts_ms: np.ndarray) -> np.ndarray:
        return ((ts_ms // 3_600_000).astype(np.int64) + self.config.tz_offset_h) % HOURS

    def step(self, state: np.ndarray, x: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
        """Features of one reading per row of ``state`` (updated in place); ``x`` is ``(S, m)``, NaN = missing.

        Every feature uses the state as it was before this reading, except the
        smoothed level and spread, which include it (still causal).
        """
        c, lay, m = self.config, self.layout, self.layout.m
        b = lay.blocks
        s = state.shape[0]
        rows = np.arange(s)
        # a value no sensor can measure (inf, 1e300) counts as missing: it must not poison the state
        seen = np.isfinite(x) & (np.abs(x) < 1e15)
        count = state[:, b["count"]].copy()
        last = state[:, b["last"]]
        ms, vs = state[:, b["ms"]], state[:, b["vs"]]
        ml, vl = state[:, b["ml"]], state[:, b["vl"]]
        first = seen & (count == 0)

        # z against the long rolling state, before this reading updates it
        sig_l = self.sigma(vl, ml)
        z = np.where(seen & (count >= c.warmup), (x - ml) / sig_l, 0.0)

        # time-of-day profile of the reading's hour
        hour = self.hour_of_day(ts_ms)
        hm = state[:, b["tod_m"]].reshape(s, HOURS, m)
        hv = state[:, b["tod_v"]].reshape(s, HOURS, m)
        hn = state[:, b["tod_n"]].reshape(s, HOURS, m)
        tm, tv, tn = hm[rows, hour], hv[rows, hour], hn[rows, hour]
        use_tod = seen & (tn >= c.tod_min_count)
        sig_t = self.sigma(tv, tm)
        z_tod = np.where(use_tod, (x - tm) / sig_t, z)
        base = np.where(use_tod, tm, ml)
        base_sd = np.where(use_tod, sig_t, sig_l)

        dt_s = np.maximum((ts_ms - state[:, lay.TS]) / 1000.0, 1e-3)
        rate = np.where(seen & ~np.isnan(last), (x - last) / dt_s[:, None], 0.0)

        # EWMA updates (West's incremental variance); the first observation seeds the means
        xf = np.where(seen, x, 0.0)
        # weight max(alpha, 1/(count+1)): a plain running mean and variance until the EWMA has
        # seen enough readings, so a young sensor's sigma is not too small to mean anything
        young = 1.0 / (count + 1.0)
        for mean, var, a0, clip in ((ms, vs, self.a_short, False), (ml, vl, self.a_long, True)):
            a = np.maximum(a0, young)
            d = xf - mean
            if not clip:  # the short statistics follow any change, up to z_clip sigmas per reading
                lim = np.where(count >= c.warmup, c.z_clip * sig_l, np.inf)
                d = np.clip(d, -lim, lim)
            else:
                # Huber-style: a reading far out moves the "usual" level and spread as if it were
                # clip_sigma away, so a long anomaly cannot teach the baseline that it is normal
                # (a real level change is still followed, at clip_sigma * a per reading)
                lim = np.where(count >= c.warmup, c.clip_sigma * sig_l, np.inf)
                d = np.clip(d, -lim, lim)
            new_mean = np.where(first, xf, mean + a * d)
            new_var = np.where(first, 0.0, (1 - a) * (var + a * d * d))
            mean[:] = np.where(seen, new_mean, mean)
            var[:] = np.where(seen, new_var, var)
        a_t = 1.0 / np.minimum(tn + 1.0, c.tod_max_count)
        lim = np.where(tn >= c.tod_min_count, c.clip_sigma * sig_t, np.inf)
        d = np.clip(xf - tm, -lim, lim)
        hm[rows, hour] = np.where(seen, np.where(tn == 0, xf, tm + a_t * d), tm)
        hv[rows, hour] = np.where(seen, np.where(tn == 0, 0.0, (1 - a_t) * (tv + a_t * d * d)), tv)
        hn[rows, hour] = tn + seen
        state[:, b["tod_m"]] = hm.reshape(s, -1)
        state[:, b["tod_v"]] = hv.reshape(s, -1)
        state[:, b["tod_n"]] = hn.reshape(s, -1)
        flat = self._flatline(state, x, seen, last)
        shift = self._shift(state, x, seen, first) if getattr(self, "track_shift", True) else np.zeros_like(x)
        state[:, b["count"]] = count + seen
        state[:, b["last"]] = np.where(seen, x, last)
        state[:, lay.N] += 1
        state[:, lay.TS] = ts_ms

        value = np.where(seen, x, ms)  # a missing metric looks like its recent level, not like a zero
        spread = np.sqrt(np.maximum(vs, 0.0))
        zc = c.z_clip
        spread_rel = np.where(count >= c.warmup, spread / sig_l, 1.0)
        delta_z = np.where(count >= c.warmup, rate * dt_s[:, None] / sig_l, 0.0)
        return np.hstack(
            [
                value,
                ms.copy(),
                spread,
                np.clip(z, -zc, zc),
                np.clip(z_tod, -zc, zc),
                np.clip(np.where(np.abs(z) < np.abs(z_tod), np.abs(z), np.abs(z_tod)) * np.sign(z_tod), -zc, zc),
                rate,
                np.clip(spread_rel, 0, zc),
                np.clip(delta_z, -zc, zc),
                base,
                base_sd,
                flat,
                shift,
            ]
        )

    def _flatline(self, state: np.ndarray, x: np.ndarray, seen: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Still run of each metric over its limit (updates the run counters in ``state``).

        A metric is judged once it has moved flat_warmup times (one that never moves, a
        status that is always on, is never "stuck"). Its limit is learnt from its own still
        runs: a flow that rests at 0 for hours while its pump is off has long runs in normal
        operation and is not stuck when it does so again. A run judged stuck teaches nothing.
        """
        c, b = self.config, self.layout.blocks
        run, runmax, moves = state[:, b["run"]], state[:, b["runmax"]], state[:, b["moves"]]
        still = seen & (x == last)  # a stuck sensor repeats its value exactly
        moved = seen & ~still & (last == last)  # last is NaN before the first value
        judged = moves >= c.flat_warmup
        limit = np.maximum(c.flat_min_run, c.flat_margin * runmax)
        ended = moved & (run <= limit)  # a run that ended without being judged stuck
        new_run = np.where(still, run + 1, np.where(seen, 0.0, run))
        learn = ended | (still & ~judged)
        runmax[:] = np.where(learn, np.maximum(runmax, np.where(still, new_run, run)), runmax)
        moves[:] = moves + moved
        run[:] = new_run
        return np.where(judged, new_run / np.maximum(c.flat_min_run, c.flat_margin * runmax), 0.0)

    def shift_levels(self, state: np.ndarray) -> np.ndarray:
        """The smoothed levels the level-shift feature compares (what its unit is calibrated on)."""
        return state[:, self.layout.blocks["sl"]]

    def _shift(self, state: np.ndarray, x: np.ndarray, seen: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Smoothed level against the slow baseline, in calibrated units; the baseline freezes beyond shift_freeze."""
        b = self.layout.blocks
        sl, sb = state[:, b["sl"]], state[:, b["sb"]]
        sl[:] = np.where(first, x, np.where(seen, sl + self.a_shift_level * (x - sl), sl))
        level = sl
        sb[:] = np.where(first, level, sb)
        if getattr(self, "shift_scale", None) is None:
            out = np.zeros_like(level)
            moving = np.ones_like(seen)
        else:
            out = np.clip((level - sb) / self.shift_scale, -self.config.z_clip, self.config.z_clip)
            moving = seen & (np.abs(out) < self.config.shift_freeze)
        # frozen while the level is far from it: a long anomaly does not become the baseline
        drift = getattr(self, "shift_drift", None)
        frozen_step = 0.0 if drift is None else drift
        step = np.where(moving, self.a_shift * (level - sb), frozen_step)
        sb[:] = np.where(seen, sb + step, sb)
        return out

    def run(
        self,
        state: np.ndarray,
        x: np.ndarray,
        ts_ms: np.ndarray,
        sensor_idx: np.ndarray,
        late: np.ndarray | None = None,
    ) -> np.ndarray:
        """Features for a batch of readings of many sensors, in order, updating ``state`` (``(S, width)``).

        ``sensor_idx[i]`` is the row of ``state`` that reading ``i`` belongs to;
        readings of one sensor must be in time order. Returns ``(n, n_features)``.

        With ``late`` (a boolean array to fill), a reading not newer than its
        sensor's newest one is scored against the state but does not change it:
        a replay after a restart (at-least-once) or a late reading cannot count
        twice or move the baseline backwards.

        The compiled kernel (:mod:`services.detector.kernels`) walks the readings once, in order;
        :meth:`run_reference` is the numpy code it reproduces exactly.
        """
        n = len(sensor_idx)
        out = np.empty((n, self.n_features))
        if n == 0:
            return out
        if state.dtype != np.float64 or not state.flags.c_contiguous:
            raise ValueError("state must be a C-contiguous float64 matrix (it is updated in place)")
        scale, drift = getattr(self, "shift_scale", None), getattr(self, "shift_drift", None)
        flags = late if late is not None else np.zeros(n, dtype=bool)
        kernels.rolling_run(
            state,
            np.ascontiguousarray(x, dtype=np.float64).reshape(n, self.layout.m),
            np.ascontiguousarray(ts_ms, dtype=np.float64),
            np.ascontiguousarray(sensor_idx, dtype=np.int64),
            flags,
            late is not None,
            self._offsets,
            self._params,
            _EMPTY
            if scale is None
            else np.ascontiguousarray(np.broadcast_to(scale, (self.layout.m,)), dtype=np.float64),
            scale is not None,
            _EMPTY
            if drift is None
            else np.ascontiguousarray(np.broadcast_to(drift, (self.layout.m,)), dtype=np.float64),
            drift is not None,
            bool(getattr(self, "track_shift", True)),
            out,
        )
        return out

    @cached_property
    def _offsets(self) -> np.ndarray:
        blocks = self.layout.blocks
        return np.array([blocks[name].start for name in kernels.BLOCK_ORDER], dtype=np.int64)

    @cached_property
    def _params(self) -> np.ndarray:
        c = self.config
        values = {
            **{name: getattr(c, name) for name in kernels.PARAM_ORDER if hasattr(c, name)},
            "a_short": self.a_short,
            "a_long": self.a_long,
            "a_shift": self.a_shift,
            "a_shift_level": self.a_shift_level,
        }
        return np.array([float(values[name]) for name in kernels.PARAM_ORDER], dtype=np.float64)

    def run_reference(
        self,
        state: np.ndarray,
        x: np.ndarray,
        ts_ms: np.ndarray,
        sensor_idx: np.ndarray,
        late: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`run` in numpy: readings in rounds (round j: the j-th reading of every sensor).

        The reference the compiled kernel is tested against; a batch with many readings of one sensor
        costs one round of ~40 small numpy calls per reading.
        """
        n = len(sensor_idx)
        out = np.empty((n, self.n_features))
        if n == 0:
            return out
        occ = occurrence(sensor_idx)
        if occ.max() == 0:  # the common streaming case: one reading per sensor
            out[:] = self._step_rows(state, sensor_idx, x, ts_ms, late, slice(None))
            return out
        for j in range(int(occ.max()) + 1):
            pick = np.flatnonzero(occ == j)
            out[pick] = self._step_rows(state, sensor_idx[pick], x[pick], ts_ms[pick], late, pick)
        return out

    def _step_rows(
        self, state: np.ndarray, idx: np.ndarray, x: np.ndarray, ts: np.ndarray, late: np.ndarray | None, pick
    ) -> np.ndarray:
        sub = state[idx]
        if late is None:
            feats = self.step(sub, x, ts)
            state[idx] = sub
            return feats
        old = (sub[:, Layout.N] > 0) & (ts <= sub[:, Layout.TS])
        late[pick] = old
        feats = self.step(sub, x, ts)
        state[idx[~old]] = sub[~old]
        return feats
