"""Each detector on its own, then the calibrated ensemble model (fit, score, persistence, save/load)."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from sklearn.ensemble._iforest import _average_path_length

from services.detector import kernels
from services.detector.detectors import (
    BlockMaxDetector,
    IsolationForestDetector,
    KMeansDetector,
    LOFDetector,
    PCADetector,
    Scaler,
    ZScoreDetector,
    make_detector,
    oof_scale,
)
from services.detector.model import AnomalyModel, ModelConfig
from services.detector.state import StateConfig


def correlated(n: int, seed: int = 0) -> np.ndarray:
    """Three features on a line plus small noise: a plane that PCA can learn."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0, 1, n)
    return np.column_stack([t, 2 * t, -t]) + rng.normal(0, 0.05, (n, 3))


def test_zscore_detector_is_the_largest_absolute_z():
    det = ZScoreDetector(threshold=2.5)
    z = np.array([[0.1, -3.0, 1.0], [0.5, 0.2, -0.1]])
    np.testing.assert_allclose(det.score(z), [3.0, 0.5])
    assert det.threshold == 2.5


@pytest.mark.parametrize("name", ["iforest", "kmeans", "lof", "pca"])
def test_learned_detectors_score_outliers_above_normal_rows(name):
    train, normal = correlated(600, 1), correlated(200, 2)
    far = normal[:50] + np.array([4.0, -4.0, 4.0])  # off the plane and away from the data
    det = make_detector(name).fit(train)
    assert np.median(det.score(far)) > np.percentile(det.score(normal), 99)


def test_kmeans_threshold_is_the_chosen_percentile_of_training_distances():
    train = correlated(1000, 3)
    det = KMeansDetector(clusters=5, percentile=95).fit(train)
    assert np.mean(det.score(train) > det.threshold) == pytest.approx(0.05, abs=0.01)


def test_pca_separates_t2_inside_the_plane_from_q_off_it():
    det = PCADetector(variance=0.95).fit(correlated(800, 4))
    along = np.array([[5.0, 10.0, -5.0]])  # far along the learned direction: T² large, Q small
    across = np.array([[0.5, -0.5, 0.5]])  # close to the centre but off the plane: Q large
    t2_a, q_a = det.statistics(along)
    _t2_b, q_b = det.statistics(across)
    assert t2_a[0] > det.t2_limit and q_a[0] < det.q_limit
    assert q_b[0] > det.q_limit
    assert det.score(along)[0] > 1 and det.score(across)[0] > 1


def test_lof_and_iforest_are_novelty_scorers_fitted_on_normal_rows_only():
    train = correlated(500, 5)
    lof, forest = LOFDetector(neighbours=15).fit(train), IsolationForestDetector().fit(train)
    inside = correlated(100, 6)
    outside = inside + 3.0
    assert lof.score(outside).mean() > lof.score(inside).mean() * 1.5
    assert forest.score(outside).mean() > forest.score(inside).mean()


def test_scaler_floors_constant_features():
    x = np.column_stack([np.full(100, 5.0), np.arange(100.0)])
    scaler = Scaler().fit(x)
    assert np.all(np.isfinite(scaler.transform(x + 1.0)))
    assert scaler.scale[0] == pytest.approx(0.05)  # 1 % of the level


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("magic")


def stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pump-like normal operation: flow, pressure and current move together around an operating point."""
    rng = np.random.default_rng(seed)
    drive = 1 + 0.01 * np.cumsum(rng.normal(0, 0.05, n)) / np.sqrt(np.arange(1, n + 1))
    flow = 30 * drive + rng.normal(0, 0.3, n)
    pressure = 2.0 * drive**2 + rng.normal(0, 0.02, n)
    current = 1.5 * drive**3 + rng.normal(0, 0.03, n)
    return np.column_stack([flow, pressure, current]), np.arange(n) * 1000


def test_ensemble_model_calibrates_on_normal_data_and_flags_a_shift():
    x, ts = stream(500, 7)
    model = AnomalyModel(("flow", "pressure", "current"), ModelConfig()).fit(x, ts)
    assert model.trained and model.threshold > 0
    assert {d.name for d in model.detectors} == {"zscore", "pca", "kmeans", "lof", "iforest"}
    assert all(d.threshold > 0 for d in model.detectors)

    test, tts = stream(600, 8)
    tts = tts + ts[-1] + 1000
    test[300:450, 0] *= 0.8  # valve closing: flow down ...
    test[300:450, 1] *= 1.1  # ... pressure up
    state = model.initial_state.copy()
    idx = np.zeros(len(test), dtype=np.int64)
    scored = model.score(state, model.features(state, test, tts, idx), idx)
    normal = np.r_[0:290, 470:600]
    assert scored.anomaly[310:450].mean() > 0.9
    assert scored.anomaly[normal].mean() < 0.1
    # contributions name the metrics that moved
    top = scored.contributions[320:440].mean(axis=0)
    assert top[2] < max(top[0], top[1])


def test_model_round_trips_through_its_directory(tmp_path):
    x, ts = stream(400, 9)
    model = AnomalyModel(("flow", "pressure", "current"), ModelConfig(detectors=("zscore", "pca", "kmeans"))).fit(x, ts)
    model.save(tmp_path / "m")
    loaded = AnomalyModel.load(tmp_path / "m")
    test, tts = stream(100, 10)
    outs = []
    for m in (model, loaded):
        state = m.initial_state.copy()
        idx = np.zeros(len(test), dtype=np.int64)
        outs.append(m.score(state, m.features(state, test, tts + 10**9, idx), idx).score)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert (tmp_path / "m" / "meta.json").exists()
    with pytest.raises(FileNotFoundError):
        AnomalyModel.load(tmp_path / "nothing")


def test_hysteresis_keeps_an_episode_open_until_the_score_falls_below_the_off_level():
    model = AnomalyModel(
        ("v",), ModelConfig(statistical_halflife=0.01, off_ratio=0.5)
    )  # unfitted: the statistical smoothing
    model.threshold = 1.0
    state = model.layout.empty(1)
    raw = np.array([0.2, 1.2, 0.8, 0.6, 0.4, 0.9])
    _smoothed, flags = model._persist(state, raw, np.zeros(len(raw), dtype=np.int64))
    np.testing.assert_array_equal(flags, [False, True, True, True, False, False])


def test_too_little_training_data_is_refused():
    x, ts = stream(30, 11)
    with pytest.raises(ValueError, match="training rows"):
        AnomalyModel(("a", "b", "c")).fit(x, ts)


def test_isolation_forest_fast_scoring_equals_scikit_learn():
    det = IsolationForestDetector(seed=3).fit(correlated(700, 12))
    rows = correlated(300, 13) * 1.7
    np.testing.assert_allclose(det.score(rows), -det.model.score_samples(rows), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_learned_detectors_score_exactly_as_through_scikit_learns_checked_calls(rows):
    """The scoring paths that skip scikit-learn's input checks give the checked calls' results bit for bit."""
    train, x = correlated(700, 12), correlated(rows, 13) * 1.7
    forest = IsolationForestDetector(seed=3).fit(train)
    depths = np.zeros(rows)
    xs = np.ascontiguousarray(x, dtype=np.float32)
    m = forest.model
    for tree, dpl, apl in zip(m.estimators_, m._decision_path_lengths, m._average_path_length_per_tree, strict=True):
        leaves = tree.apply(xs, check_input=False)
        depths += dpl[leaves] + apl[leaves] - 1.0
    expected = 2.0 ** (-depths / (len(m.estimators_) * _average_path_length([m._max_samples])[0]))
    np.testing.assert_array_equal(forest.score(x), expected)
    np.testing.assert_array_equal(forest.score(x), expected)  # the cached denominator
    kmeans = KMeansDetector(clusters=4).fit(train)
    assert kmeans.model is not None
    for scale in (1e-9, 1.0, 1e6):  # distances computed as scikit-learn's, not merely close to them
        np.testing.assert_array_equal(kmeans.score(x * scale), kmeans.model.transform(x * scale).min(axis=1))


def test_isolation_forest_compiled_walk_equals_each_trees_apply_with_feature_subsets_and_missing_values(monkeypatch):
    """The one-loop walk of every tree gives what each fitted tree's ``apply`` gives, bit for bit."""
    train, x = correlated(700, 12) @ np.ones((3, 5)), correlated(200, 13) @ np.ones((3, 5)) * 1.7
    x[3, 2] = np.nan  # a batch with a missing value goes through scikit-learn's trees

    def tree_by_tree(det: IsolationForestDetector, rows: np.ndarray) -> np.ndarray:
        m, xs = det.model, np.ascontiguousarray(rows, dtype=np.float32)
        depths = np.zeros(len(xs))
        for tree, cols, dpl, apl in zip(
            m.estimators_,
            m.estimators_features_,
            m._decision_path_lengths,
            m._average_path_length_per_tree,
            strict=True,
        ):
            leaves = tree.apply(np.ascontiguousarray(xs[:, cols]), check_input=False)
            depths += dpl[leaves] + apl[leaves] - 1.0
        return 2.0 ** (-depths / (len(m.estimators_) * _average_path_length([m._max_samples])[0]))

    det = IsolationForestDetector(seed=5)
    det.model.set_params(max_features=0.6)  # each tree sees 3 of the 5 columns
    det.fit(train)
    assert any(len(cols) < 5 for cols in det.model.estimators_features_)
    np.testing.assert_array_equal(det.score(x[4:]), tree_by_tree(det, x[4:]))
    np.testing.assert_array_equal(det.score(x), tree_by_tree(det, x))
    walked: list[int] = []  # the compiled walk serves these batches, not the fallback
    monkeypatch.setattr(
        kernels, "forest_run", lambda xs, *rest, real=kernels.forest_run: walked.append(len(xs)) or real(xs, *rest)
    )
    for rows in (1, 7, 8, 9, 1001):  # eight rows at a time, and the rows left over one by one
        batch = np.tile(x[4:], (6, 1))[:rows]
        np.testing.assert_array_equal(det.score(batch), tree_by_tree(det, batch))
    assert walked == [1, 7, 8, 9, 1001]
    # values on the thresholds and on the float32 values either side of each: the walk compares a float32 row with
    # a float32 threshold where the trees compare it with their float64 one. Each node's row is a training row that
    # reaches it, so every split is tested where it decides.
    rows_near: list[np.ndarray] = []
    for tree, tree_cols in zip(det.model.estimators_, det.model.estimators_features_, strict=True):
        t, cols = tree.tree_, np.asarray(tree_cols)
        reach = tree.decision_path(np.ascontiguousarray(train[:, cols], dtype=np.float32)).tocsc()
        for node in np.flatnonzero(t.children_left != -1):
            base = train[reach[:, node].indices[0]].astype(np.float32)
            on = np.float32(t.threshold[node])
            for value in (on, np.nextafter(on, np.float32(np.inf)), np.nextafter(on, np.float32(-np.inf))):
                row = base.copy()
                row[cols[t.feature[node]]] = value
                rows_near.append(row)
    near = np.array(rows_near)
    np.testing.assert_array_equal(det.score(near), tree_by_tree(det, near))
    assert "_flat" not in pickle.loads(pickle.dumps(det)).__dict__
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(det)).score(x[4:]), tree_by_tree(det, x[4:]))
    det.fit(train[::-1] * 2.0)  # refitted in place: walked with its new trees
    np.testing.assert_array_equal(det.score(x[4:]), tree_by_tree(det, x[4:]))


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_lof_scores_as_scikit_learns_score_samples(rows):
    """The compiled neighbour search gives scikit-learn's LOF scores (same squared distances; sums in another order)."""
    train = np.column_stack([correlated(900, 12), correlated(900, 14)])
    x = np.column_stack([correlated(rows, 13), correlated(rows, 15)]) * 1.7
    x[0] = train[5]  # a query on a reference point: distance 0
    det = LOFDetector().fit(train)
    assert det.model is not None
    expected = -det.model.score_samples(x)
    np.testing.assert_allclose(det.score(x), expected, rtol=1e-12, atol=0)
    restored = pickle.loads(pickle.dumps(det))  # the kernel's copy of the reference set is rebuilt, not saved
    assert "_ref" not in pickle.loads(pickle.dumps(det)).__dict__
    np.testing.assert_allclose(restored.score(x), expected, rtol=1e-12, atol=0)
    det.fit(correlated(400, 16) @ np.ones((3, 6)))  # refitted: scored against the new reference set
    np.testing.assert_allclose(det.score(x), -det.model.score_samples(x), rtol=1e-12, atol=0)


