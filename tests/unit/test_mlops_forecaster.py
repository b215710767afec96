"""The forecaster's part of retrain: a candidate from the training part of a window, judged on the held-out
part through the serving pipeline, and against itself as production (the gate then finds nothing better)."""

from __future__ import annotations

import pytest

from services.forecaster.offline import synthetic
from services.forecaster.offline.retrain import PROFILE, ForecasterTrainer, labels_of
from services.forecaster.settings import ForecasterSettings
from shared.mlops.gate import decide
from shared.mlops.source import TooLittleData
from shared.mlops.truth import assemble

pytestmark = pytest.mark.timeout(600)


def test_a_candidate_is_fitted_judged_and_not_promoted_over_itself() -> None:
    history = synthetic.generate(days=1.5, zones={"water": 2, "energy": 1}, incident_rate_per_day=6.0, seed=5)
    truth = assemble([lab.to_dict() for lab in history.labels])
    assert len(labels_of(truth)) == len(history.labels)
    trainer = ForecasterTrainer(ForecasterSettings(), epochs=3)
    frame = history.frame
    split = history.start_ms + int((history.end_ms - history.start_ms) * 0.75)
    models = trainer.fit(frame[frame["ts"] < split], truth)
    metrics = trainer.evaluate(models, frame, truth, split)[PROFILE]
    assert metrics["n"] > 0
    for key in ("macro_f1", "log_loss", "calibration_error", "forecast_mae", "interval_coverage_error"):
        assert metrics[key] is not None and metrics[key] >= 0, key
    assert 0 <= metrics["macro_f1"] <= 1 and 0 <= metrics["interval_coverage_80"] <= 1
    same = {PROFILE: metrics}
    assert not decide(same, same, trainer.gate).promoted

    with pytest.raises(TooLittleData, match="widen --since"):
        trainer.fit(frame[frame["ts"] < history.start_ms + 3_600_000], truth)
