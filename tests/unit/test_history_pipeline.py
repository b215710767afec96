"""The history sink's pure core: decoding, rollup folding, quarantine sampling, episodes, incidents."""

from __future__ import annotations

import orjson
import pytest

from services.history.pipeline import Decoder, Message, fold_episodes, fold_incidents, new_episode
from services.history.queries import Params, QueryError, anomaly_rates, duration_ms, series, time_ms
from services.history.settings import HistorySettings
from tests.history_helpers import anomaly, reading

MIN = 60_000


def _msgs(topic: str, values: list) -> list[Message]:
    return [Message(topic, 0, i, v if isinstance(v, bytes) else orjson.dumps(v)) for i, v in enumerate(values)]


def test_readings_fold_into_minute_rollups_once() -> None:
    d = Decoder()
    values = [reading("a", 1_000 * i, {"flow": float(i), "p": 1.0}) for i in range(120)]
    batch = d.decode(_msgs("readings.clean", values))
    rows = {(r[0], r[1], r[2]): r[3:] for r in batch.rollup_rows()}
    assert rows[("a", "flow", 0)] == ("s1", "z1", "water", 60, 0.0, 59.0, float(sum(range(60))))
    assert rows[("a", "flow", MIN)][3:6] == (60, 60.0, 119.0)
    again = d.decode(_msgs("readings.clean", values[-10:]))  # an upstream replay of the last ones
    assert again.duplicates == 10 and not again.rollups
    assert batch.offsets == {("readings.clean", 0): 120}


def test_bad_messages_are_rejected_with_their_reason() -> None:
    batch = Decoder().decode(
        _msgs("anomalies", [b"{oops", b"[1]", {"sensor_id": "a"}, anomaly("a", 5, float("inf")) | {"score": "x"}])
    )
    assert len(batch.rejects) == 4 and not batch.anomalies
    assert "JSONDecodeError" in batch.rejects[0][3] and "JSON object" in batch.rejects[1][3]
    assert "KeyError" in batch.rejects[2][3]


def test_values_the_database_would_refuse_are_rejects_not_a_failed_batch() -> None:
    # A time beyond the year 9999 has no day partition; 2**31 does not fit an integer column, 2**63 a bigint.
    risk = {"zone": "z1", "ts": 5_000, "probability": 0.5}
    batch = Decoder().decode(
        _msgs("anomalies", [anomaly("a", 2**62, 1.0), anomaly("a", -1, 1.0), anomaly("a", 5, 1.0) | {"ts": 2**63}])
        + _msgs("risk", [risk | {"horizon_s": 2**31}, risk | {"ts": 1e300}, risk])
        + _msgs("readings.clean", [reading("a", 2**60, {"flow": 1.0}), reading("a", 60_000, {"flow": 1.0})])
    )
    assert [r[0] for r in batch.rejects] == ["anomalies"] * 3 + ["risk"] * 2 + ["readings.clean"]
    assert "year 9999" in batch.rejects[0][3] and "32-bit" in batch.rejects[3][3]
    assert len(batch.risk) == 1 and batch.accepted == {"risk": 1, "readings.clean": 1}
    # JSON the store reads again when it writes (incidents' loss, a verdict's episode, an episode's top metrics).
    feedback = {"fingerprint": "f", "ts": 5, "verdict": "true_positive"}
    batch = Decoder().decode(
        _msgs("risk", [risk | {"loss": 7}, risk | {"loss": {"volume": 1.0}}])
        + _msgs("feedback", [feedback | {"labels": 3}, feedback | {"labels": {"episode_id": "1"}}])
        + _msgs("anomalies", [anomaly("a", 5, 1.0) | {"top_metrics": 5}])
    )
    assert [(r[0], r[3]) for r in batch.rejects] == [
        ("risk", "ValueError: loss must be an object, got int"),
        ("feedback", "ValueError: labels must be an object, got int"),
        ("anomalies", "ValueError: top_metrics must be an array, got int"),
    ]
    assert batch.accepted == {"risk": 1, "feedback": 1}


def test_quarantine_counts_everything_and_samples_a_few() -> None:
    d = Decoder(samples_per_minute=2)
    q = [
        {"payload": "x" * 10_000, "source": "mqtt", "reasons": ["range: a", "unit: b"], "received_ms": i}
        for i in range(5)
    ]
    batch = d.decode(_msgs("readings.quarantine", q))
    assert batch.quarantine_counts == {(0, "mqtt", "range"): 5, (0, "mqtt", "unit"): 5}
    assert len(batch.quarantine_samples) == 4 and len(batch.quarantine_samples[0][6]) == 4096
    assert not d.decode(_msgs("readings.quarantine", q)).quarantine_samples  # the minute's budget is spent


