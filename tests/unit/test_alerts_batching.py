"""The state stage's batching: rule hits of a micro-batch merged per alert decide as applying them in turn."""

from __future__ import annotations

import pytest

from services.alerts.config import parse_config
from services.alerts.labels import fingerprint
from services.alerts.overlay import Overlay
from services.alerts.pipeline import Processor, Schedule, fuse
from services.alerts.settings import AlertsSettings

pytestmark = pytest.mark.unit

NAMES = ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")


@pytest.fixture
def config():
    data = {
        "rules": [{"name": "A", "source": "anomaly", "when": ["score >= threshold"],
                   "labels": {"site": "{site}", "zone": "{zone}", "sensor": "{sensor_id}"},
                   "annotations": {"summary": "{reason}"}, "resolve_after": "1m",
                   "rate_limit": {"max_alerts": 3, "per": "1m", "collapse_by": ["site", "zone"]}}],
        "route": {"receiver": "r", "group_by": ["site", "zone"], "group_wait": "0s", "group_interval": "1s"},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    return parse_config(data, "t.yaml", {})


def record(sensor: str, zone: str, ts: int, reason: str = "r") -> dict:
    return {"sensor_id": sensor, "ts": ts, "site": "a", "zone": zone, "utility": "w", "asset": "p",
            "score": 1.0, "threshold": 0.5, "model_version": "1", "reason": reason}  # fmt: skip


def hits(config, *records: dict) -> dict:
    return {"type": "obs", "obs": [config.rules[0].evaluate(r).to_dict() for r in records]}


def resolve(config, sensor: str, zone: str) -> dict:
    obs = config.rules[0].evaluate(record(sensor, zone, 0)).to_dict()
    return {"type": "obs", "obs": [{**obs, "resolve": True, "annotations": {}}]}


def run(config, batches: list[list[dict]], fused: bool):
    """Each batch through one Processor over overlays (as the agent does), then the end-of-batch flush."""
    tables = {k: {} for k in NAMES}
    schedule, sent, now = Schedule(), [], 1000.0
    # coalescing off: every update of an alert is written, so the two ways must leave the same rows
    settings = AlertsSettings(coalesce_s=0.0)
    for values in batches:
        now += 0.5
        overlays = {k: Overlay(tables[k]) for k in NAMES}
        proc = Processor(config, settings, **overlays, silences={}, schedule=schedule)
        dispatch = []
        for value in fuse(values) if fused else values:
            dispatch += proc.handle(value, 0, now).dispatch
        dispatch += proc.handle({"type": "tick"}, 0, now).dispatch
        for o in overlays.values():
            o.flush()
        sent += [(e["notification"]["groupKey"], [(a["labels"].get("sensor", "flood"), a["status"],
                 a["annotations"]) for a in e["notification"]["alerts"]]) for e in dispatch]  # fmt: skip
    return tables, sent


def test_a_batch_merged_per_alert_decides_as_its_hits_one_by_one(config):
    r = record
    batches = [
        [  # one sensor flagged in every fetch, new ones beyond the rate limit (folded), a tick between runs
            hits(config, r("s1", "z1", 10, "first"), r("s2", "z1", 11)),
            hits(config, r("s1", "z1", 12, "second"), r("s3", "z1", 13), r("s4", "z1", 14)),
            {"type": "tick"},
            hits(config, r("s1", "z1", 15, "third"), r("s5", "z1", 16), r("s6", "z2", 17)),
            hits(config, r("s5", "z1", 18), r("s6", "z2", 19, "later")),
        ],
        [  # a resolve between hits of one alert: it resolves, then fires again as a new alert
            hits(config, r("s2", "z1", 20)),
            resolve(config, "s2", "z1"),
            hits(config, r("s2", "z1", 21, "back"), r("s1", "z1", 22)),
            hits(config, r("s2", "z1", 23, "back again")),
        ],
        [resolve(config, "s6", "z2"), hits(config, r("s7", "z3", 30)), hits(config, r("s7", "z3", 31))],
    ]
    one_by_one, sent_one_by_one = run(config, batches, fused=False)
    merged, sent_merged = run(config, batches, fused=True)
    assert merged == one_by_one and sent_merged == sent_one_by_one
    alerts = one_by_one["alerts"]
    s1 = next(a for a in alerts.values() if a["labels"].get("sensor") == "s1")
    assert s1["count"] == 4 and s1["starts_at"] == 10 and s1["annotations"] == {"summary": "r"}
    flood = next(a for a in alerts.values() if a["labels"].get("flood") == "true")
    assert flood["count"] == 5  # beyond max_alerts 3 in z1: s4, s5 twice, and s2 back twice after it resolved
    assert len(sent_one_by_one) >= 4


def test_fuse_keeps_other_events_in_place_and_merges_only_runs_of_hits(config):
    a = hits(config, record("s1", "z1", 1), record("s2", "z1", 2))
    b = hits(config, record("s1", "z1", 3, "new"))
    ack = {"type": "ack", "fingerprint": a["obs"][0]["fingerprint"], "by": "op"}
    out = fuse([a, b, ack, b])
    assert [v["type"] for v in out] == ["obs", "ack", "obs"] and out[1] is ack
    first = out[0]["obs"]
    assert [(o["labels"]["sensor"], o["count"], o["ts"], o["annotations"]["summary"]) for o in first] == [
        ("s1", 2, 1, "new"),
        ("s2", 1, 2, "r"),
    ]
    assert a["obs"][0]["count"] == 1  # the events themselves are not changed


def test_a_rules_labels_are_made_once_per_label_values_and_stay_exact(config):
    rule = config.rules[0]
    first = rule.evaluate(record("s1", "z1", 1, "one"))
    again = rule.evaluate(record("s1", "z1", 2, "two"))
    assert again.fingerprint == first.fingerprint == fingerprint(first.labels)
    assert again.annotations == {"summary": "two"} and again.labels == first.labels
    again.labels["zone"] = "changed"  # a caller that changes its labels does not change the next hit's
    assert rule.evaluate(record("s1", "z1", 3)).labels["zone"] == "z1"
    # equal values of other types render differently: each gets its own labels
    by_type = {rule.evaluate({**record("s1", "z1", 4), "zone": v}).labels["zone"] for v in (1, 1.0, True)}
    assert by_type == {"1", "1.0", "True"}
    # a value that cannot be a key (a list) is rendered each time
    assert rule.evaluate({**record("s1", "z1", 5), "zone": ["x"]}).labels["zone"] == "['x']"
    with pytest.raises(KeyError):
        rule.evaluate({k: v for k, v in record("s1", "z1", 6).items() if k != "zone"})


def test_apply_events_decodes_skips_and_flushes_a_due_group_at_the_end_of_the_batch(config) -> None:
    # The state stage's one apply block (worker.StateStage over pipeline.apply_events): an undecodable event is
    # skipped, a tick right after another is dropped, hits are applied, and the group they made due (group_wait 0)
    # is flushed before the batch ends, its notification handed out for delivery once.
    from services.alerts.pipeline import TickGate, apply_events
    from shared.codec import dumps

    tables = {k: {} for k in NAMES}
    now = [1000.0]
    proc = Processor(config, AlertsSettings(coalesce_s=0.0), **tables, silences={}, schedule=Schedule())
    ticks = TickGate(interval_s=1.0)
    raws = [
        b"{not json",
        dumps({"no": "type"}),
        dumps({"type": "tick"}),
        dumps({"type": "tick"}),
        dumps(hits(config, record("s1", "z1", 1), record("s2", "z1", 2))),
    ]
    outcome = apply_events(proc, raws, 0, ticks, clock=lambda: now[0])
    fps = {fingerprint({"alertname": "A", "site": "a", "zone": "z1", "sensor": s}) for s in ("s1", "s2")}
    assert set(outcome.mirror) == fps and all(a["status"] == "firing" for a in outcome.mirror.values())
    [entry] = outcome.dispatch.values()
    assert {a["labels"]["sensor"] for a in entry["notification"]["alerts"]} == {"s1", "s2"}
    assert entry["id"] in tables["outbox"]
    # the tick in the batch ran at 1000 s and the end-of-batch flush since: the next tick is due half an interval on
    assert not ticks.admit(0, 1000.4) and ticks.admit(0, 1000.6)


def test_outcome_keeps_the_last_word_on_each_alert() -> None:
    from services.alerts.pipeline import Changes, Outcome

    outcome = Outcome()
    outcome.add(Changes(alerts={"a": {"v": 1}, "b": {"v": 1}}, dispatch=[{"id": "n1", "x": 1}]))
    outcome.add(Changes(removed=["a"], dispatch=[{"id": "n1", "x": 2}]))
    outcome.add(Changes(alerts={"a": {"v": 2}}))
    assert outcome.mirror == {"a": {"v": 2}, "b": {"v": 1}}
    assert outcome.dispatch == {"n1": {"id": "n1", "x": 2}}
