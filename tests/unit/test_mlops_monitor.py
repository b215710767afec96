"""Drift in the workers: the monitor's histograms and verdicts, the forecaster's ADWIN on its error, the
ModelDrift rule of the shipped alert rules, and the simulator's regime shift that the integration test uses."""

from __future__ import annotations

import numpy as np
import pytest

from services.alerts.config import load_config
from services.alerts.evaluate import evaluate_batch
from services.alerts.settings import DEFAULT_CONFIG
from services.forecaster.drift import ForecastDrift, relative_error
from services.forecaster.settings import ForecasterSettings
from services.simulator.generator import METRIC_INDEX, Engine, SimConfig
from services.simulator.network import Network
from shared.codec import dumps
from shared.mlops import drift as driftmod
from shared.mlops.monitor import NO_CARD, DriftMonitor, drift_event, group_level
from shared.records import Risk
from shared.topics import DRIFT

H = 3_600_000
RNG = np.random.default_rng(11)


def hours(start_h: float, end_h: float, n_per_h: int = 200) -> np.ndarray:
    return np.linspace(start_h * H, end_h * H, int((end_h - start_h) * n_per_h), endpoint=False).astype(np.int64)


def monitor(**kw) -> DriftMonitor:
    args = {"window_ms": 4 * H, "reference_ms": 4 * H, "bucket_ms": H, "publish_gauges": False, **kw}
    return DriftMonitor("detector", **args)


def feed(m: DriftMonitor, start_h: float, end_h: float, mean: float, columns=("a", "b", "c"), group="pump") -> None:
    ts = hours(start_h, end_h)
    for chunk in np.array_split(np.arange(len(ts)), 7):  # batches as a worker sees them
        m.observe(group, ts[chunk], {c: RNG.normal(mean, 1.0, len(chunk)) for c in columns})


def test_against_the_cards_reference_drift_turns_on_and_off_with_hysteresis() -> None:
    m = monitor()
    ref = driftmod.reference(RNG.normal(0.0, 1.0, 5000))
    m.set_reference("pump", {"a": ref, "b": ref, "c": ref}, "detector-pump v3")
    feed(m, 0, 2, 0.0)
    assert m.evaluate() == [] and m.snapshot()["pump"]["psi"] == dict.fromkeys("abc")  # window not full yet
    feed(m, 2, 4, 0.0)
    assert m.evaluate() == []  # a first verdict of no drift is not an event
    snap = m.snapshot()["pump"]
    assert snap["status"] == "stable" and max(snap["psi"].values()) < driftmod.MODERATE
    assert snap["references"] == dict.fromkeys("abc", "detector-pump v3")
    feed(m, 4, 8, 1.5)  # the whole window moved
    [t] = m.evaluate()
    assert (t.group, t.status, t.references["a"]) == ("pump", "drifted", "detector-pump v3")
    assert t.value >= driftmod.DRIFT and t.ts == hours(4, 8)[-1]
    assert m.evaluate() == []  # still drifted: no new event
    feed(m, 8, 10, 0.0)  # half the window back: between the thresholds, it stays drifted
    assert m.evaluate() == [] and m.snapshot()["pump"]["status"] == "drifted"
    feed(m, 10, 13, 0.0)
    [t] = m.evaluate()
    assert t.status == "stable" and t.value < driftmod.MODERATE


