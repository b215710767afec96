"""Rolling state and features: statistics, causality, batching invariance, missing values, time of day."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.state import FEATURE_BLOCKS, Layout, RollingState, StateConfig, occurrence, pack, remap, unpack

HOUR = 3_600_000
T0 = 1_700_000_000_000.0


def block(feats: np.ndarray, name: str, m: int) -> np.ndarray:
    i = FEATURE_BLOCKS.index(name)
    return feats[:, i * m : (i + 1) * m]


def test_long_mean_and_sigma_follow_a_stationary_signal():
    rng = np.random.default_rng(1)
    rs = RollingState(("p",), StateConfig(long_halflife=200))
    x = rng.normal(480, 12, (3000, 1))
    state = rs.layout.empty(1)
    rs.run(state, x, np.arange(3000) * 1000.0, np.zeros(3000, dtype=np.int64))
    b = rs.layout.blocks
    assert state[0, b["ml"]][0] == pytest.approx(480, abs=3)
    assert np.sqrt(state[0, b["vl"]][0]) == pytest.approx(12, rel=0.2)
    assert state[0, b["count"]][0] == 3000


def test_features_are_causal():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (400, 3))
    ts = np.arange(400) * 1000.0
    rs = RollingState(("a", "b", "c"))
    f1 = rs.run(rs.layout.empty(1), x, ts, np.zeros(400, dtype=np.int64))
    y = x.copy()
    y[250:] += 100  # the future changes
    f2 = rs.run(rs.layout.empty(1), y, ts, np.zeros(400, dtype=np.int64))
    np.testing.assert_array_equal(f1[:250], f2[:250])
    assert not np.allclose(f1[250:], f2[250:])


def test_batching_and_interleaving_do_not_change_features():
    rng = np.random.default_rng(3)
    n, sensors = 300, 4
    x = rng.normal(10, 2, (n * sensors, 2))
    idx = np.tile(np.arange(sensors), n)
    ts = np.repeat(np.arange(n) * 5000.0, sensors)
    rs = RollingState(("p", "q"))
    all_at_once = rs.run(rs.layout.empty(sensors), x, ts, idx)
    state = rs.layout.empty(sensors)
    pieces = [rs.run(state, x[i : i + 37], ts[i : i + 37], idx[i : i + 37]) for i in range(0, len(x), 37)]
    np.testing.assert_allclose(np.vstack(pieces), all_at_once, rtol=1e-12, atol=1e-12)
    # each sensor alone gives its own rows of the interleaved run
    for s in range(sensors):
        rows = idx == s
        alone = rs.run(rs.layout.empty(1), x[rows], ts[rows], np.zeros(rows.sum(), dtype=np.int64))
        np.testing.assert_allclose(alone, all_at_once[rows], rtol=1e-12, atol=1e-12)


def test_missing_metric_keeps_its_statistics_and_looks_like_its_level():
    rs = RollingState(("p", "q"))
    state = rs.layout.empty(1)
    x = np.column_stack([np.full(50, 100.0), np.full(50, 7.0)])
    rs.run(state, x, np.arange(50) * 1000.0, np.zeros(50, dtype=np.int64))
    before = state.copy()
    f = rs.run(state, np.array([[np.nan, 8.0]]), np.array([50_000.0]), np.zeros(1, dtype=np.int64))
    b = rs.layout.blocks
    assert state[0, b["count"]][0] == before[0, b["count"]][0]  # p not counted
    assert state[0, b["ml"]][0] == before[0, b["ml"]][0]
    assert block(f, "value", 2)[0, 0] == pytest.approx(100.0)
    assert block(f, "z", 2)[0, 0] == 0.0
    assert state[0, b["count"]][1] == 51


def test_time_of_day_profile_knows_the_usual_level_per_hour():
    # pressure is 480 at night and 300 by day, every day; the long mean sits in between
    days, per_hour = 4, 60
    ts = np.arange(days * 24 * per_hour) * (HOUR / per_hour)
    hour = (ts // HOUR) % 24
    rng = np.random.default_rng(4)
    x = (np.where((hour >= 7) & (hour < 19), 300.0, 480.0) + rng.normal(0, 5, len(ts)))[:, None]
    rs = RollingState(("pressure",), StateConfig(long_halflife=5000))
    state = rs.layout.empty(1)
    rs.run(state, x, ts, np.zeros(len(ts), dtype=np.int64))
    night = days * 24 * HOUR + 3 * HOUR
    f = rs.run(state, np.array([[478.0]]), np.array([float(night)]), np.zeros(1, dtype=np.int64))
    assert abs(block(f, "z_tod", 1)[0, 0]) < 1.0  # usual for 03:00
    assert block(f, "base", 1)[0, 0] == pytest.approx(480, abs=3)
    f = rs.run(state, np.array([[300.0]]), np.array([float(night + 1000)]), np.zeros(1, dtype=np.int64))
    assert block(f, "z_tod", 1)[0, 0] < -10  # a day-time level at night is far from usual for 03:00 ...
    assert abs(block(f, "z", 1)[0, 0]) < 2  # ... while against the all-day mean it looks ordinary
    # z_both: unusual only if unusual both ways, signed like z_tod
    z, z_tod, z_both = block(f, "z", 1)[0, 0], block(f, "z_tod", 1)[0, 0], block(f, "z_both", 1)[0, 0]
    assert z_both == pytest.approx(-min(abs(z), abs(z_tod)))


def test_spread_and_rate_react_to_noise_and_jumps():
    rs = RollingState(("v",))
    state = rs.layout.empty(1)
    calm = np.full((100, 1), 5.0) + np.random.default_rng(5).normal(0, 0.01, (100, 1))
    f_calm = rs.run(state, calm, np.arange(100) * 1000.0, np.zeros(100, dtype=np.int64))
    noisy = 5.0 + np.random.default_rng(6).normal(0, 1.0, (20, 1))
    f_noisy = rs.run(state, noisy, (100 + np.arange(20)) * 1000.0, np.zeros(20, dtype=np.int64))
    assert block(f_noisy, "spread", 1)[-1, 0] > 20 * block(f_calm, "spread", 1)[-1, 0]
    assert block(f_noisy, "spread_rel", 1)[-1, 0] > 2 * block(f_calm, "spread_rel", 1)[-1, 0]
    f = rs.run(state, np.array([[50.0]]), np.array([130_000.0]), np.zeros(1, dtype=np.int64))
    assert block(f, "rate", 1)[0, 0] == pytest.approx((50.0 - noisy[-1, 0]) / 11.0)  # 11 s since the last reading


def test_pack_unpack_and_remap():
    rs = RollingState(("p", "q"))
    state = rs.layout.empty(1)
    rs.run(state, np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.0, 1000.0]), np.zeros(2, dtype=np.int64))
    metrics, vec = unpack(pack(("p", "q"), state[0]))
    assert metrics == ("p", "q")
    np.testing.assert_array_equal(vec, state[0])
    moved = remap(vec, ("p", "q"), ("q", "r"))
    lay_old, lay_new = Layout(2), Layout(2)
    assert moved[lay_new.blocks["ml"]][0] == vec[lay_old.blocks["ml"]][1]  # q kept its mean
    assert moved[lay_new.blocks["count"]][1] == 0  # r is new
    np.testing.assert_array_equal(
        moved[lay_new.blocks["tod_m"]].reshape(24, 2)[:, 0], vec[lay_old.blocks["tod_m"]].reshape(24, 2)[:, 1]
    )
    with pytest.raises(ValueError):
        unpack(b"garbage")


def test_occurrence_counts_earlier_readings_of_the_same_sensor():
    np.testing.assert_array_equal(occurrence(np.array([3, 1, 3, 3, 1, 0])), [0, 0, 1, 2, 1, 0])


def test_flatline_feature_grows_only_when_a_moving_value_stops_moving():
    rs = RollingState(("p", "status"), StateConfig(flat_min_run=8, flat_margin=3.0, flat_warmup=60))
    state = rs.layout.empty(1)
    rng = np.random.default_rng(0)
    n = 300
    x = np.column_stack([50 + rng.normal(0, 1, n), np.ones(n)])  # status never moves: never "stuck"
    x[200:260, 0] = x[199, 0]  # the pressure sensor freezes
    feats = rs.run(state, x, T0 + np.arange(n) * 1000.0, np.zeros(n, dtype=np.int64))
    flat = block(feats, "flat", 2)
    assert flat[:200, 0].max() < 1.0  # a noisy value never rests long
    assert flat[215:260, 0].min() >= 1.0  # 8 still readings and more: stuck
    assert flat[260:, 0].max() < 1.0  # moving again
    assert flat[:, 1].max() < 1.0  # a value that always rests is not stuck when it rests


def test_shift_feature_is_off_until_a_unit_is_calibrated_then_freezes_its_baseline():
    rs = RollingState(("flow",), StateConfig(shift_smooth_halflife=2.0, shift_halflife=20.0, shift_freeze=2.0))
    state = rs.layout.empty(1)
    n = 200
    x = np.full((n, 1), 32.0)
    ts, idx = T0 + np.arange(n) * 1000.0, np.zeros(n, dtype=np.int64)
    assert np.all(block(rs.run(state, x, ts, idx), "shift", 1) == 0)
    rs.shift_scale = np.array([0.5])
    y = np.full((n, 1), 27.0)  # the valve closes: flow drops by 10 units and stays down
    shift = block(rs.run(state, y, ts + n * 1000.0, idx), "shift", 1)[:, 0]
    assert shift[-1] == pytest.approx(-10.0, rel=0.01)  # the baseline did not follow the anomaly
    assert np.all(shift[10:] <= -2.0)


def test_old_states_without_the_new_blocks_are_padded():
    lay = Layout(2)
    old = lay.empty(1)[0][: lay.blocks["run"].start]
    old[lay.blocks["ml"]] = [1.0, 2.0]
    up = remap(old, ("a", "b"), ("a", "b"))
    assert len(up) == lay.width
    assert list(up[lay.blocks["ml"]]) == [1.0, 2.0]
    assert np.all(up[lay.blocks["sb"]] == 0) and np.all(up[lay.blocks["run"]] == 0)
