"""Forecaster models: training beats naive baselines, saved models serve what was evaluated, batching does not matter.

One small model is trained for the whole module (seconds) on the built-in synthetic history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from services.forecaster.offline import synthetic
from services.forecaster.offline.dataset import replay
from services.forecaster.offline.history import History
from services.forecaster.partials import fold
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.settings import ForecasterSettings
from services.forecaster.zonestate import ZoneState

SETTINGS = ForecasterSettings()


@pytest.fixture(scope="module")
def history() -> History:
    return synthetic.generate(days=3.5, zones={"water": 3, "energy": 1, "gas": 1}, incident_rate_per_day=4.0, seed=11)


@pytest.fixture(scope="module")
def trained(history: History, tmp_path_factory: pytest.TempPathFactory):
    from services.forecaster.offline.training import train

    model_dir = tmp_path_factory.mktemp("models")
    version, report = train(history, SETTINGS, model_dir, epochs=30, seed=3)
    return model_dir, version, report


def test_training_beats_the_naive_baselines_on_held_out_data(trained) -> None:
    _dir, _version, report = trained
    risk, prior = report["risk"]["model"], report["risk"]["class_prior"]
    assert report["data"]["rows_test"] > 1000
    assert risk["accuracy"] > prior["accuracy"]
    assert risk["macro_f1"] > prior["macro_f1"] + 0.2
    assert risk["log_loss"] < prior["log_loss"]
    assert risk["incident"]["auc"] > 0.65 > prior["incident"]["auc"]  # a constant prior ranks nothing: 0.5
    fc = report["forecast"]["clean"]
    assert fc["n_seasonal"] > 500  # the test split has a day of history behind it
    assert fc["mae"] < fc["mae_last_value"]
    assert fc["mae_on_seasonal_rows"] < fc["mae_seasonal_naive"]
    assert 0.6 <= fc["interval_coverage_80"] <= 0.97


def test_the_registered_model_serves_exactly_what_was_trained(trained, history: History) -> None:
    from services.forecaster.offline.training import load_predictor

    model_dir, version, _report = trained
    predictor, mv = load_predictor(model_dir, SETTINGS.model_name, version=version.version)
    assert mv.metadata["risk_features"] == predictor.config.risk_feature_names
    assert mv.metadata["metrics"]["accuracy"] == _report["risk"]["model"]["accuracy"]
    rows, _, _ = replay(
        history.time_slice(history.start_ms, history.start_ms + 8 * 3_600_000), predictor.config, SETTINGS
    )
    x = np.stack(rows.risk_x[-300:])
    probs, contrib = predictor.risk(x)
    # the compiled function equals the plain Keras call with the saved calibration
    logits = np.asarray(predictor.risk_model(x, training=False)) + mv.metadata["logit_bias"]
    z = logits / mv.metadata["temperature"]
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert contrib.shape == x.shape
    q = predictor.forecast(np.stack(rows.fc_x[-300:]))
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])  # quantiles never cross


def _serve(predictor, history: History, batch: int, partitions: int) -> dict[tuple[str, int], dict]:
    """Replay readings the way the service sees them: batches of ``batch`` from ``partitions`` source partitions."""
    processor = ZoneProcessor(predictor.config, SETTINGS, predictor)
    states: dict[str, ZoneState] = {}
    marks: dict[str, int] = {}
    out = {}
    readings = list(history.readings())
    for start in range(0, len(readings), batch):
        items = [
            (r, hash(r["sensor_id"]) % partitions, start + i) for i, r in enumerate(readings[start : start + batch])
        ]
        folded = fold(items, predictor.config.step_ms)
        # a round trip through the wire format, as between the two stages
        partials = [orjson.loads(orjson.dumps(p)) for p in folded.partials.values()]
        for p, ts in folded.watermarks.items():
            marks[p] = max(ts, marks.get(p, -1))
        for risk in processor.process(states, partials, dict(marks)):
            out[(risk.zone, risk.ts)] = risk.to_dict()
    return out


def test_serving_gives_the_same_outputs_whatever_the_batching(trained, history: History) -> None:
    from services.forecaster.offline.training import load_predictor

    model_dir, version, _ = trained
    predictor, _mv = load_predictor(model_dir, SETTINGS.model_name, version=version.version)
    part = history.time_slice(history.start_ms, history.start_ms + 10 * 3_600_000)
    offline = _serve(predictor, part, batch=2000, partitions=1)
    served = _serve(predictor, part, batch=237, partitions=3)
    common = offline.keys() & served.keys()
    assert len(common) > 0.95 * len(offline) > 1000
    for key in common:
        a, b = offline[key], served[key]
        assert a["incident_type"] == b["incident_type"], key
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
        for metric, fa in a["forecast"].items():
            for k, v in fa.items():
                assert b["forecast"][metric][k] == pytest.approx(v, rel=1e-4, abs=1e-4), (key, metric, k)
        assert a["loss"]["volume"] == pytest.approx(b["loss"]["volume"], rel=1e-4, abs=1e-6)


def test_evaluate_replays_through_serving_and_writes_report_and_plots(
    trained, history: History, tmp_path: Path
) -> None:
    from services.forecaster.offline.training import evaluate

    model_dir, version, train_report = trained
    report = evaluate(history, SETTINGS, model_dir, tmp_path, version=version.version)
    saved = orjson.loads((tmp_path / "evaluation.json").read_bytes())
    assert saved["model"] == {"name": "forecaster", "version": version.version}
    for name in ("calibration.png", "confusion.png", "f1_per_class.png", "forecast.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # the same test split, scored from the served records: risk features do not depend on the path taken
    assert report["data"]["from_ms"] == train_report["data"]["test_start_ms"]
    assert report["risk"]["model"]["n"] == train_report["risk"]["model"]["n"]
    assert report["risk"]["model"]["accuracy"] == pytest.approx(train_report["risk"]["model"]["accuracy"], abs=0.01)
    per_class = report["risk"]["model"]["per_class"]
    assert set(per_class) >= {"none", "leak", "pump_fault"} and all(0 <= m["f1"] <= 1 for m in per_class.values())
    assert 0 <= report["risk"]["model"]["calibration"]["ece"] <= 1
    fc = report["forecast"]["clean"]
    assert fc["mae"] < fc["mae_last_value"]


def test_cli_evaluate_without_a_model_says_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from services.forecaster.cli import evaluate_cmd

    code = evaluate_cmd(["--synthetic", "0.3", "--model-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "no versions" in capsys.readouterr().err


def test_cli_train_registers_a_version_the_workers_can_load(tmp_path: Path) -> None:
    # make demo trains its first model this way: a report written into the version after it was sealed made
    # every load fail the sha256 check ("files differ … train-report.json"), and the demo forecaster never got ready
    from services.forecaster.cli import train_cmd
    from services.forecaster.offline.training import load_predictor

    models, reports = tmp_path / "models", tmp_path / "reports"
    argv = ["--synthetic", "1.0", "--epochs", "1", "--model-dir", str(models), "--promote", "production"]
    assert train_cmd([*argv, "--report-dir", str(reports)]) == 0
    predictor = load_predictor(models, SETTINGS.model_name, alias="production")
    assert predictor is not None
    sealed = orjson.loads(next(models.rglob("train-report.json")).read_bytes())
    assert sealed["risk"] == orjson.loads((reports / "train-report.json").read_bytes())["risk"]
