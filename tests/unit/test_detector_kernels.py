"""The compiled per-reading kernels give exactly what the numpy reference code gives (bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.model import AnomalyModel
from services.detector.state import RollingState, StateConfig

pytestmark = pytest.mark.unit


def stream(n: int, sensors: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings of interleaved sensors with what real streams hold: gaps, junk, stuck runs, jumps, late ones."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sensors, n).astype(np.int64)
    x = 100.0 + rng.normal(0, 5, (n, m)) * rng.uniform(0.1, 3, m)
    x[rng.random((n, m)) < 0.05] = np.nan  # missing metrics
    x[rng.random((n, m)) < 0.005] = np.inf
    x[rng.random((n, m)) < 0.005] = 1e300  # a value no sensor measures: counts as missing
    x[n // 3 : n // 3 + 150, 0] = 42.0  # stuck
    x[n // 2 :, m - 1] += 400.0  # level shift
    x[rng.random((n, m)) < 0.01] *= -50  # spikes
    ts = np.empty(n)
    clock = np.full(sensors, 1_700_000_000_000.0)
    for i, s in enumerate(idx):  # per sensor in time order, ~100 s apart: every hour-of-day bucket fills
        clock[s] += rng.choice([100_000.0, 90_000.0, 0.0, 100_000.0])
        ts[i] = clock[s]
    back = rng.random(n) < 0.02
    ts[back] -= 500_000.0  # late readings (older than their sensor's newest)
    return x, ts, idx


def both(rs: RollingState, state, x, ts, idx, late: bool):
    s1, s2 = state.copy(), state.copy()
    l1 = np.zeros(len(idx), dtype=bool) if late else None
    l2 = np.zeros(len(idx), dtype=bool) if late else None
    f1 = rs.run(s1, x, ts, idx, l1)
    f2 = rs.run_reference(s2, x, ts, idx, l2)
    return (f1, s1, l1), (f2, s2, l2)


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("shift", ["off", "unfitted", "fitted", "drifting"])
def test_rolling_kernel_equals_numpy(late: bool, shift: str) -> None:
    m, sensors = 3, 4
    rs = RollingState([f"m{j}" for j in range(m)], StateConfig(tz_offset_h=2, flat_warmup=20))
    rs.track_shift = shift != "off"
    if shift in ("fitted", "drifting"):
        rs.shift_scale = np.array([2.0, 5.0, 0.5])
    if shift == "drifting":
        rs.shift_drift = np.array([0.0, 0.01, -0.2])
    x, ts, idx = stream(2500, sensors, m, seed=7)
    state = rs.layout.empty(sensors)
    # in batches of different sizes, the state carried over: what the service does
    for lo, hi in ((0, 1), (1, 700), (700, 701), (701, 1900), (1900, 2500)):
        (f1, s1, l1), (f2, s2, l2) = both(rs, state, x[lo:hi], ts[lo:hi], idx[lo:hi], late)
        np.testing.assert_array_equal(f1, f2)
        np.testing.assert_array_equal(s1, s2)
        if late:
            np.testing.assert_array_equal(l1, l2)
            assert hi - lo < 100 or l1.any()
        state = s1


def test_rolling_kernel_one_stream_many_batches() -> None:
    """The offline case: one sensor, thousands of readings in one call."""
    rs = RollingState(["a", "b"])
    x, ts, idx = stream(3000, 1, 2, seed=3)
    ts = np.sort(ts)
    (f1, s1, _), (f2, s2, _) = both(rs, rs.layout.empty(1), x, ts, idx, late=False)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.parametrize(("late", "floored"), [(False, False), (True, False), (True, True)])
def test_persist_kernel_equals_numpy(late: bool, floored: bool) -> None:
    model = AnomalyModel(["a", "b"])
    model.threshold = 1.3
    rng = np.random.default_rng(5)
    n, sensors = 5000, 6
    idx = rng.integers(0, sensors, n).astype(np.int64)
    raw = np.abs(rng.normal(0.8, 0.6, n))
    raw[rng.random(n) < 0.01] = np.nan
    flags_late = rng.random(n) < 0.05 if late else None
    state = model.layout.empty(sensors)
    state[:2, 4] = 3.0  # two sensors with a smoothed score already
    state[:2, 2] = 2.0
    state[0, 3] = 1.0  # one of them in an episode
    # an immediate rule's floor: mostly zero, sometimes above the threshold, once NaN
    floor = np.where(rng.random(n) < 0.02, 2.0, 0.0) if floored else None
    if floor is not None:
        floor[7] = np.nan
    s1, s2 = state.copy(), state.copy()
    sm1, fl1 = model._persist(s1, raw, idx, flags_late, floor)
    sm2, fl2 = model._persist_reference(s2, raw, idx, flags_late, floor)
    np.testing.assert_array_equal(sm1, sm2)
    np.testing.assert_array_equal(fl1, fl2)
    np.testing.assert_array_equal(s1, s2)
    assert fl1.any() and not fl1.all()


def test_kernels_refuse_a_state_they_cannot_update_in_place() -> None:
    rs = RollingState(["a"])
    state = np.asfortranarray(rs.layout.empty(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        rs.run(state, np.ones((2, 1)), np.array([1.0, 2.0]), np.array([0, 1]))