def test_the_windows_psi_is_the_psi_of_its_values() -> None:
    m = monitor()
    ref = driftmod.reference(RNG.normal(0.0, 1.0, 5000))
    m.set_reference("g", {"x": ref}, "card")
    ts = hours(0, 6)
    values = RNG.normal(0.4, 1.2, len(ts))
    for chunk in np.array_split(np.arange(len(ts)), 5):
        m.observe("g", ts[chunk], {"x": values[chunk]})
    m.evaluate()
    inside = ts >= (ts[-1] // H - 3) * H  # the whole buckets of the last 4 hours
    assert m.snapshot()["g"]["psi"]["x"] == pytest.approx(driftmod.psi(ref, values[inside]))


def test_without_a_card_the_first_hours_are_the_reference_and_the_score_waits_for_one() -> None:
    m = monitor()
    feed(m, 0, 4, 0.0, columns=("a", "score"))
    feed(m, 4, 8, 0.0, columns=("a", "score"))
    m.evaluate()
    snap = m.snapshot()["pump"]
    assert snap["references"] == {"a": "warm-up", "score": NO_CARD}
    assert set(snap["psi"]) == {"a"} and snap["psi"]["a"] < driftmod.MODERATE and snap["status"] == "stable"
    feed(m, 8, 12, 2.0, columns=("a", "score"))
    [t] = m.evaluate()
    assert t.status == "drifted" and t.references == {"a": "warm-up"}
    m.set_reference("pump", {}, "detector-pump v4")  # a new model: everything starts again
    assert m.snapshot() == {}


def test_one_column_on_its_own_does_not_call_the_group_drifted() -> None:
    m = monitor()
    ref = driftmod.reference(RNG.normal(0.0, 1.0, 5000))
    m.set_reference("gas", {c: ref for c in "abc"}, "card")
    feed(m, 0, 4, 0.0, columns=("a", "b"), group="gas")
    feed(m, 0, 4, 3.0, columns=("c",), group="gas")
    assert m.evaluate() == []
    snap = m.snapshot()["gas"]
    assert snap["psi"]["c"] > driftmod.DRIFT and snap["status"] == "stable"
    feed(m, 4, 8, 3.0, columns=("b", "c"), group="gas")
    feed(m, 4, 8, 0.0, columns=("a",), group="gas")
    assert [t.status for t in m.evaluate()] == ["drifted"]
    assert group_level([0.1, 0.5, 0.9]) == 0.5 and group_level([0.1, 0.9]) == 0.9 and group_level([0.3]) == 0.3


def test_the_warm_up_sample_is_bounded_and_spans_the_whole_period() -> None:
    m = monitor(sample_cap=1000)
    ts = hours(0, 3.9, n_per_h=10_000)
    for chunk in np.array_split(np.arange(len(ts)), 37):
        m.observe("g", ts[chunk], {"x": ts[chunk].astype(float)})
    col = m.groups["g"].columns["x"]
    kept = np.concatenate(col.sample)
    assert 500 <= len(kept) <= 1000
    assert kept.min() < 0.01 * ts[-1] and kept.max() > 0.99 * ts[-1]
    assert np.all(np.diff(kept) > 0)  # every stride-th value, in order


def test_a_column_seen_later_warms_up_from_its_own_start_and_old_readings_cost_one_bucket() -> None:
    m = monitor()
    feed(m, 0, 8, 0.0, columns=("a",))
    feed(m, 8, 16, 0.0, columns=("a", "late"))  # a metric that first reports at 8 h: its day starts there
    m.observe("pump", np.array([5_000, 16 * H]), {"a": np.array([1.0, 1.0]), "late": np.array([1.0, 1.0])})
    m.evaluate()
    snap = m.snapshot()["pump"]
    assert snap["references"] == {"a": "warm-up", "late": "warm-up"} and snap["status"] == "stable"
    assert all(b >= 12 for col in m.groups["pump"].columns.values() for b in col.buckets)  # the old one expired


def test_groups_are_bounded() -> None:
    m = monitor(max_groups=2)
    for g in ("a", "b", "c"):
        m.observe(g, np.array([1]), {"x": np.array([1.0])})
    assert set(m.groups) == {"a", "b"} and m.refused_groups == 1


def test_a_drift_event_is_what_the_shipped_model_drift_rule_fires_and_resolves_on() -> None:
    m = monitor()
    feed(m, 0, 4, 0.0)
    feed(m, 4, 8, 2.0)
    [t] = m.evaluate()
    event = drift_event("detector", t, "detector-pump", "v2", 14_400)
    config = load_config(DEFAULT_CONFIG, env={})
    [obs] = evaluate_batch(config, [(DRIFT.name, dumps(event))], 60).observations
    assert obs.rule == "ModelDrift" and not obs.resolve
    assert obs.labels == {
        "alertname": "ModelDrift",
        "service": "detector",
        "group": "pump",
        "model": "detector-pump",
        "kind": "model_drift",
        "severity": "warning",
    }
    assert "drifted on pump" in obs.annotations["summary"]
    feed(m, 8, 13, 0.0)
    [t] = m.evaluate()
    [back] = evaluate_batch(
        config, [(DRIFT.name, dumps(drift_event("detector", t, "detector-pump", "v2", 1)))], 60
    ).observations
    assert back.resolve and back.fingerprint == obs.fingerprint


def risk(zone: str, step: int, actual: float, expected: float, version: str = "v1") -> Risk:
    return Risk(
        site="s",
        zone=zone,
        utility="water",
        ts=step * 60_000,
        horizon_s=3600,
        probability=0.01,
        incident_type="normal",
        forecast={"flow": {"actual": actual, "expected": expected}},
        model_version=version,
    )


def test_the_forecasters_error_drifts_when_its_forecasts_go_wrong_and_comes_back() -> None:
    # six hours of one-minute steps: 360 values a side keep the PSI of an unchanged zone near 9 * 2 / 360
    fs = ForecasterSettings(drift_window_s=6 * 3600, drift_reference_s=6 * 3600, drift_bucket_s=1800)
    watch = ForecastDrift(fs)
    rng = np.random.default_rng(3)
    good = [risk("z1", i, 100 + rng.normal(0, 2), 100.0) for i in range(900)]
    watch.observe(good, {"water": "flow"})
    assert watch.take_events() == [] and watch.monitor.snapshot()["z1"]["status"] == "stable"
    bad = [risk("z1", 900 + i, 130 + rng.normal(0, 2), 100.0) for i in range(200)]
    watch.observe(bad, {"water": "flow"})
    events = watch.take_events()
    [up] = [e for e in events if e.kind == "adwin"]
    assert (up.status, up.group, up.zone, up.version) == ("drifted", "z1", "z1", "v1")
    assert up.before < 0.03 and up.value >= 1.5 * up.before + 0.01 and up.ts > 900 * 60_000
    assert watch.adwins["z1"].mean > 0.15  # the window holds mostly the new errors (about 0.23)
    assert [e.status for e in events if e.kind == "psi"] == ["drifted"]  # the zone's flow itself moved too
    watch.observe([risk("z1", 1100 + i, 100 + rng.normal(0, 2), 100.0) for i in range(400)], {"water": "flow"})
    assert {(e.kind, e.status) for e in watch.take_events()} == {("adwin", "stable"), ("psi", "stable")}
    watch.observe([risk("z1", 1500, 100, 100, version="v2")], {"water": "flow"})
    assert watch.adwins["z1"].width == 1  # a new model's errors are a new stream
    assert relative_error(0.0, 0.0) == 0.0 and relative_error(110, 100) == pytest.approx(10 / 110)


def test_the_simulators_regime_shift_multiplies_demand_from_its_time_on() -> None:
    net = Network.default(3)
    shift = 1_764_460_800_000 + 6 * H
    plain = Engine(net, SimConfig(), 3, step_ms=60_000)
    shifted = Engine(net, SimConfig(regime_shift_ms=shift, regime_factor=2.0), 3, step_ms=60_000)
    pipes = [i for i, s in enumerate(net.sensors) if s.asset == "pipe"][:5]
    t = np.array([shift - 60_000, shift, shift + 3 * H])
    a, b = plain.evaluate(pipes, t), shifted.evaluate(pipes, t)
    flow = METRIC_INDEX["flow"]
    assert np.array_equal(a[0], b[0], equal_nan=True)  # before the shift: the same network
    assert np.isfinite(a[1:, :, flow]).any()
    assert np.allclose(b[1:, :, flow], 2.0 * a[1:, :, flow], equal_nan=True)
    with pytest.raises(ValueError):
        SimConfig(regime_factor=0).validate()


def test_a_served_versions_card_gives_its_profile_the_training_reference(tmp_path) -> None:
    from services.detector.model import AnomalyModel
    from services.detector.pipeline import ModelStore
    from services.detector.profiles import ProfileSet
    from services.detector.serving import ModelServing
    from services.detector.settings import DEFAULT_PROFILES_FILE
    from shared.mlops.card import CARD, write_json
    from shared.registry import ModelRegistry

    profiles = ProfileSet.load(DEFAULT_PROFILES_FILE)
    registry = ModelRegistry(tmp_path)
    ref = driftmod.reference(RNG.normal(0.0, 1.0, 2000))
    with registry.create("detector-pump") as d:
        AnomalyModel(("flow", "pressure"), profiles.by_name["pump"].model_config(2.5), name="pump").save(d)
        write_json({"decision": "promoted", "reference": {"pump": {"score": ref}}}, d / CARD)
    registry.promote("detector-pump", "v1")
    m = monitor()
    serving = ModelServing(ModelStore(profiles), registry, monitor=m)
    m.observe("pump", np.array([1]), {"flow": np.array([1.0])})  # what the statistical model saw
    assert serving.model_of("pump") == ("detector-pump", "statistical")
    assert serving.refresh_now("test") == ["pump=v1"]
    assert serving.model_of("pump") == ("detector-pump", "v1") and "pump" not in m.groups  # started afresh
    feed(m, 0, 4, 3.0, columns=("score", "flow"))
    [t] = m.evaluate()
    assert t.status == "drifted" and t.references == {"score": "detector-pump v1"}  # flow still warming up