def test_episodes_join_within_the_gap_and_split_beyond_it() -> None:
    gap = 5 * MIN
    anomalies = [anomaly("a", t, 0.6) for t in (0, MIN, 2 * MIN, 20 * MIN)]
    anomalies[1]["score"] = 0.9
    out = fold_episodes([], [_a(x) for x in anomalies], gap)
    assert sorted((e["start_ts"], e["end_ts"], e["anomaly_count"]) for e in out) == [
        (0, 2 * MIN, 3),
        (20 * MIN, 20 * MIN, 1),
    ]
    assert max(e["peak_score"] for e in out) == 0.9


def test_episodes_continue_across_batches_and_take_late_anomalies() -> None:
    gap = 5 * MIN
    first = fold_episodes([], [_a(anomaly("a", 10 * MIN, 0.6))], gap)[0] | {"id": 7, "state": "closed"}
    out = fold_episodes(
        [first], [_a(anomaly("a", 13 * MIN, 0.7, severity="critical")), _a(anomaly("a", 6 * MIN, 0.6))], gap
    )
    assert len(out) == 1
    e = out[0]
    assert (e["id"], e["start_ts"], e["end_ts"], e["anomaly_count"], e["state"]) == (7, 6 * MIN, 13 * MIN, 3, "open")
    assert e["severity"] == "critical" and e["top_metrics"] == [{"metric": "flow", "count": 3}]
    assert first["anomaly_count"] == 1  # the input was not changed


def test_incidents_need_the_threshold_and_keep_the_largest_loss() -> None:
    risks = [
        {
            "site": "s",
            "zone": "z",
            "utility": "water",
            "ts": k * MIN,
            "probability": p,
            "incident_type": t,
            "loss": {"volume": v, "cost": v / 2, "unit": "m3", "currency": "EUR"},
        }
        for k, (p, t, v) in enumerate([(0.2, "leak", 0), (0.8, "leak", 1.0), (0.9, "burst", 3.0), (0.7, "normal", 9.0)])
    ]
    out = fold_incidents([], risks, 0.5, 15 * MIN)
    assert len(out) == 1
    i = out[0]
    assert (i["start_ts"], i["end_ts"], i["incident_type"], i["loss_volume"], i["loss_cost"]) == (
        MIN,
        2 * MIN,
        "burst",
        3.0,
        1.5,
    )


def test_query_parameters_are_checked_and_named() -> None:
    hs = HistorySettings()
    assert duration_ms("5m", "x") == 300_000 and duration_ms("90", "x") == 90_000
    assert time_ms("1970-01-01T00:01:00Z", "x") == MIN
    with pytest.raises(QueryError) as err:
        anomaly_rates(Params({"by": "site,planet"}, hs, now_ms=10**12))
    assert err.value.param == "by"
    with pytest.raises(QueryError) as err:
        series(Params({"sensor": "a", "metric": "flow", "since": "30d", "step": "1m"}, hs, now_ms=10**12))
    assert err.value.param == "step"
    with pytest.raises(QueryError) as err:
        series(Params({"sensor": "a", "metric": "flow", "since": "1000d"}, hs, now_ms=10**12))
    assert err.value.param == "from"
    sql, args = anomaly_rates(Params({"by": "zone,dow", "site": "s1", "since": "1d"}, hs, now_ms=10**12))
    start = 10**12 - 86_400_000
    assert "GROUP BY zone, dow" in sql and args == [start - start % 3_600_000, 10**12, "s1"]


def _a(record: dict) -> dict:
    """An anomaly as the sink hands it to fold_episodes (the columns it reads back from the store)."""
    keys = ("sensor_id", "ts", "site", "zone", "utility", "asset", "score", "severity", "reason", "top_metrics")
    return {k: record[k] for k in keys}


def test_new_episode_is_open() -> None:
    assert new_episode(_a(anomaly("a", 5, 0.7)))["state"] == "open"


@pytest.mark.parametrize("ts", [0, 1_793_548_500_000, 1_700_000_000_000, 1_709_251_199_999])
def test_hour_and_day_of_week_arithmetic_matches_the_calendar(ts: int) -> None:
    import datetime as dt

    from services.history.queries import DIMENSIONS

    when = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC)
    as_python = {
        name: eval(DIMENSIONS[name].split("::")[0].replace("/", "//").replace("hour", str(ts)))
        for name in ("hour", "dow")
    }
    assert as_python == {"hour": when.hour, "dow": when.isoweekday()}
