"""A cumulative counter's reset (flagged by ingest in ``extra.counter_resets``) is not an anomaly for the detector."""

from __future__ import annotations

import numpy as np
import pytest

from services.detector.pipeline import ModelStore, Scorer, counter_resets
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE
from services.detector.state import Layout, rebaseline
from shared.records import Anomaly, Reading, Score

T0 = 1_700_000_000_000
RESET_AT = 400


def meter(sid: str, i: int, total: float, flow: float, reset: bool = False) -> Reading:
    """A water meter of the catch-all profile: a flow and the counter integrating it (scored as they come)."""
    return Reading(
        sensor_id=sid,
        ts=T0 + i * 60_000,
        site="s",
        zone="z",
        utility="water",
        asset="other",
        values={"flow": flow, "volume_total": total},
        units={"flow": "m3/h", "volume_total": "m3"},
        extra={"counter_resets": ["volume_total"]} if reset else {},
    )


def stream(flagged: bool) -> list[Reading]:
    """Two meters, interleaved; m1's counter goes back to 0 at RESET_AT (a replaced meter), m2's never does."""
    rng = np.random.default_rng(1)
    totals = {"m1": 1.5e6, "m2": 8.0e5}
    out = []
    for i in range(RESET_AT + 60):
        for sid in ("m1", "m2"):
            flow = 10 + rng.normal(0, 0.5)
            if sid == "m1" and i == RESET_AT:
                totals[sid] = 0.0
            totals[sid] += flow / 60
            out.append(meter(sid, i, totals[sid], flow, reset=flagged and sid == "m1" and i == RESET_AT))
    return out


def run(readings: list[Reading], batch: int) -> tuple[list[Score], list[Anomaly]]:
    scorer = Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE)))
    states: dict = {}
    scores: list[Score] = []
    anomalies: list[Anomaly] = []
    for start in range(0, len(readings), batch):
        result = scorer.process(readings[start : start + batch], states.get)
        states.update(result.states)
        scores += result.scores
        anomalies += result.anomalies
    return scores, anomalies


def test_an_unflagged_drop_of_the_counter_is_an_anomaly() -> None:
    """The same stream without ingest's flag: what the reset would be without this rule (the test can fail)."""
    _, anomalies = run(stream(flagged=False), 50)
    assert any(a.sensor_id == "m1" and a.ts == T0 + RESET_AT * 60_000 for a in anomalies)


@pytest.mark.parametrize("batch", [1, 7, 50, 1000])
def test_a_flagged_counter_reset_is_not_an_anomaly_whatever_the_batching(batch: int) -> None:
    scores, anomalies = run(stream(flagged=True), batch)
    assert anomalies == []
    assert len(scores) == 2 * (RESET_AT + 60)
    one_by_one, _ = run(stream(flagged=True), 1)
    assert [s.score for s in scores] == pytest.approx([s.score for s in one_by_one], abs=1e-4)


def test_the_other_sensors_of_the_batch_are_scored_as_without_the_reset() -> None:
    with_reset, _ = run(stream(flagged=True), 1000)
    without, _ = run(stream(flagged=False), 1000)
    m2 = [s.score for s in with_reset if s.sensor_id == "m2"]
    assert m2 == pytest.approx([s.score for s in without if s.sensor_id == "m2"], abs=1e-9)


def test_only_flagged_counters_of_the_group_count() -> None:
    r = meter("m", 0, 1.0, 1.0)
    metrics = ("flow", "volume_total")
    for extra, want in [
        ({"counter_resets": ["volume_total"]}, {"volume_total"}),
        ({"counter_resets": ["energy_total", 3, None]}, set()),  # not scored here; not names
        ({"counter_resets": "volume_total"}, set()),  # not a list: ignored
        ({}, set()),
    ]:
        r.extra = extra
        assert counter_resets(r, metrics) == want


def test_rebaseline_starts_only_the_forgotten_metrics_afresh() -> None:
    layout = Layout(2)
    vector = np.arange(layout.width, dtype=np.float64) + 1.0
    out = rebaseline(vector, ("flow", "volume_total"), frozenset({"volume_total"}))
    fresh = layout.empty(1)[0]
    assert out[: Layout.SCALARS] == pytest.approx(vector[: Layout.SCALARS])
    for name, block in layout.blocks.items():
        per = (block.stop - block.start) // 2
        old, new, empty = (v[block].reshape(per, 2) for v in (vector, out, fresh))
        assert new[:, 0] == pytest.approx(old[:, 0]), name  # flow kept
        np.testing.assert_array_equal(new[:, 1], empty[:, 1])  # volume_total afresh


@pytest.mark.parametrize("extra", [3.5, 7, "counter_resets", ["counter_resets"], None])
def test_an_extra_that_is_not_an_object_neither_raises_nor_changes_a_score(extra: object) -> None:
    # extra is whatever JSON a device sent: the batch is scored as if the field were absent (the topic fuzzer
    # found a float here failing whole batches)
    readings = stream(flagged=False)[:200]
    odd = list(readings)
    odd[100] = Reading.from_dict({**readings[100].to_dict(), "extra": extra})
    assert [s.score for s in run(odd, 50)[0]] == [s.score for s in run(readings, 50)[0]]


def test_a_reset_of_every_metric_of_the_group_scores_the_reading_with_its_statistics_afresh() -> None:
    # a one-counter meter: the reset leaves no metric to keep (this raised in remap, and the pump set the reading aside)
    def one(i: int, total: float, reset: bool = False) -> Reading:
        return Reading(
            sensor_id="c1",
            ts=T0 + i * 60_000,
            site="s",
            zone="z",
            utility="water",
            asset="other",
            values={"volume_total": total},
            extra={"counter_resets": ["volume_total"]} if reset else {},
        )

    readings = [one(i, 100.0 + i) for i in range(30)] + [one(30, 0.5, reset=True), one(31, 1.5)]
    scores, anomalies = run(readings, 8)
    assert [s.ts for s in scores] == [r.ts for r in readings] and not anomalies
    layout = Layout(1)
    vector = np.arange(layout.width, dtype=np.float64) + 1.0
    out = rebaseline(vector, ("volume_total",), frozenset({"volume_total"}))
    fresh = layout.empty(1)[0]
    assert out[: Layout.SCALARS] == pytest.approx(vector[: Layout.SCALARS])
    np.testing.assert_array_equal(out[Layout.SCALARS :], fresh[Layout.SCALARS :])