def test_oof_scale_gives_a_drifting_column_a_larger_unit():
    rng = np.random.default_rng(3)
    n = 400
    steady = rng.normal(0, 1, n)
    drifting = rng.normal(0, 1, n) + np.linspace(0, 6, n)
    scale = oof_scale(np.column_stack([steady, drifting]), folds=5, quantile=0.99)
    assert scale[1] > 2 * scale[0]
    assert 1.0 < scale[0] < 5.0  # about the spread times the held-out deviation of noise


def test_block_max_detector_reads_one_block():
    det = BlockMaxDetector("flatline", block=1, metrics=2, threshold=1.0)
    feats = np.array([[9.0, 9.0, 0.5, -2.0, 9.0, 9.0]])
    np.testing.assert_allclose(det.score(feats), [2.0])


def test_statistical_model_flags_a_stuck_sensor_and_says_so():
    from services.detector.reasons import explain

    model = AnomalyModel(("pressure",))
    rng = np.random.default_rng(1)
    x = (480 + rng.normal(0, 4, 400))[:, None]
    x[300:] = x[299]  # stuck at its last value: perfectly ordinary level, no deviation at all
    state = model.layout.empty(1)
    idx = np.zeros(len(x), dtype=np.int64)
    feats = model.features(state, x, 1_700_000_000_000 + np.arange(len(x)) * 60_000.0, idx)
    scored = model.score(state, feats, idx)
    assert not scored.anomaly[:300].any()
    assert scored.anomaly[320:].all()
    reason, _ = explain(model.metrics, feats[350], scored.contributions[350], {"pressure": "kPa"}, 0)
    assert reason.startswith("pressure has stayed at ") and "stuck" in reason


