"""The detector's held-out metrics from flags, the statistical baseline it is judged against, and the
registry's rollback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.detector.offline.retrain import DetectorTrainer, flag_metrics
from shared.mlops.truth import Interval, Truth
from shared.registry import ModelRegistry, RegistryError

MIN = 60_000


def _frame(sensors: list[str], minutes: int) -> pd.DataFrame:
    rows = [(s, t * MIN, "z1") for s in sensors for t in range(minutes)]
    return pd.DataFrame(rows, columns=["sensor_id", "ts", "zone"])


def test_flag_metrics_count_hits_false_alarm_episodes_incidents_delay_and_verdicts() -> None:
    df = _frame(["a", "b"], 120)  # 2 sensors x 2 h; judged from minute 60 on
    ts = df["ts"].to_numpy()
    truth = Truth(
        incidents=[
            Interval(70 * MIN, 80 * MIN, "z1", ("a",)),  # flagged from minute 73
            Interval(90 * MIN, 95 * MIN, "z1", ("b",)),  # missed
            Interval(10 * MIN, 20 * MIN, "z1", ("a",)),  # before the split: not judged
            Interval(100 * MIN, 110 * MIN, "z1", ("a",), source="verdict"),  # confirmed by an operator, flagged
        ],
        false_alarms=[Interval(60 * MIN, 65 * MIN, "z1", ("b",), source="verdict")],  # flagged: disagrees
    )
    a, b = (df["sensor_id"] == "a").to_numpy(), (df["sensor_id"] == "b").to_numpy()
    flags = np.zeros(len(df), dtype=bool)
    flags |= a & (ts >= 73 * MIN) & (ts < 80 * MIN)  # 7 true
    flags |= a & (ts >= 100 * MIN) & (ts < 102 * MIN)  # 2 true
    flags |= b & (ts >= 61 * MIN) & (ts < 63 * MIN)  # a false alarm episode of 2 readings
    flags |= b & (ts >= 115 * MIN) & (ts < 116 * MIN)  # another
    flags |= a & (ts >= 15 * MIN) & (ts < 30 * MIN)  # before the split: ignored
    m = flag_metrics(df, flags, truth, 60 * MIN)
    positives = 10 + 5 + 10  # readings inside the judged incidents
    assert m["precision"] == round(9 / 12, 4)
    assert m["recall"] == round(9 / positives, 4)
    p, r = 9 / 12, 9 / positives
    assert m["f1"] == round(2 * p * r / (p + r), 4)
    sensor_days = 2 * 59 * MIN / 86_400_000
    assert m["false_alarms_per_sensor_day"] == round(2 / sensor_days, 4)
    assert m["incidents_detected"] == round(2 / 3, 4) and m["incidents"] == 3
    assert m["detection_delay_s"] == 90.0  # median of 180 s and 0 s
    assert m["verdict_agreement"] == 0.5 and m["verdicts"] == 2
    assert m["rows"] == 120


def test_without_ground_truth_only_false_alarms_are_measured() -> None:
    df = _frame(["a"], 100)
    m = flag_metrics(df, np.zeros(len(df), dtype=bool), Truth(), 50 * MIN)
    assert m["false_alarms_per_sensor_day"] == 0.0
    assert m["precision"] is m["recall"] is m["f1"] is m["incidents_detected"] is m["verdict_agreement"] is None


def test_production_without_a_promoted_model_is_the_statistical_detector(tmp_path) -> None:
    trainer = DetectorTrainer()
    models, versions = trainer.production(ModelRegistry(tmp_path))
    assert set(versions.values()) == {"statistical"} and set(models) == set(trainer.profiles.by_name)


def test_rollback_returns_the_alias_to_the_version_before_each_promotion(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    for i in range(3):
        with reg.create("detector-pump") as d:
            (d / "model.bin").write_bytes(bytes([i]))
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("detector-pump")
    for v in ("v1", "v2", "v3"):
        reg.promote("detector-pump", v)
    event = reg.rollback("detector-pump")
    assert (event.version, event.action) == ("v2", "rolled_back")
    assert reg.aliases("detector-pump")["production"] == "v2"
    assert reg.rollback("detector-pump").version == "v1"
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("detector-pump")
    reg.promote("detector-pump", "v3")
    assert reg.rollback("detector-pump").version == "v1"
