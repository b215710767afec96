"""The offline contract: `fit` and `score` on CSV files, as the issue's evaluation runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.detector.offline import DataError, fit_csv, read_stream, score_csv
from services.detector.offline.evaluation import rig
from services.detector.offline.evaluation.evaluate import confusion, evaluate, metrics

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.detector", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    rec = rig.generate(11)
    directory = tmp_path_factory.mktemp("rig")
    train, test, _ = rig.write(rec, directory)
    return rec, train, test, directory


@pytest.mark.parametrize("detectors", [None, ["zscore", "pca", "kmeans", "lof", "iforest", "flatline"]])
def test_cli_fit_and_score_follow_the_contract(recording, detectors):
    rec, train, test, directory = recording
    model_dir, out = directory / f"model-{bool(detectors)}", directory / f"out-{bool(detectors)}.csv"
    extra: list[str] = []
    if detectors:
        config = directory / "ensemble.json"
        config.write_text(json.dumps({"detectors": detectors}))
        extra = ["--config", str(config)]
    fitted = cli("fit", "--data", str(train), "--model-dir", str(model_dir), *extra)
    assert fitted.returncode == 0, fitted.stderr
    scored = cli("score", "--data", str(test), "--model-dir", str(model_dir), "--output", str(out))
    assert scored.returncode == 0, scored.stderr
    result = pd.read_csv(out)
    assert list(result.columns) == ["timestamp", "score", "anomaly"]
    assert len(result) == len(rec.test)
    assert result["timestamp"].tolist() == rec.test["timestamp"].tolist()  # input order, input stamps
    assert set(result["anomaly"].unique()) <= {0, 1}
    # the detector finds this recording's incidents without crying wolf
    m = metrics(confusion(rec.test["anomaly"].to_numpy(), result["anomaly"].to_numpy()))
    if detectors:
        assert m["f1"] > 0.7 and m["far"] < 0.15, m
    else:
        # The offline default finds every incident here; its false alarms on this recording (a
        # thermocouple warming faster in the test than in any training block) are the shift rule's
        # known weakness (docs/detector.md). Its accuracy is held by the next test, on held-out rigs.
        assert m["recall"] > 0.95, m
    # higher score means more anomalous
    assert (
        result.loc[rec.test["anomaly"] == 1, "score"].median() > result.loc[rec.test["anomaly"] == 0, "score"].median()
    )


def test_score_with_the_offline_default_starts_without_service_or_sklearn_imports(recording, tmp_path):
    """`detector score` is a one-stream tool: its start-up must not pay for scikit-learn (~2 CPU s), Faust,
    Kafka clients or TensorFlow when the model does not use them."""
    _, train, test, _ = recording
    model_dir = tmp_path / "model"
    assert cli("fit", "--data", str(train), "--model-dir", str(model_dir)).returncode == 0
    heavy = ("sklearn", "faust", "aiokafka", "tensorflow")
    probe = (
        "import sys; from services.detector import cli; "
        f"code = cli.main(['score', '--data', {str(test)!r}, '--model-dir', {str(model_dir)!r}, "
        f"'--output', {str(tmp_path / 'out.csv')!r}]); "
        f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "0 []", run.stdout
    assert len(pd.read_csv(tmp_path / "out.csv")) > 0


def test_offline_default_finds_rig_incidents_without_crying_wolf(tmp_path):
    # the first six of the held-out rig seeds of docs/detector.md, each fitted and scored through
    # fit_csv / score_csv as the CLI does: pooled F1 0.891 at 4.5 % false alarms when this was written
    recordings = [rig.generate(seed) for seed in range(200, 206)]
    result = evaluate(recordings, tmp_path, with_baselines=False)
    pooled = result["pooled"]["detector"]
    assert pooled["f1"] > 0.85 and pooled["far"] < 0.08, pooled
    assert min(r["f1"] for r in result["recordings"]) > 0.75, result["recordings"]


def test_scoring_is_causal_a_prefix_scores_the_same(recording, tmp_path):
    _rec, train, test, _directory = recording
    fit_csv(train, tmp_path / "m")
    full = score_csv(test, tmp_path / "m", tmp_path / "full.csv")
    prefix = tmp_path / "prefix.csv"
    pd.read_csv(test).iloc[:400].to_csv(prefix, index=False)
    part = score_csv(prefix, tmp_path / "m", tmp_path / "part.csv")
    pd.testing.assert_frame_equal(part, full.iloc[:400])


def test_other_time_column_semicolons_spaces_and_label_columns(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    t = pd.date_range("2021-01-01T00:00:00Z", periods=n, freq="1s")
    frame = pd.DataFrame(
        {
            "datetime": t.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "Volume Flow RateRMS": 32 + rng.normal(0, 0.3, n),
            "Pressure (bar)": 1.5 + rng.normal(0, 0.02, n),
            "anomaly": 0,
        }
    )
    data = tmp_path / "train.csv"
    frame.to_csv(data, sep=";", index=False)
    model = fit_csv(data, tmp_path / "m", time_column="datetime")
    assert model.metrics == ("Volume Flow RateRMS", "Pressure (bar)")
    test = frame.copy()
    test.loc[200:, "Pressure (bar)"] += 0.5
    test_path = tmp_path / "test.csv"
    test.to_csv(test_path, sep=";", index=False)
    out = score_csv(test_path, tmp_path / "m", tmp_path / "out.csv", time_column="datetime")
    assert out["anomaly"].iloc[210:].mean() > 0.9
    assert out["anomaly"].iloc[:200].mean() < 0.1


def test_bad_inputs_fail_with_a_reason(tmp_path, capsys):
    from services.detector import cli as detector_cli

    good = tmp_path / "good.csv"
    pd.DataFrame(
        {"timestamp": pd.date_range("2021-01-01", periods=100, freq="1s").astype(str), "a": range(100)}
    ).to_csv(good, index=False)
    with pytest.raises(DataError, match="no time column 'time'"):
        read_stream(good, "time")
    bad_time = tmp_path / "bad_time.csv"
    bad_time.write_text("timestamp,a\nyesterday,1\n")
    with pytest.raises(DataError, match="not ISO 8601"):
        read_stream(bad_time)
    code = detector_cli.main(["score", "--data", str(good), "--model-dir", str(tmp_path / "none"), "--output", "o"])
    assert code == 2 and "run `python -m services.detector fit` first" in capsys.readouterr().err
    fit_csv(good, tmp_path / "m")
    other = tmp_path / "other.csv"
    pd.DataFrame({"timestamp": ["2021-01-02T00:00:00"], "b": [1.0]}).to_csv(other, index=False)
    with pytest.raises(DataError, match="missing: a"):
        score_csv(other, tmp_path / "m", tmp_path / "o.csv")
    code = detector_cli.main(["fit", "--data", str(tmp_path / "nope.csv"), "--model-dir", str(tmp_path / "m2")])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_train_command_registers_and_promotes_one_model_per_profile(tmp_path, capsys):
    from services.detector import cli as detector_cli
    from services.detector.model import AnomalyModel
    from services.simulator import Network, SimConfig, Simulator
    from shared.registry import ModelRegistry

    network = {
        "sites": [
            {
                "id": "t",
                "zones": [
                    {"id": "t-plant", "utility": "water", "sensors": [{"asset": "pump", "count": 1}]},
                    {"id": "t-dma1", "utility": "water", "sensors": [{"asset": "pipe", "count": 2}]},
                ],
            }
        ]
    }
    sim = Simulator(Network.from_dict(network, seed=3), SimConfig(anomaly_fraction=0.05), seed=1)
    sim.history("2024-03-04T00:00:00Z", "2d", step="300s").to_parquet(tmp_path / "history.parquet")
    code = detector_cli.main(
        [
            "train",
            "--data",
            str(tmp_path / "history.parquet"),
            "--model-dir",
            str(tmp_path / "reg"),
            "--promote",
            "production",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    registry = ModelRegistry(tmp_path / "reg")
    for profile in ("pipe", "pump"):
        assert registry.aliases(f"detector-{profile}") == {"production": "v1"}
        model = AnomalyModel.load(registry.load(f"detector-{profile}", alias="production").path)
        assert model.trained and model.name == profile
    assert "detector-pipe v1" in out
    bad = detector_cli.main(
        [
            "train",
            "--data",
            str(tmp_path / "history.parquet"),
            "--model-dir",
            str(tmp_path / "r2"),
            "--profile",
            "nope",
        ]
    )
    assert bad == 1 and "no profile 'nope'" in capsys.readouterr().err
