"""The micro-batch scorer, profiles, reasons and zone aggregates, without Kafka."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector import aggregates
from services.detector.model import AnomalyModel
from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import Profile, ProfileError, ProfileSet
from services.detector.reasons import explain
from services.detector.settings import DEFAULT_PROFILES_FILE
from services.detector.state import FEATURE_BLOCKS, unpack
from shared.records import Reading

T0 = 1_700_000_000_000


def reading(sid: str, i: int, pressure: float, flow: float = 100.0, zone: str = "z1") -> Reading:
    return Reading(
        sensor_id=sid,
        ts=T0 + i * 5000,
        site="north",
        zone=zone,
        utility="water",
        asset="pipe",
        values={"pressure": pressure, "flow": flow},
        units={"pressure": "kPa", "flow": "m3/h"},
    )


def make_scorer(**kwargs) -> Scorer:
    return Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE)), **kwargs)


def stream_of(sensors: int, n: int, jump_at: int | None = None) -> list[Reading]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        for s in range(sensors):
            p = 480 + rng.normal(0, 4)
            if jump_at is not None and s == 0 and i >= jump_at:
                p = 312.0
            out.append(reading(f"s{s}", i, p, 100 + rng.normal(0, 1)))
    return out


def run(scorer: Scorer, readings: list[Reading], batch: int, states: dict | None = None):
    states = {} if states is None else states
    scores, anomalies, writes = [], [], 0
    for start in range(0, len(readings), batch):
        result = scorer.process(readings[start : start + batch], states.get)
        writes += len(result.states)
        states.update(result.states)
        scores += result.scores
        anomalies += result.anomalies
    return scores, anomalies, states, writes


def test_statistical_mode_flags_a_jump_with_a_readable_reason():
    readings = stream_of(3, 200, jump_at=150)
    scores, anomalies, _, _ = run(make_scorer(), readings, 60)
    assert len(scores) == len(readings)
    flagged = {(a.sensor_id, a.ts) for a in anomalies}
    assert (("s0", T0 + 150 * 5000)) in flagged
    assert all(sid == "s0" for sid, ts in flagged if ts >= T0 + 150 * 5000)
    first = next(a for a in anomalies if a.sensor_id == "s0" and a.ts == T0 + 150 * 5000)
    assert first.reason.startswith("pressure 312 kPa is ")
    assert "below its recent 48" in first.reason
    assert first.top_metrics[0]["metric"] == "pressure" and first.top_metrics[0]["unit"] == "kPa"
    assert first.model_version == "statistical"
    others = [a for a in anomalies if a.sensor_id != "s0"]
    assert len(others) < 0.02 * len(readings)


def test_batching_does_not_change_scores_and_state_is_written_once_per_sensor_per_batch():
    readings = stream_of(4, 120, jump_at=80)
    a, _, states_a, _ = run(make_scorer(), readings, len(readings))
    b, _, states_b, _ = run(make_scorer(), readings, 7)
    assert [(s.sensor_id, s.ts, s.score, s.is_anomaly) for s in a] == [
        (s.sensor_id, s.ts, s.score, s.is_anomaly) for s in b
    ]
    assert states_a == states_b
    one = make_scorer().process(readings[:400], {}.get)
    assert sorted(one.states) == ["s0", "s1", "s2", "s3"]  # 100 readings each, one state each
    assert sum(one.scored.values()) == 400 and sum(one.flagged.values()) == len(one.anomalies)
    metrics, vec = unpack(one.states["s0"])
    assert metrics == ("pressure", "flow") and vec[0] == 100


def test_a_trained_profile_model_is_used_and_named_in_scores():
    store = ModelStore(ProfileSet([Profile("pipe", {"asset": "pipe"}, ("pressure", "flow"))]))
    train = stream_of(3, 150)
    x = np.array([[r.values["pressure"], r.values["flow"]] for r in train])
    idx = np.array([int(r.sensor_id[1:]) for r in train])
    model = AnomalyModel(("pressure", "flow"), store.profiles.by_name["pipe"].model_config(), name="pipe")
    model.fit(x, np.array([r.ts for r in train]), idx)
    model.version = "v3"
    store.set_trained("pipe", model)
    result = Scorer(store).process(stream_of(2, 5), {}.get)
    assert {s.model_version for s in result.scores} == {"v3"}
    assert {s.model for s in result.scores} == {"pipe"}


def test_corrupt_stored_state_starts_the_sensor_afresh():
    result = make_scorer().process([reading("s1", 0, 400.0)], {"s1": b"garbage"}.get)
    assert result.bad_states == 1 and len(result.scores) == 1


def test_zone_partials_count_and_summarise_per_window():
    readings = [reading("a", i, 400.0 + i) for i in range(12)] + [reading("b", i, 10.0, zone="z2") for i in range(3)]
    result = make_scorer(window_ms=30_000).process(readings, {}.get)
    z1 = result.partials["north/z1/water"]
    first = z1[str(T0 - T0 % 30_000)]
    assert first["n"] + sum(p["n"] for k, p in z1.items() if k != str(T0 - T0 % 30_000)) == 12
    assert first["m"]["pressure"][2] == 400.0  # min of the first window
    assert result.partials["north/z2/water"]


def test_aggregate_windows_merge_and_close_on_the_watermark():
    w, grace = 30_000, 5_000
    p1, p2 = {}, {}
    aggregates.add_reading(p1, {"pressure": 10.0}, False, 1_000)
    aggregates.add_reading(p2, {"pressure": 30.0, "flow": 2.0}, True, 2_000)
    open_, closed = aggregates.apply({}, {"0": p1}, 2_000, w, grace)
    assert closed == [] and "0" in open_
    open_, closed = aggregates.apply(open_, {"0": p2}, 34_999, w, grace)
    assert closed == []
    open_, closed = aggregates.apply(open_, {}, 35_000, w, grace)
    assert open_ == {} and len(closed) == 1
    record = aggregates.to_record("north/z1/water", *closed[0], w)
    assert (record.count, record.anomaly_count, record.zone) == (2, 1, "z1")
    assert record.metrics["pressure"] == {"count": 2, "mean": 20.0, "min": 10.0, "max": 30.0}
    assert record.metrics["flow"]["count"] == 1


def test_reason_uses_the_time_of_day_baseline_when_the_hour_is_known():
    m = 1
    row = np.zeros(len(FEATURE_BLOCKS) * m)
    for name, v in {"value": 312.0, "z": -1.0, "z_tod": -4.1, "base": 480.0, "base_sd": 41.0}.items():
        row[FEATURE_BLOCKS.index(name)] = v
    text, tops = explain(("pressure",), row, np.array([1.0]), {"pressure": "kPa"}, 3 * 3_600_000 + 60_000)
    assert text == "pressure 312 kPa is 4.1σ below its usual 480 kPa for 03:00"  # noqa: RUF001
    assert tops[0]["z"] == -4.1


def test_profiles_match_in_order_and_reject_unknown_keys(tmp_path):
    profiles = ProfileSet.load(DEFAULT_PROFILES_FILE)
    assert profiles.for_reading(reading("x", 0, 1.0)).name == "pipe"
    pump = Reading("p1", 0, "s", "z", "water", "pump", {"flow": 1.0})
    assert profiles.for_reading(pump).name == "pump"
    odd = Reading("weird-1", 0, "s", "z", "water", "windmill", {"rpm": 1.0})
    assert profiles.for_reading(odd).name == "default"
    custom = ProfileSet([Profile("special", {"sensor_prefix": "weird-"}), Profile("rest")])
    assert custom.for_reading(odd).name == "special"
    bad = tmp_path / "p.yaml"
    bad.write_text("profiles:\n  - name: x\n    match: {colour: red}\n")
    with pytest.raises(ProfileError, match="unknown keys"):
        ProfileSet.load(bad)


def test_a_replayed_batch_is_scored_again_but_does_not_change_the_state():
    readings = stream_of(3, 40)
    scorer = make_scorer()
    _, _, states, _ = run(scorer, readings, 30)
    again = scorer.process(readings[-30:], states.get)  # at-least-once: the last batch comes back after a restart
    assert again.late == 30 and len(again.scores) == 30
    assert again.states == {sid: states[sid] for sid in again.states}
    newer = scorer.process([reading("s0", 40, 480.0)], states.get)
    assert newer.late == 0 and unpack(newer.states["s0"])[1][0] == 41


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{oops", "undecodable"),
        (b"[1, 2]", "undecodable: expected a JSON object"),
        (b'{"ts": 1, "site": "", "zone": "", "utility": "", "asset": "", "values": {}}', "undecodable: TypeError"),
        (
            b'{"sensor_id": "", "ts": 1, "site": "", "zone": "", "utility": "", "asset": "", "values": {}}',
            "missing sensor_id",
        ),
        (
            b'{"sensor_id": "a", "ts": "x", "site": "", "zone": "", "utility": "", "asset": "", "values": {}}',
            "ts is not",
        ),
        (
            b'{"sensor_id": "a", "ts": 1, "site": "", "zone": "", "utility": "", "asset": "", "values": {"p": "7"}}',
            "map of numbers",
        ),
        (
            # under the default profile (metrics from the reading) this scored with no metric and raised
            # ZeroDivisionError, failing its batch (found by the topic fuzzer)
            b'{"sensor_id": "a", "ts": 1, "site": "", "zone": "", "utility": "zz", "asset": "", "values": {}}',
            "no metric",
        ),
    ],
)
def test_messages_that_are_not_readings_are_refused_with_a_reason(raw, why):
    from services.detector.worker import decode

    reading_, reason = decode(raw)
    assert reading_ is None and why in reason


def test_a_clean_reading_decodes():
    from services.detector.worker import decode

    r, reason = decode(
        b'{"sensor_id": "a", "ts": 5, "site": "s", "zone": "z", "utility": "water", "asset": "pipe", "values": {"p": 1.5}}'
    )
    assert reason == "" and r.sensor_id == "a" and r.values == {"p": 1.5}


def test_an_impossible_value_is_treated_as_missing_and_does_not_poison_the_state():
    store = ModelStore(ProfileSet([Profile("pipe", {"asset": "pipe"}, ("pressure", "flow"))]))
    train = stream_of(3, 150)
    x = np.array([[r.values["pressure"], r.values["flow"]] for r in train])
    model = AnomalyModel(("pressure", "flow"), store.profiles.by_name["pipe"].model_config(), name="pipe")
    model.fit(x, np.array([r.ts for r in train]), np.array([int(r.sensor_id[1:]) for r in train]))
    store.set_trained("pipe", model)
    scorer = Scorer(store)
    _, _, states, _ = run(scorer, train, 100)
    with np.errstate(all="raise"):
        absurd = scorer.process([reading("s0", 150, 1e300)], states.get)
    states.update(absurd.states)
    _, vec = unpack(absurd.states["s0"])
    assert np.all(np.isfinite(vec))
    assert vec[model.layout.blocks["count"]][0] == 150  # pressure not counted
    after = scorer.process([reading("s0", 151, 481.0)], states.get)
    assert not after.scores[0].is_anomaly


def test_readings_scored_are_counted_even_when_only_anomalies_are_published() -> None:
    readings = stream_of(4, 120, jump_at=80)
    quiet = make_scorer(emit_scores=False).process(readings, {}.get)
    assert sum(quiet.scored.values()) == len(readings)
    assert quiet.anomalies and len(quiet.scores) == sum(quiet.flagged.values()) == len(quiet.anomalies)


def test_a_model_without_metrics_explains_nothing_rather_than_raising() -> None:
    # a reading with no values is refused by decode; the model still must not divide by its metric count
    store = ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE))
    empty = Reading.from_dict({**reading("e1", 0, 400.0).to_dict(), "utility": "zz", "asset": "", "values": {}})
    assert store.metrics_for(store.profiles.for_reading(empty), empty) == ()
    result = Scorer(store).process([empty], {}.get)
    assert len(result.scores) == 1 and not result.anomalies


def test_a_reading_with_a_field_the_detector_does_not_know_decodes_without_it():
    from services.detector.worker import decode

    r, reason = decode(
        b'{"sensor_id": "a", "ts": 5, "site": "s", "zone": "z", "utility": "water", "asset": "pipe", '
        b'"values": {"p": 1.5}, "added_later": {"x": 1}}'
    )
    assert reason == "" and r.sensor_id == "a" and not hasattr(r, "added_later")
    long_source = (
        b'{"sensor_id": "a", "ts": 5, "site": "s", "zone": "z", "utility": "water", "asset": "pipe", '
        b'"values": {"p": 1.5}, "source": "' + b"x" * 201 + b'"}'
    )
    assert decode(long_source) == (None, "invalid: source must be text of at most 200 characters")


def test_the_ensemble_scores_a_realistic_batch_as_with_scikit_learns_own_lof(monkeypatch):
    """LOF's compiled neighbour search against scikit-learn's ``score_samples``, through the whole scorer:
    the same flags, anomalies and reasons, scores equal to float rounding (the state's smoothed score too)."""
    from services.detector.detectors import LOFDetector

    store = ModelStore(ProfileSet([Profile("pipe", {"asset": "pipe"}, ("pressure", "flow"))]))
    train = stream_of(20, 80)
    x = np.array([[r.values["pressure"], r.values["flow"]] for r in train])
    model = AnomalyModel(("pressure", "flow"), store.profiles.by_name["pipe"].model_config(), name="pipe")
    model.fit(x, np.array([r.ts for r in train]), np.array([int(r.sensor_id[1:]) for r in train]))
    assert "lof" in {d.name for d in model.detectors}
    store.set_trained("pipe", model)
    rng = np.random.default_rng(4)
    live = [
        reading(f"s{s}", i, 480 + rng.normal(0, 4) - (150.0 if s < 3 and 95 <= i < 110 else 0.0))
        for i in range(80, 130)
        for s in range(20)
    ]

    def scored_by(scorer: Scorer) -> tuple[list, list, dict]:
        scores, anomalies, states, _ = run(scorer, live, 250)
        return scores, anomalies, states

    fast = scored_by(Scorer(store))
    monkeypatch.setattr(LOFDetector, "score", lambda self, rows: -self.model.score_samples(rows))
    checked = scored_by(Scorer(store))
    assert fast[1], "the level drop must be flagged"
    assert [s.is_anomaly for s in fast[0]] == [s.is_anomaly for s in checked[0]]
    np.testing.assert_allclose([s.score for s in fast[0]], [s.score for s in checked[0]], rtol=1e-9, atol=1e-12)
    assert [(a.sensor_id, a.ts, a.reason, a.severity) for a in fast[1]] == [
        (a.sensor_id, a.ts, a.reason, a.severity) for a in checked[1]
    ]
    for sid, packed in fast[2].items():
        np.testing.assert_allclose(unpack(packed)[1], unpack(checked[2][sid])[1], rtol=1e-12, atol=0)


def reading_of(sid: str, i: int, asset: str, values: dict[str, float], zone: str = "z1") -> Reading:
    return Reading(
        sensor_id=sid, ts=T0 + i * 5000, site="north", zone=zone, utility="water", asset=asset, values=values
    )


def test_a_profile_without_metrics_groups_its_readings_by_their_own_metrics_among_other_profiles():
    # "default" lists no metrics: each reading's own make its group; "pipe" lists them: one group
    batch = [
        reading("p1", 0, 400.0),
        reading_of("w1", 0, "widget", {"a": 1.0}),
        reading("p2", 0, 410.0),
        reading_of("w2", 0, "widget", {"a": 1.0, "b": 2.0}),
        reading_of("w3", 0, "widget", {"b": 3.0}),
        reading("p1", 1, 401.0),
        reading_of("w4", 0, "widget", {"a": 5.0}),
    ]
    result = make_scorer(packed=False).process(batch, {}.get)
    assert {sid: metrics for sid, (metrics, _) in result.states.items()} == {
        "p1": ("pressure", "flow"),
        "p2": ("pressure", "flow"),
        "w1": ("a",),
        "w2": ("a", "b"),
        "w3": ("b",),
        "w4": ("a",),
    }
    # groups in order of their first reading, readings in order within each
    assert [(s.sensor_id, s.ts) for s in result.scores] == [
        ("p1", T0),
        ("p2", T0),
        ("p1", T0 + 5000),
        ("w1", T0),
        ("w4", T0),
        ("w2", T0),
        ("w3", T0),
    ]
    assert result.scored == {"pipe": 3, "default": 4}


def test_contributions_are_the_largest_shares_in_order_without_zero_ones():
    rng = np.random.default_rng(3)
    metrics = ("energy", "power", "voltage", "current", "flow")
    readings = [
        reading_of(
            f"m{s}",
            i,
            "meter",
            {m: 100.0 + 10 * j + rng.normal(0, 1 + 5 * (i > 30 and j == s)) for j, m in enumerate(metrics)},
        )
        for i in range(40)
        for s in range(3)
    ]
    readings[100].values["power"] = float("nan")  # a missing metric: no share
    full = make_scorer(reason_metrics=5).process(readings, {}.get).scores
    assert {5, 4, 3} <= {len(s.contributions) for s in full}  # some readings have metrics of no share
    for top in (0, 1, 2, 3, 4):
        scores = make_scorer(reason_metrics=top).process(readings, {}.get).scores
        for s, f in zip(scores, full, strict=True):
            shares = list(f.contributions.items())
            assert list(s.contributions.items()) == shares[:top]
            assert [c for _, c in shares] == sorted((c for _, c in shares), reverse=True)
            assert all(c > 0 for _, c in shares)


def test_zone_partials_of_interleaved_zones_and_windows_are_each_their_own():
    zones = ["z1", "z2", "z1", "z3", "z2", "z1"]
    readings = [
        reading(f"s{i % 4}", 3 * i, 400.0 + i, flow=float("nan") if i % 5 == 0 else 100.0 + i, zone=zones[i % 6])
        for i in range(30)
    ]
    result = make_scorer(window_ms=30_000).process(readings, {}.get)
    expected: dict[str, dict[str, dict]] = {}
    for r in readings:
        cell = expected.setdefault(f"north/{r.zone}/water", {}).setdefault(str(r.ts - r.ts % 30_000), {"n": 0, "m": {}})
        cell["n"] += 1
        for m, v in r.values.items():
            if v == v:
                c = cell["m"].setdefault(m, [0, 0.0, np.inf, -np.inf])
                cell["m"][m] = [c[0] + 1, c[1] + v, min(c[2], v), max(c[3], v)]
    assert {k: {w: (p["n"], p["m"]) for w, p in cells.items()} for k, cells in result.partials.items()} == {
        k: {w: (p["n"], p["m"]) for w, p in cells.items()} for k, cells in expected.items()
    }
    assert list(result.partials) == ["north/z1/water", "north/z2/water", "north/z3/water"]


def test_new_sensors_start_afresh_beside_sensors_with_a_stored_state():
    states: dict = {}
    run(make_scorer(packed=False), stream_of(2, 20), 10, states)
    np.full(200_000, 7.0)  # freed memory a fresh row must not pick up
    mixed = make_scorer(packed=False).process([reading("s0", 20, 480.0), reading("new", 20, 480.0)], states.get)
    alone = make_scorer(packed=False).process([reading("new", 20, 480.0)], {}.get)
    np.testing.assert_array_equal(mixed.states["new"][1], alone.states["new"][1])
    assert mixed.states["s0"][1][0] == 21


def test_a_profile_sharing_its_name_with_the_catch_all_keeps_its_readings_apart():
    # a user profile named "default" that matches meters: the catch-all appended after it is "default" too
    profiles = ProfileSet([Profile("default", {"asset": "meter"}, ("energy", "power"))])
    assert [(p.name, p.metrics) for p in profiles.profiles] == [("default", ("energy", "power")), ("default", ())]
    batch = [
        reading_of("m1", 0, "meter", {"energy": 1.0, "power": 2.0}),
        reading_of("p1", 0, "pipe", {"pressure": 3.0}),
        reading_of("m2", 0, "meter", {"energy": 1.5, "power": 2.5}),
    ]
    result = Scorer(ModelStore(profiles), packed=False).process(batch, {}.get)
    assert {sid: metrics for sid, (metrics, _) in result.states.items()} == {
        "m1": ("energy", "power"),
        "m2": ("energy", "power"),
        "p1": ("pressure",),  # its own metrics, not the meters' profile's
    }
    assert {s.sensor_id: set(s.contributions) for s in result.scores} == {
        "m1": {"energy", "power"},
        "m2": {"energy", "power"},
        "p1": {"pressure"},
    }
