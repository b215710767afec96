"""Compiled per-reading recurrences of the detector: rolling state and score persistence, one reading at a time.

Why: the numpy code of :mod:`services.detector.state` updates every sensor of a batch at once but
must go in *rounds* when a batch holds several readings of one sensor (each reading's features
depend on the state its predecessor left). A batch of one long stream is then one round per
reading, ~40 numpy calls of a few elements each: ~100 µs of interpreter and dispatch per reading.
These numba kernels walk the readings in order, once, and cost the same per reading whether a
batch holds one stream or ten thousand.

They compute exactly what :meth:`RollingState.step` and :meth:`AnomalyModel._persist` compute, the
same IEEE operations in the same order (no fastmath), so the results are bit-identical; the numpy
code stays as the reference (``RollingState.run_reference``, ``AnomalyModel._persist_reference``)
and ``tests/unit/test_detector_kernels.py`` holds them equal. ``cache=True`` keeps the machine code
beside this file (``__pycache__``), so only the first process after a change compiles (~2 s).
"""

from __future__ import annotations

import math

import numpy as np

from services.detector.compiled import njit  # numba's, imported when a kernel is jitted

HOURS = 24

# Positions of the per-metric blocks of a state row, passed to the kernel as ``offsets`` (see offsets_of).
BLOCK_ORDER = ("count", "last", "ms", "vs", "ml", "vl", "tod_m", "tod_v", "tod_n", "run", "runmax", "moves", "sl", "sb")
# Scalar parameters, passed as one float64 vector in this order (see params_of).
PARAM_ORDER = (
    "warmup",
    "rel_floor",
    "abs_floor",
    "z_clip",
    "clip_sigma",
    "tz_offset_h",
    "tod_max_count",
    "tod_min_count",
    "flat_min_run",
    "flat_margin",
    "flat_warmup",
    "shift_freeze",
    "a_short",
    "a_long",
    "a_shift",
    "a_shift_level",
)


@njit(cache=True, inline="always")
def _max(a: float, b: float) -> float:
    """np.maximum: NaN when either is NaN."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(cache=True, inline="always")
def _min(a: float, b: float) -> float:
    """np.minimum: NaN when either is NaN."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@njit(cache=True, inline="always")
def _clip(v: float, lo: float, hi: float) -> float:
    """np.clip on floats (NaN propagates from any argument)."""
    return _min(_max(v, lo), hi)


@njit(cache=True, inline="always")
def _sigma(var: float, mean: float, rel_floor: float, abs_floor: float) -> float:
    r = rel_floor * mean
    return math.sqrt(_max(var, 0.0) + r * r + abs_floor * abs_floor)


@njit(cache=True, inline="always")
def _sign(v: float) -> float:
    if v > 0.0:
        return 1.0
    if v < 0.0:
        return -1.0
    return v  # 0.0, -0.0 or NaN, as np.sign


@njit(cache=True, inline="always")
def _ewma(m: float, v: float, x: float, a: float, lim: float, seen: bool, first: bool) -> tuple[float, float]:
    """One clipped EWMA step of a mean and variance (unchanged when the value is missing)."""
    d = _clip(x - m, -lim, lim)
    if not seen:
        return m, v
    if first:
        return x, 0.0
    return m + a * d, (1 - a) * (v + a * d * d)


