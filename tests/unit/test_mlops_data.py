"""Assembling training data: the window, readings into a long frame, ground truth from labels, verdicts and
reports, drift against a training reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.mlops import drift
from shared.mlops.flow import drifted_in_workers, skip_reason
from shared.mlops.frame import readings_frame
from shared.mlops.truth import REPORT_LOOKBACK_MS, VERDICT_LOOKBACK_MS, assemble
from shared.mlops.window import Window

NOW = 1_800_000_000_000
H = 3_600_000


def test_window_parses_durations_and_times_and_splits_the_data_it_holds() -> None:
    w = Window.parse("7d", None, 0.25, now_ms=NOW)
    assert (w.since_ms, w.until_ms) == (NOW - 7 * 24 * H, NOW)
    # only 4 h of data in a week-long window: the held-out part is the last hour of the data
    assert w.split_ms(NOW - 4 * H, NOW) == NOW - H
    w = Window.parse("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")
    assert w.until_ms - w.since_ms == 24 * H
    with pytest.raises(ValueError, match="not before"):
        Window.parse("2026-12-03T00:00:00Z", "2026-12-02T00:00:00Z")
    # a bare number is epoch ms for --since as for --until (not seconds back)
    assert Window.parse(str(NOW - H), str(NOW)).since_ms == NOW - H
    with pytest.raises(ValueError):
        Window.parse("soon", None)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Window.parse("1h", None, 1.0)


def test_readings_become_a_long_frame_without_duplicates_or_unusable_records() -> None:
    readings = [
        {"sensor_id": "b", "ts": 2, "zone": "z", "asset": "pipe", "values": {"pressure": 3.0}},
        {"sensor_id": "a", "ts": 1, "zone": "z", "values": {"flow": 1.0, "pressure": 2.0, "ok": True}},
        {"sensor_id": "a", "ts": 1, "zone": "z", "values": {"flow": 1.5, "pressure": 2.0}},  # redelivered
        {"sensor_id": "c", "values": {"flow": 1.0}},  # no ts
        ["not", "a", "reading"],
    ]
    frame, bad = readings_frame(readings)
    assert bad == 2
    assert list(frame["sensor_id"]) == ["a", "b"]
    assert frame.loc[0, "flow"] == 1.5 and np.isnan(frame.loc[1, "flow"])
    assert "ok" not in frame.columns  # booleans are not metrics
    assert frame.loc[1, "asset"] == "pipe" and frame.loc[0, "asset"] == ""


def test_truth_from_labels_verdicts_joined_with_their_alerts_and_confirmed_reports() -> None:
    labels = [
        {
            "incident_id": "i1",
            "type": "leak",
            "start_ms": 100,
            "end_ms": 200,
            "site": "s",
            "zone": "z1",
            "utility": "water",
            "sensors": ["p1"],
        },
        {"incident_id": "bad"},
    ]
    alerts = [
        {"fingerprint": "f1", "status": "firing", "labels": {}, "starts_at": 1000, "ends_at": 0},
        {"fingerprint": "f1", "status": "resolved", "labels": {}, "starts_at": 1000, "ends_at": 1500},
    ]
    feedback = [
        {"fingerprint": "f1", "verdict": "false_positive", "ts": 1600, "labels": {"sensor": "p2", "zone": "z1"}},
        # the operator changed their mind: the later verdict counts
        {"fingerprint": "f1", "verdict": "true_positive", "ts": 1700, "labels": {"sensor": "p2", "zone": "z1"}},
        {"fingerprint": "f2", "verdict": "false_positive", "ts": 50_000_000, "labels": {"zone": "z2"}},
        {"fingerprint": "f3", "verdict": "maybe", "ts": 1, "labels": {"zone": "z2"}},
    ]
    reports = [
        {"id": "r1", "ts": 5 * H, "zone": "z3", "confirmed": True},
        {"id": "r2", "ts": 5 * H, "zone": "z3"},  # not confirmed: not truth
    ]
    truth = assemble(labels, feedback, alerts, reports)
    assert truth.counts == {"labels": 1, "verdicts": 2, "reports": 1}
    assert truth.rejected == {"labels": 1, "verdicts": 1, "reports": 0}
    assert truth.sources == ["labels", "reports", "verdicts"]
    by_source = {i.source: i for i in truth.incidents}
    assert (by_source["verdict"].start_ms, by_source["verdict"].end_ms, by_source["verdict"].sensors) == (
        1000,
        1500,
        ("p2",),
    )
    assert by_source["report"].zone == "z3" and by_source["report"].sensors == ()
    (fa,) = truth.false_alarms  # an alert not on the topic: the lookback before the verdict
    assert (fa.start_ms, fa.end_ms, fa.zone) == (50_000_000 - VERDICT_LOOKBACK_MS, 50_000_000, "z2")
    assert [real for _i, real in truth.verdicts] == [True, False]

    frame = pd.DataFrame(
        {
            "sensor_id": ["p1", "p1", "p9", "p2", "x", "x"],
            "zone": ["z1", "z1", "z1", "z1", "z3", "z3"],
            "ts": [150, 250, 150, 1200, 5 * H - 10, 5 * H + 10],
        }
    )
    # a labelled incident covers its sensors only; a report covers its zone before the report
    assert truth.anomalous(frame).tolist() == [True, False, False, True, True, False]
    assert len(truth.within(0, 1000).incidents) == 1


def test_a_public_report_confirmed_in_the_console_is_truth_for_its_zone_or_its_whole_site() -> None:
    reports = [
        {"id": "r1", "ts": 5 * H, "site": "oldtown", "zone": "", "text": "water in the street"},
        {"id": "r2", "ts": 6 * H, "site": "oldtown", "zone": "z2", "text": "", "confirmed": True},
    ]
    triage = [  # what the console sends on feedback when an operator confirms a report
        {
            "fingerprint": f"report-{rid}",
            "verdict": "true_positive",
            "ts": 7 * H,
            "labels": {"alertname": "PublicLeakReport", "site": "oldtown", "report_id": rid},
        }
        for rid in ("r1", "r2", "r-unknown")
    ]
    truth = assemble(feedback=triage, reports=reports)
    assert truth.counts == {"labels": 0, "verdicts": 0, "reports": 2}  # r2 confirmed twice counts once
    assert truth.rejected == {"labels": 0, "verdicts": 0, "reports": 1}  # a report not on the topic
    by_id = {i.ident: i for i in truth.incidents}
    assert (by_id["r1"].zone, by_id["r1"].site, by_id["r1"].end_ms) == ("", "oldtown", 5 * H)
    assert by_id["r1"].start_ms == 5 * H - REPORT_LOOKBACK_MS and by_id["r2"].zone == "z2"
    frame = pd.DataFrame(
        {
            "sensor_id": ["a", "b", "c", "d"],
            "site": ["oldtown", "oldtown", "riverside", "oldtown"],
            "zone": ["z1", "z2", "z9", "z1"],
            "ts": [5 * H - 60_000, 5 * H - 60_000, 5 * H - 60_000, 5 * H + 60_000],
        }
    )
    # a site-wide report covers every zone of its site before the report, no other site, nothing after
    assert truth.anomalous(frame).tolist() == [True, True, False, False]


def test_psi_is_small_on_the_same_distribution_and_large_after_a_shift() -> None:
    rng = np.random.default_rng(1)
    ref = drift.reference(rng.normal(0, 1, 5000))
    same = drift.psi(ref, rng.normal(0, 1, 2000))
    shifted = drift.psi(ref, rng.normal(1.5, 1, 2000))
    assert same < drift.MODERATE and shifted > drift.DRIFT
    assert drift.level(same) == "stable" and drift.level(shifted) == "drift"
    assert drift.reference(np.array([1.0, np.nan])) is None and drift.psi(ref, np.ones(3)) is None
    refs = drift.references({"pump": {"flow": rng.normal(0, 1, 500), "rare": np.ones(3)}})
    out = drift.compare(refs, {"pump": {"flow": rng.normal(3, 1, 500), "rare": np.ones(500)}})
    assert out["drifted"] == ["pump.flow"] and out["level"] == "drift" and "rare" not in out["psi"]["pump"]


def test_if_drifted_skips_only_when_drift_was_measured_and_is_absent() -> None:
    stable = drift.compare(
        drift.references({"pump": {"score": np.linspace(0, 1, 500)}}), {"pump": {"score": np.linspace(0, 1, 300)}}
    )
    assert "no drift" in skip_reason(stable)
    shifted = drift.compare(
        drift.references({"pump": {"score": np.linspace(0, 1, 500)}}), {"pump": {"score": np.linspace(2, 3, 300)}}
    )
    assert skip_reason(shifted) is None
    assert skip_reason(drift.compare({}, {"pump": {"score": np.ones(300)}})) is None  # nothing to compare with


def test_if_drifted_retrains_when_a_worker_last_said_drifted() -> None:
    stable = drift.compare(
        drift.references({"pump": {"score": np.linspace(0, 1, 500)}}), {"pump": {"score": np.linspace(0, 1, 300)}}
    )
    events = [
        {"service": "detector", "group": "pump", "kind": "psi", "status": "drifted"},
        {"service": "detector", "group": "pipe", "kind": "psi", "status": "drifted"},
        {"service": "forecaster", "group": "z1", "kind": "adwin", "status": "drifted"},
        {"service": "detector", "group": "pump", "kind": "psi", "status": "stable"},  # came back since
    ]
    assert drifted_in_workers(events, "detector") == ["pipe (psi)"]
    assert drifted_in_workers(events, "forecaster") == ["z1 (adwin)"]
    assert skip_reason(stable, drifted_in_workers(events, "detector")) is None
    assert "no drift" in skip_reason(stable, drifted_in_workers(events[:1] + events[3:], "detector"))