def test_offline_model_holds_a_level_shift_that_the_rolling_baseline_would_learn():
    rng = np.random.default_rng(2)
    n_train, n_test = 400, 900
    n = n_train + n_test
    t = np.arange(n)
    flow = 32 + rng.normal(0, 0.4, n)
    temp = 70 + 0.004 * t + rng.normal(0, 0.3, n)  # warms slowly all along: normal drift
    flow[700:1100] -= 3.0  # a valve closes for 400 readings
    x = np.column_stack([flow, temp])
    ts = 1_700_000_000_000 + t * 1000
    truth = np.zeros(n, dtype=bool)
    truth[700:1100] = True
    model = AnomalyModel(("flow", "temp"), ModelConfig(detectors=("flatline", "shift"))).fit(x[:n_train], ts[:n_train])
    state = model.initial_state.copy()
    idx = np.zeros(n_test, dtype=np.int64)
    flags = model.score(state, model.features(state, x[n_train:], ts[n_train:], idx), idx).anomaly
    hit = truth[n_train:]
    assert flags[hit].mean() > 0.9  # held for the whole closure
    assert flags[~hit].mean() < 0.05  # the warming motor is not an anomaly


def test_reconstruction_detector_flags_a_broken_relationship_within_each_range():
    rng = np.random.default_rng(4)
    n = 2000
    level = rng.uniform(1, 5, n)  # a tank level
    inflow = 20 * level + rng.normal(0, 0.5, n)  # the pump flow that goes with it
    setpoint = np.full(n, 2.98)  # a channel at a fixed set point: its floor keeps it sane
    train = np.column_stack([level, inflow, setpoint])
    test = train[:200].copy()
    test[100:, 1] = 20 * (6 - test[100:, 0])  # the flow no longer matches the level, yet stays in its range
    test[:100, 2] = 2.99  # recorded at a coarser resolution later: not an anomaly
    det = make_detector("recon", block=0, metrics=3).fit(train)
    s = det.score(test)
    assert np.quantile(s[100:], 0.1) > 20 * np.quantile(det.score(train), 0.99)
    # 0.01 on a channel whose floor is 2 % of 2.98: (0.01 / 0.0596)^2 = 0.03, not (0.01 / 1e-3)^2
    assert s[:100].max() < 0.05


