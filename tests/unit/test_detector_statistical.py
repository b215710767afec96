"""The statistical mode (a profile with no trained model): its warm-up and its smoothing, and that a fit leaves them."""

from __future__ import annotations

import numpy as np

from services.detector.model import AnomalyModel, ModelConfig


def noisy(n: int, seed: int = 0, interval_ms: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([50 + rng.normal(0, 1, n), 300 + rng.normal(0, 5, n)])
    return x, np.arange(n, dtype=np.int64) * interval_ms


def score_stream(model: AnomalyModel, x: np.ndarray, ts: np.ndarray) -> np.ndarray:
    state = model.initial_state.copy()
    idx = np.zeros(len(x), dtype=np.int64)
    return model.score(state, model.features(state, x, ts, idx), idx).anomaly


def test_no_flag_until_a_metric_has_seen_the_statistical_warmup():
    x, ts = noisy(200)
    x[[20, 40, 58]] = [500.0, 3000.0]  # far out while the baseline is young: a few readings say nothing yet
    x[150:160] = [500.0, 3000.0]  # far out once it is warm
    model = AnomalyModel(("flow", "pressure"), ModelConfig(statistical_warmup=60))
    flags = score_stream(model, x, ts)
    assert not flags[:60].any()
    assert flags[150:160].any()
    # the warm-up of the features alone (10 readings) would have flagged the early ones
    early = score_stream(AnomalyModel(("flow", "pressure"), ModelConfig(statistical_warmup=0)), x, ts)
    assert early[:60].any()


def test_a_lone_reading_does_not_flag_but_a_lasting_deviation_does():
    x, ts = noisy(400, seed=1)
    x[200, 0] = 55.0  # one reading 5 sigma out
    x[300:330, 0] = 55.0  # thirty of them
    flags = score_stream(AnomalyModel(("flow", "pressure"), ModelConfig(statistical_halflife=8.0)), x, ts)
    assert not flags[195:210].any()
    assert flags[300:330].any()
    # with the fitted models' smoothing of two readings the lone one is already an alarm
    quick = score_stream(AnomalyModel(("flow", "pressure"), ModelConfig(statistical_halflife=2.0)), x, ts)
    assert quick[195:210].any()


def test_a_fitted_model_scores_the_same_whatever_the_statistical_settings():
    """The statistical mode's warm-up and smoothing never reach a fitted model (offline and trained streaming)."""
    x, ts = noisy(600, seed=2)
    test, tts = noisy(200, seed=3)
    test[100:110, 1] += 40.0
    scores = []
    for warmup, halflife in ((60, 8.0), (0, 2.0)):
        config = ModelConfig(detectors=("zscore", "pca"), statistical_warmup=warmup, statistical_halflife=halflife)
        model = AnomalyModel(("flow", "pressure"), config).fit(x, ts)
        state = model.initial_state.copy()
        idx = np.zeros(len(test), dtype=np.int64)
        scores.append(model.score(state, model.features(state, test, tts + ts[-1] + 10_000, idx), idx).score)
    np.testing.assert_array_equal(scores[0], scores[1])
