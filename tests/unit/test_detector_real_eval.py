"""The published protocols' arithmetic (SKAB pooled rates, BATADAL's S) and the SKAB split, on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.offline.evaluation.real import _split, batadal_score, episodes, rates


def test_rates_follow_the_skab_definitions():
    r = rates({"tp": 30, "fp": 10, "fn": 10, "tn": 50})
    assert r["f1"] == pytest.approx(30 / (30 + 10), abs=1e-4)  # TP / (TP + (FP + FN)/2)
    assert r["far"] == pytest.approx(10 / 60, abs=1e-4)
    assert r["mar"] == pytest.approx(10 / 40, abs=1e-4)


def test_batadal_score_rewards_early_detection_and_correct_classification():
    truth = np.zeros(100, dtype=bool)
    truth[10:20] = True  # attack 1: 10 hours
    truth[50:70] = True  # attack 2: 20 hours
    assert episodes(truth) == [(10, 20), (50, 70)]
    pred = np.zeros(100, dtype=bool)
    pred[12:20] = True  # found after 2 of 10 hours
    pred[90:95] = True  # 5 false alarms; attack 2 never found
    s = batadal_score(truth, pred)
    s_ttd = 1 - (0.2 + 1.0) / 2
    tpr, tnr = 8 / 30, 65 / 70
    assert s["s_ttd"] == pytest.approx(s_ttd, abs=1e-4)
    assert s["s_clf"] == pytest.approx((tpr + tnr) / 2, abs=1e-4)
    assert s["s"] == pytest.approx(0.5 * s_ttd + 0.5 * (tpr + tnr) / 2, abs=1e-4)
    assert (s["attacks"], s["detected"]) == (2, 1)
    perfect = batadal_score(truth, truth)
    assert perfect["s"] == 1.0


def test_skab_split_keeps_the_header_and_the_first_rows_for_training(tmp_path):
    src = tmp_path / "valve1" / "3.csv"
    src.parent.mkdir()
    src.write_text("datetime;a;anomaly\n" + "".join(f"2020-01-01 00:00:{i:02d};{i};0\n" for i in range(10)))
    train, test = _split(src, tmp_path, 4)
    assert train.read_text().splitlines() == ["datetime;a;anomaly"] + [f"2020-01-01 00:00:0{i};{i};0" for i in range(4)]
    assert test.read_text().splitlines()[0] == "datetime;a;anomaly"
    assert len(test.read_text().splitlines()) == 1 + 6