@pytest.mark.parametrize("trend_r2", [0.0, 0.8])
def test_a_frozen_shift_baseline_keeps_following_the_training_drift(trend_r2):
    rng = np.random.default_rng(5)
    n_train, n_test = 400, 1200
    n = n_train + n_test
    t = np.arange(n)
    flow = 32 + rng.normal(0, 0.4, n)
    temp = 70 + 0.01 * t + rng.normal(0, 0.1, n)  # a motor warming all along: normal drift
    temp[500:1200] += 20.0  # a long overheat freezes the temperature's baseline
    x = np.column_stack([flow, temp])
    ts = 1_700_000_000_000 + t * 1000
    config = ModelConfig(detectors=("flatline", "shift"), state=StateConfig(shift_trend_r2=trend_r2))
    model = AnomalyModel(("flow", "temp"), config).fit(x[:n_train], ts[:n_train])
    state = model.initial_state.copy()
    idx = np.zeros(n_test, dtype=np.int64)
    flags = model.score(state, model.features(state, x[n_train:], ts[n_train:], idx), idx).anomaly
    assert flags[110:160].mean() > 0.9  # the overheat is flagged either way
    after = flags[900:].mean()  # long after it, the motor is only warming as it always did
    if trend_r2:
        assert after < 0.05
    else:
        assert after > 0.5  # the baseline stayed where the overheat froze it (why the trend exists)


def test_envelope_detector_flags_a_level_its_pump_never_ran_at():
    rng = np.random.default_rng(6)
    n = 3000
    pump = (rng.uniform(size=n) < 0.6).astype(float)
    # the controller stops the pump before the tank passes 4.5 m; resting, the tank is between 3 and 6 m
    level = np.where(pump > 0, rng.uniform(1.0, 4.5, n), rng.uniform(3.0, 6.0, n))
    pressure = np.full(n, 2.98) + rng.normal(0, 0.002, n)  # a set point, recorded finer in training
    train = np.column_stack([level, pump, pressure])
    det = make_detector("envelope", block=0, metrics=3, margin=0.15).fit(train)
    assert list(det.states) == [1]  # the pump status is the two-state channel
    assert det.score(train).max() == 0.0  # training stays inside its own envelopes
    test = np.array(
        [
            [5.5, 0.0, 2.98],  # high, pump off: ordinary
            [5.5, 1.0, 2.98],  # the same level with the pump still on: the controller failed
            [3.0, 1.0, 2.99],  # a coarser recording of the set point is not an excursion
            [7.0, 0.0, 2.98],  # beyond any level seen
        ]
    )
    ratio = det.score(test) / det.threshold
    assert ratio[0] < 1.0 and ratio[2] < 1.0
    assert ratio[1] > 1.0 and ratio[3] > 1.0


def test_envelope_rule_runs_offline_only_with_enough_training_rows():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (300, 3))
    ts = 1_700_000_000_000 + np.arange(300) * 1000
    config = ModelConfig(detectors=("envelope", "flatline"), recon_rows_per_metric=50)
    few = AnomalyModel(("a", "b", "c"), ModelConfig(detectors=("envelope", "flatline"))).fit(x, ts)
    assert [r.name for r in few.rules] == ["flatline"]  # 300 rows do not show 3 channels' normal range
    enough = AnomalyModel(("a", "b", "c"), config).fit(x, ts)
    assert sorted(r.name for r in enough.rules) == ["envelope", "flatline"]
    state = enough.initial_state.copy()
    test = np.array([[0.0, 0.0, 0.0], [0.0, 9.0, 0.0]] * 5)
    idx = np.zeros(len(test), dtype=np.int64)
    scored = enough.score(state, enough.features(state, test, ts[:10] + 400_000, idx), idx)
    assert scored.members["envelope"][1] > 1.0 and scored.members["envelope"][0] == 0.0
    assert scored.anomaly[1]  # a range never seen flags at once, not after the score's smoothing
    slow = AnomalyModel(("a", "b", "c"), replace(config, immediate_rules=())).fit(x, ts)
    state = slow.initial_state.copy()
    smoothed = slow.score(state, slow.features(state, test, ts[:10] + 400_000, idx), idx)
    assert smoothed.score[1] < scored.score[1]