@njit(cache=True, nogil=True)
def _step(
    row: np.ndarray,
    xr: np.ndarray,
    t: float,
    m: int,
    off: np.ndarray,
    p: np.ndarray,
    scale: np.ndarray,
    has_scale: bool,
    drift: np.ndarray,
    has_drift: bool,
    track_shift: bool,
    out: np.ndarray,
) -> None:
    """One reading of one sensor: its features into ``out`` (13 blocks of m), ``row`` updated in place."""
    warmup, rel_floor, abs_floor, zc, clip_sigma = p[0], p[1], p[2], p[3], p[4]
    tz, tod_max, tod_min, flat_min, flat_margin, flat_warmup, freeze = p[5], p[6], p[7], p[8], p[9], p[10], p[11]
    a_short, a_long, a_shift, a_level = p[12], p[13], p[14], p[15]
    o_count, o_last, o_ms, o_vs, o_ml, o_vl = off[0], off[1], off[2], off[3], off[4], off[5]
    o_tm, o_tv, o_tn, o_run, o_runmax, o_moves, o_sl, o_sb = (
        off[6],
        off[7],
        off[8],
        off[9],
        off[10],
        off[11],
        off[12],
        off[13],
    )
    inf = np.inf
    hour = (np.int64(t // 3_600_000.0) + np.int64(tz)) % HOURS
    dt = _max((t - row[1]) / 1000.0, 1e-3)
    for j in range(m):
        xv = xr[j]
        seen = math.isfinite(xv) and abs(xv) < 1e15
        cnt = row[o_count + j]
        lst = row[o_last + j]
        ms, vs, ml, vl = row[o_ms + j], row[o_vs + j], row[o_ml + j], row[o_vl + j]
        first = seen and cnt == 0.0
        warm = cnt >= warmup
        sig_l = _sigma(vl, ml, rel_floor, abs_floor)
        z = (xv - ml) / sig_l if seen and warm else 0.0
        ht = hour * m + j
        tm, tv, tn = row[o_tm + ht], row[o_tv + ht], row[o_tn + ht]
        use_tod = seen and tn >= tod_min
        sig_t = _sigma(tv, tm, rel_floor, abs_floor)
        z_tod = (xv - tm) / sig_t if use_tod else z
        base = tm if use_tod else ml
        base_sd = sig_t if use_tod else sig_l
        rate = (xv - lst) / dt if seen and not math.isnan(lst) else 0.0
        xf = xv if seen else 0.0
        young = 1.0 / (cnt + 1.0)
        # short EWMA: follows any change, up to z_clip sigmas per reading
        ms, vs = _ewma(ms, vs, xf, _max(a_short, young), zc * sig_l if warm else inf, seen, first)
        # long EWMA, Huber-clipped at clip_sigma
        ml, vl = _ewma(ml, vl, xf, _max(a_long, young), clip_sigma * sig_l if warm else inf, seen, first)
        row[o_ms + j], row[o_vs + j], row[o_ml + j], row[o_vl + j] = ms, vs, ml, vl
        # hour-of-day profile
        a_t = 1.0 / _min(tn + 1.0, tod_max)
        lim = clip_sigma * sig_t if tn >= tod_min else inf
        d = _clip(xf - tm, -lim, lim)
        if seen:
            if tn == 0.0:
                row[o_tm + ht], row[o_tv + ht] = xf, 0.0
            else:
                row[o_tm + ht], row[o_tv + ht] = tm + a_t * d, (1 - a_t) * (tv + a_t * d * d)
            row[o_tn + ht] = tn + 1.0
        # flatline
        run, runmax, moves = row[o_run + j], row[o_runmax + j], row[o_moves + j]
        still = seen and xv == lst
        moved = seen and not still and lst == lst
        judged = moves >= flat_warmup
        limit = _max(flat_min, flat_margin * runmax)
        ended = moved and run <= limit
        new_run = run + 1.0 if still else (0.0 if seen else run)
        if ended or (still and not judged):
            runmax = _max(runmax, new_run if still else run)
        row[o_runmax + j] = runmax
        row[o_moves + j] = moves + (1.0 if moved else 0.0)
        row[o_run + j] = new_run
        flat = new_run / _max(flat_min, flat_margin * runmax) if judged else 0.0
        # level shift
        shift = 0.0
        if track_shift:
            sl, sb = row[o_sl + j], row[o_sb + j]
            if first:
                sl = xv
            elif seen:
                sl = sl + a_level * (xv - sl)
            if first:
                sb = sl
            moving = True
            if has_scale:
                shift = _clip((sl - sb) / scale[j], -zc, zc)
                moving = seen and abs(shift) < freeze
            if seen:
                if moving:
                    sb = sb + a_shift * (sl - sb)
                else:
                    sb = sb + (drift[j] if has_drift else 0.0)
            row[o_sl + j], row[o_sb + j] = sl, sb
        if seen:
            row[o_count + j] = cnt + 1.0
            row[o_last + j] = xv
        spread = math.sqrt(_max(vs, 0.0))
        az, at = abs(z), abs(z_tod)
        out[j] = xv if seen else ms
        out[m + j] = ms
        out[2 * m + j] = spread
        out[3 * m + j] = _clip(z, -zc, zc)
        out[4 * m + j] = _clip(z_tod, -zc, zc)
        out[5 * m + j] = _clip((az if az < at else at) * _sign(z_tod), -zc, zc)
        out[6 * m + j] = rate
        out[7 * m + j] = _clip(spread / sig_l if warm else 1.0, 0.0, zc)
        out[8 * m + j] = _clip(rate * dt / sig_l if warm else 0.0, -zc, zc)
        out[9 * m + j] = base
        out[10 * m + j] = base_sd
        out[11 * m + j] = flat
        out[12 * m + j] = shift
    row[0] += 1.0
    row[1] = t


@njit(cache=True, nogil=True)
def rolling_run(
    state: np.ndarray,
    x: np.ndarray,
    ts: np.ndarray,
    idx: np.ndarray,
    late: np.ndarray,
    track_late: bool,
    off: np.ndarray,
    params: np.ndarray,
    scale: np.ndarray,
    has_scale: bool,
    drift: np.ndarray,
    has_drift: bool,
    track_shift: bool,
    out: np.ndarray,
) -> None:
    """Features of readings ``i`` (rows of ``x``) of sensors ``idx[i]`` (rows of ``state``), in order.

    With ``track_late`` a reading not newer than its sensor's newest is scored on a copy of the state and
    marked in ``late``; the state keeps what it was (see RollingState.run).
    """
    m = x.shape[1]
    scratch = np.empty(state.shape[1])
    for i in range(len(idx)):
        row = state[idx[i]]
        if track_late and row[0] > 0 and ts[i] <= row[1]:
            late[i] = True
            scratch[:] = row
            _step(scratch, x[i], ts[i], m, off, params, scale, has_scale, drift, has_drift, track_shift, out[i])
        else:
            _step(row, x[i], ts[i], m, off, params, scale, has_scale, drift, has_drift, track_shift, out[i])


@njit(cache=True, nogil=True)
def persist_run(
    state: np.ndarray,
    raw: np.ndarray,
    idx: np.ndarray,
    late: np.ndarray,
    track_late: bool,
    floor: np.ndarray,
    has_floor: bool,
    a: float,
    on: float,
    off: float,
    smoothed: np.ndarray,
    flags: np.ndarray,
) -> None:
    """Causal score smoothing and hysteresis per reading, in order (see AnomalyModel._persist)."""
    for i in range(len(idx)):
        row = state[idx[i]]
        prev = row[2]
        s = raw[i] if row[4] == 0.0 else prev + a * (raw[i] - prev)
        if has_floor:
            f = floor[i]
            # np.maximum's rule: a NaN on either side wins
            if f != f or f > s:
                s = f
        flag = s >= off if row[3] > 0.0 else s >= on
        smoothed[i] = s
        flags[i] = flag
        if not (track_late and late[i]):
            row[2] = s
            row[3] = 1.0 if flag else 0.0
            row[4] += 1.0


@njit(cache=True, nogil=True)
def lof_run(
    xy: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    kdist: np.ndarray,
    lrd_fit: np.ndarray,
    k: int,
    out: np.ndarray,
) -> None:
    """Local outlier factor of query rows against a fitted reference set, from their dot products ``xy``.

    What scikit-learn's ``LocalOutlierFactor.score_samples`` computes (negated), brute force: per query row
    the ``k`` references nearest by ``yy - 2 xy`` (its ``EuclideanArgKmin`` ranks by this, the query's own
    squared norm ``xx`` added after the search), their distances ``sqrt(max(that + xx, 0))``, reachability
    distances ``max(distance, k-distance of the reference)`` and the mean of the references' densities over
    the row's. A selection kept in a sorted array of ``k`` instead of a sort of every distance.
    """
    n, r = xy.shape
    best = np.empty(k)
    who = np.empty(k, dtype=np.int64)
    for i in range(n):
        filled = 0
        for j in range(r):
            v = yy[j] - 2.0 * xy[i, j]
            if filled == k:
                if not v < best[k - 1]:
                    continue
                t = k - 1
            else:
                t = filled
                filled += 1
            while t > 0 and best[t - 1] > v:
                best[t] = best[t - 1]
                who[t] = who[t - 1]
                t -= 1
            best[t] = v
            who[t] = j
        reach = 0.0
        for t in range(filled):
            d = math.sqrt(_max(best[t] + xx[i], 0.0))
            reach += _max(d, kdist[who[t]])
        lrd = 1.0 / (reach / filled + 1e-10)
        ratios = 0.0
        for t in range(filled):
            ratios += lrd_fit[who[t]] / lrd
        out[i] = ratios / filled


#: dtypes of :func:`forest_run`'s node arrays (roots, steps, child, column, threshold, value) after its rows (float32):
#: the signature the ahead-of-time build exports (warm_up's call), which a caller must pass exactly. Kept here, so that
#: changing them changes the build's name (the source's hash) with them.
FOREST_DTYPES = (np.int64, np.int64, np.int32, np.int32, np.float32, np.float64)


@njit(cache=True, inline="always")
def _descend(x: np.ndarray, i: int, node: int, child: np.ndarray, column: np.ndarray, threshold: np.ndarray) -> int:
    # no branch on the comparison: which child is read depends on it (a mispredicted branch a level cost more)
    return child[2 * node + (x[i, column[node]] > threshold[node])]


@njit(cache=True, nogil=True)
def forest_run(
    x: np.ndarray,
    roots: np.ndarray,
    steps: np.ndarray,
    child: np.ndarray,
    column: np.ndarray,
    threshold: np.ndarray,
    value: np.ndarray,
    out: np.ndarray,
) -> None:
    """Sum over the trees of an isolation forest of each row's leaf value (``IsolationForestDetector.score``).

    The trees' nodes are concatenated, tree ``t`` rooted at ``roots[t]`` and ``steps[t]`` levels deep; node ``n``'s
    children are ``child[2n]`` (``<=``, left) and ``child[2n + 1]``, a leaf its own two children, so every row takes
    the tree's depth in steps and no step tests for a leaf. ``column`` is the column of ``x`` (float32, as
    scikit-learn's ``apply`` reads it) a node splits on; ``threshold`` the largest float32 not above the tree's
    float64 threshold, so a float32 value is above one exactly when it is above the other; ``value`` a leaf's path
    length less one. The same comparisons and the same sum, tree by tree, as each tree's ``apply``: bit-identical
    for rows without NaN.

    Tree by tree (one tree's nodes stay in cache), eight rows at a time: their descents are independent, so the
    processor overlaps eight chains of dependent loads where one row's walk would wait on each (3.4x the speed
    of scikit-learn's trees one by one for 2,000 rows).
    """
    out[:] = 0.0
    n = x.shape[0]
    whole = n - n % 8
    for t in range(len(roots)):
        root, depth = roots[t], steps[t]
        for i in range(0, whole, 8):
            a = b = c = d = e = f = g = h = root
            for _ in range(depth):
                a = _descend(x, i, a, child, column, threshold)
                b = _descend(x, i + 1, b, child, column, threshold)
                c = _descend(x, i + 2, c, child, column, threshold)
                d = _descend(x, i + 3, d, child, column, threshold)
                e = _descend(x, i + 4, e, child, column, threshold)
                f = _descend(x, i + 5, f, child, column, threshold)
                g = _descend(x, i + 6, g, child, column, threshold)
                h = _descend(x, i + 7, h, child, column, threshold)
            out[i] += value[a]
            out[i + 1] += value[b]
            out[i + 2] += value[c]
            out[i + 3] += value[d]
            out[i + 4] += value[e]
            out[i + 5] += value[f]
            out[i + 6] += value[g]
            out[i + 7] += value[h]
        for i in range(whole, n):
            node = root
            for _ in range(depth):
                node = _descend(x, i, node, child, column, threshold)
            out[i] += value[node]


def warm_up() -> None:
    """Compile (or load from the cache) the kernels now, so the first batch does not pay for it."""
    from services.detector.model import AnomalyModel

    model = AnomalyModel(["a"])
    state = model.layout.empty(1)
    idx = np.zeros(2, dtype=np.int64)
    feats = model.features(state, np.array([[1.0], [2.0]]), np.array([0.0, 1000.0]), idx, np.zeros(2, dtype=bool))
    model._persist(state, feats[:, 0], idx, np.zeros(2, dtype=bool))
    lof_run(np.zeros((1, 2)), np.zeros(1), np.zeros(2), np.zeros(2), np.ones(2), 1, np.empty(1))
    # one tree of one leaf, in the dtypes the ahead-of-time build exports
    roots, steps, child, column, threshold, value = (
        np.zeros(2 if k == 2 else 1, t) for k, t in enumerate(FOREST_DTYPES)
    )
    forest_run(np.zeros((1, 1), np.float32), roots, steps, child, column, threshold, value, np.empty(1))
