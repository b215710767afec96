"""The pure alert core: rules, fingerprints, lifecycle, group timers, silences, inhibition, rate limit, mute."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from services.alerts import transitions
from services.alerts.config import parse_config
from services.alerts.labels import fingerprint
from services.alerts.matchers import MatcherError, parse_matcher
from services.alerts.rules import merge
from services.alerts.silences import SilenceError, new_silence
from services.alerts.timeintervals import parse_time_range

CONFIG = {
    "rules": [
        {
            "name": "SensorAnomaly",
            "source": "anomaly",
            "when": ["score >= threshold"],
            "labels": {"site": "{site}", "zone": "{zone}", "sensor": "{sensor_id}", "severity": "{severity}"},
            "annotations": {"summary": "{sensor_id} scored {score:.2f}"},
            "resolve_after": "60s",
            "rate_limit": {"max_alerts": 3, "per": "60s", "collapse_by": ["site", "zone"]},
        },
        {
            "name": "ZoneIncidentRisk",
            "source": "risk",
            "when": ["probability >= 0.7", "incident_type == leak"],
            "resolve_when": ["probability < 0.3"],
            "labels": {"site": "{site}", "zone": "{zone}", "kind": "{incident_type}", "severity": "critical"},
        },
    ],
    "route": {
        "receiver": "hook",
        "group_by": ["site", "zone", "alertname"],
        "group_wait": "10s",
        "group_interval": "60s",
        "repeat_interval": "1h",
        "routes": [{"matchers": ['zone="quiet"'], "mute_time_intervals": ["always"]}],
    },
    "time_intervals": [
        {"name": "always", "time_intervals": [{"times": [{"start_time": "00:00", "end_time": "24:00"}]}]}
    ],
    "inhibit_rules": [
        {
            "source_matchers": ['alertname="ZoneIncidentRisk"', 'kind="leak"'],
            "target_matchers": ['alertname="SensorAnomaly"'],
            "equal": ["site", "zone"],
        }
    ],
    "receivers": [{"name": "hook", "webhook_configs": [{"url": "http://127.0.0.1:1/x"}]}],
}
T0 = 1_700_000_000.0


@pytest.fixture
def config():
    return parse_config(copy.deepcopy(CONFIG), "t.yaml", {})


def anomaly(sensor="s1", zone="z1", score=0.9, ts=1, **kw):
    return {
        "sensor_id": sensor,
        "ts": ts,
        "site": "a",
        "zone": zone,
        "utility": "water",
        "asset": "pipe",
        "score": score,
        "threshold": 0.5,
        "model_version": "1",
        "reason": "pressure drop",
        "severity": "warning",
        **kw,
    }


def risk(p, zone="z1"):
    return {
        "site": "a",
        "zone": zone,
        "utility": "water",
        "ts": 5,
        "horizon_s": 600,
        "probability": p,
        "incident_type": "leak",
    }


class World:
    """Tables as dicts, driven the way the Faust agent drives them."""

    def __init__(self, config):
        self.config, self.alerts, self.groups, self.limits, self.silences, self.sent = config, {}, {}, {}, [], []

    def observe(self, source, record, now_s):
        for rule in self.config.rules_for(source):
            obs = rule.evaluate(record)
            if obs is None:
                continue
            now_ms = int(now_s * 1000)
            prev = self.alerts.get(obs.fingerprint)
            if (prev is None or prev["status"] != "firing") and not obs.resolve and rule.rate_limit:
                key = transitions.limit_key(rule, obs.labels)
                obs, window = transitions.rate_limit(rule, obs, self.limits.get(key), now_ms)
                self.limits[key] = window
                prev = self.alerts.get(obs.fingerprint)
            new = transitions.apply_observation(prev, obs, now_ms)
            if new is None:
                continue
            self.alerts[obs.fingerprint] = new
            if new["status"] == "firing":
                for route, key, glabels in transitions.routes_for(self.config, new["labels"]):
                    g = transitions.add_to_group(self.groups.get(key), route, key, glabels, obs.fingerprint, now_s, 0)
                    if g is not None:
                        self.groups[key] = g

    def keep_firing(self, sensors, start, end, step=30):
        """Observe the sensors every ``step`` s (inside their 60 s quiet period) and tick; what was sent."""
        sent = []
        t = start
        while t < end:
            for s in sensors:
                self.observe("anomaly", anomaly(s), t)
            sent += self.tick(t)
            t += step
        return sent

    def tick(self, now_s):
        now_ms = int(now_s * 1000)
        for fp, a in list(self.alerts.items()):
            r = transitions.resolve_if_quiet(a, now_ms)
            if r:
                self.alerts[fp] = r
        sup = transitions.Suppression.build(
            self.config, self.silences, [a for a in self.alerts.values() if a["status"] == "firing"], now_ms
        )
        out = []
        for key, g in list(self.groups.items()):
            f = transitions.flush_group(self.config, g, self.alerts, sup, now_s)
            if f is None:
                continue
            if f.group is None:
                del self.groups[key]
            else:
                self.groups[key] = f.group
            if f.notification:
                out.append(f.notification)
        self.sent += out
        return out


def test_rule_renders_labels_and_fingerprint_is_order_independent(config):
    obs = config.rules[0].evaluate(anomaly())
    assert obs.labels == {
        "alertname": "SensorAnomaly",
        "site": "a",
        "zone": "z1",
        "sensor": "s1",
        "severity": "warning",
    }
    assert obs.annotations == {"summary": "s1 scored 0.90"}
    assert obs.fingerprint == fingerprint(dict(reversed(list(obs.labels.items()))))
    assert config.rules[0].evaluate(anomaly(score=0.1)) is None
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})


def test_merge_collapses_a_batch_per_fingerprint(config):
    rule = config.rules[0]
    batch = [rule.evaluate(anomaly(ts=i)) for i in range(1000)] + [rule.evaluate(anomaly(sensor="s2"))]
    merged = merge(batch)
    assert len(merged) == 2
    assert {m.labels["sensor"]: m.count for m in merged} == {"s1": 1000, "s2": 1}
    assert next(m for m in merged if m.labels["sensor"] == "s1").ts == 999


def test_group_wait_then_interval_then_repeat(config):
    w = World(config)
    w.observe("anomaly", anomaly("s1"), T0)
    assert w.tick(T0 + 9) == []  # group_wait 10s not over
    w.observe("anomaly", anomaly("s2"), T0 + 5)
    [n] = w.tick(T0 + 10)
    assert n["status"] == "firing" and len(n["alerts"]) == 2 and n["version"] == "4"
    assert n["groupLabels"] == {"alertname": "SensorAnomaly", "site": "a", "zone": "z1"}
    assert n["commonLabels"]["zone"] == "z1" and "sensor" not in n["commonLabels"]
    w.observe("anomaly", anomaly("s3"), T0 + 20)
    assert w.tick(T0 + 30) == []  # a change waits for group_interval
    w.observe("anomaly", anomaly("s1"), T0 + 40)
    w.observe("anomaly", anomaly("s2"), T0 + 40)
    [n2] = w.tick(T0 + 70)
    assert len(n2["alerts"]) == 3 and n2["id"] != n["id"]
    assert w.keep_firing(("s1", "s2", "s3"), T0 + 70, T0 + 3660) == []  # unchanged: no repeat before 1h
    [n3] = w.keep_firing(("s1", "s2", "s3"), T0 + 3660, T0 + 3760)
    assert len(n3["alerts"]) == 3 and n3["status"] == "firing"


def test_resolve_after_quiet_period_is_notified_once_then_group_ends(config):
    w = World(config)
    w.observe("anomaly", anomaly("s1"), T0)
    w.tick(T0 + 10)
    assert w.tick(T0 + 59) == []
    [n] = w.tick(T0 + 71)  # quiet 60s → resolved, flushed at next group_interval
    assert n["status"] == "resolved" and n["alerts"][0]["status"] == "resolved"
    assert n["alerts"][0]["endsAt"].startswith("2023-11-14T22:14:31")
    assert w.groups == {}
    assert w.tick(T0 + 200) == []


def test_explicit_resolve_and_refire(config):
    w = World(config)
    w.observe("risk", risk(0.9), T0)
    [n] = w.tick(T0 + 10)
    assert n["alerts"][0]["labels"]["kind"] == "leak"
    w.observe("risk", risk(0.5), T0 + 20)  # neither fires nor resolves
    assert w.tick(T0 + 70) == []
    w.observe("risk", risk(0.1), T0 + 80)
    [r] = w.tick(T0 + 130)
    assert r["status"] == "resolved"
    w.observe("risk", risk(0.95), T0 + 140)
    [again] = w.tick(T0 + 150)
    assert again["status"] == "firing" and again["id"] not in {n["id"], r["id"]}


def test_resolved_before_group_wait_is_never_notified(config):
    w = World(config)
    w.observe("risk", risk(0.9), T0)
    w.observe("risk", risk(0.1), T0 + 1)
    assert w.tick(T0 + 10) == []
    assert w.groups == {}


def test_inhibition_zone_leak_silences_its_sensors_only(config):
    w = World(config)
    w.observe("risk", risk(0.9, zone="z1"), T0)
    w.observe("anomaly", anomaly("s1", zone="z1"), T0)
    w.observe("anomaly", anomaly("s9", zone="z2"), T0)
    sent = w.tick(T0 + 10)
    names = sorted((n["groupLabels"]["alertname"], n["groupLabels"]["zone"]) for n in sent)
    assert names == [("SensorAnomaly", "z2"), ("ZoneIncidentRisk", "z1")]
    w.observe("anomaly", anomaly("s1", zone="z1"), T0 + 40)
    w.observe("risk", risk(0.1, zone="z1"), T0 + 20)  # the leak resolves: the sensor alert is told
    sent = w.tick(T0 + 70)
    z1 = [n for n in sent if n["groupLabels"]["zone"] == "z1"]
    assert {n["groupLabels"]["alertname"]: n["status"] for n in z1} == {
        "ZoneIncidentRisk": "resolved",
        "SensorAnomaly": "firing",
    }


def test_silence_hides_matching_alerts_until_it_expires(config):
    w = World(config)
    sil = new_silence(
        {"matchers": ['sensor="s1"'], "endsAt": int((T0 + 100) * 1000), "comment": "maintenance"},
        int(T0 * 1000),
        "ann",
    )
    w.silences = [sil]
    w.observe("anomaly", anomaly("s1"), T0)
    w.observe("anomaly", anomaly("s2"), T0)
    [n] = w.tick(T0 + 10)
    assert [a["labels"]["sensor"] for a in n["alerts"]] == ["s2"]
    for s in ("s1", "s2"):
        w.observe("anomaly", anomaly(s), T0 + 100)
    [n2] = w.tick(T0 + 130)  # silence over: s1 appears
    assert sorted(a["labels"]["sensor"] for a in n2["alerts"]) == ["s1", "s2"]


def test_silence_validation():
    now = int(T0 * 1000)
    ok = {"matchers": ['zone="z1"'], "endsAt": now + 1000, "comment": "why"}
    assert new_silence(ok, now, "ann")["starts_at"] == now
    for bad, msg in [
        ({**ok, "matchers": []}, "at least one matcher"),
        ({**ok, "matchers": ['zone=~".*"']}, "would silence every alert"),
        ({**ok, "endsAt": now - 1}, "endsAt"),
        ({**ok, "comment": ""}, "comment"),
        ({**ok, "startsAt": "yesterday"}, "RFC 3339"),
        ({**ok, "matchers": ["=zone"]}, "matchers"),
    ]:
        with pytest.raises(SilenceError, match=msg):
            new_silence(bad, now, "ann")


def test_ack_stops_repeats_but_not_changes(config):
    w = World(config)
    w.observe("anomaly", anomaly("s1"), T0)
    w.tick(T0 + 10)
    fp = next(iter(w.alerts))
    w.alerts[fp] = transitions.acknowledge(w.alerts[fp], "ann", int(T0 * 1000))
    assert w.keep_firing(("s1",), T0 + 30, T0 + 3800) == []  # repeat suppressed
    [n] = w.keep_firing(("s1", "s2"), T0 + 3800, T0 + 3900)
    assert len(n["alerts"]) == 2


def test_rate_limit_folds_a_flood_into_one_alert_and_one_notification(config):
    w = World(config)
    for i in range(10_000):
        w.observe("anomaly", anomaly(f"s{i}", ts=i), T0 + i * 0.005)  # 10,000 sensors within a minute
    firing = [a for a in w.alerts.values() if a["status"] == "firing"]
    assert len(firing) == 4  # 3 allowed + 1 flood alert
    flood = next(a for a in firing if a["labels"].get("flood") == "true")
    assert flood["count"] == 9_997 and flood["labels"]["zone"] == "z1" and "sensor" not in flood["labels"]
    [sent] = w.tick(T0 + 55)  # one notification, not 10,000
    assert len(sent["alerts"]) == 4
    assert next(a for a in sent["alerts"] if a["labels"].get("flood"))["annotations"]["folded_hits"] == "9997"


def test_mute_time_interval_holds_notifications(config):
    w = World(config)
    w.observe("anomaly", anomaly("s1", zone="quiet"), T0)
    assert w.tick(T0 + 10) == []
    assert len(w.groups) == 1  # kept, not dropped: sent when the mute ends


def test_time_ranges():
    r = parse_time_range({"times": [{"start_time": "09:00", "end_time": "17:00"}], "weekdays": ["monday:friday"]})
    monday_10 = datetime(2026, 1, 5, 10, tzinfo=UTC).timestamp()
    assert r.contains(monday_10)
    assert not r.contains(monday_10 + 8 * 3600)  # 18:00
    assert not r.contains(monday_10 + 5 * 86400)  # saturday
    last_day = parse_time_range({"days_of_month": ["-1"], "location": "Europe/Paris"})
    assert last_day.contains(datetime(2026, 2, 28, 12, tzinfo=UTC).timestamp())
    assert not last_day.contains(datetime(2026, 2, 27, 12, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("spec", "labels", "hit"),
    [
        ('zone="z1"', {"zone": "z1"}, True),
        ("zone=z1", {"zone": "z2"}, False),
        ('zone!="z1"', {}, True),
        ('zone=~"z[0-9]"', {"zone": "z12"}, False),  # anchored
        ('zone!~"z.*"', {"zone": "a"}, True),
        ({"name": "zone", "value": "z.*", "isRegex": True, "isEqual": True}, {"zone": "z3"}, True),
    ],
)
def test_matchers(spec, labels, hit):
    assert parse_matcher(spec).matches(labels) is hit


def test_bad_matchers():
    for bad in ("zone", "1zone=x", 'zone=~"("', 5):
        with pytest.raises(MatcherError):
            parse_matcher(bad)


def test_evaluate_batch_rejects_bad_input_with_reasons_and_counts_quarantine_windows(config):
    from services.alerts.evaluate import evaluate_batch
    from shared.codec import dumps

    items = [("anomalies", dumps(anomaly("s1", ts=i))) for i in range(5)]
    items += [("anomalies", b"{broken"), ("anomalies", dumps({"sensor_id": "no-other-fields"}))]
    items += [("anomalies", b"[1, 2]"), ("risk", b"null"), ("anomalies", b"42")]  # JSON, but not objects
    items += [("readings.quarantine", dumps({"payload": {}, "source": "mqtt", "reasons": ["x"], "received_ms": 1}))] * 3
    items += [("risk", dumps(risk(0.95)))]
    result = evaluate_batch(config, items, window_s=60, now_s=T0)
    assert [i for i, _ in result.rejected] == [5, 6, 7, 8, 9]  # where they were, for the dead letters
    assert "Anomaly" in result.rejected[0][1] and "JSONDecodeError" in result.rejected[0][1]
    assert "must be a JSON object" in result.rejected[2][1]
    assert dict(result.evaluated) == {"anomalies": 5, "readings.quarantine": 3, "risk": 1}
    assert sorted(o.rule for o in result.observations) == ["SensorAnomaly", "ZoneIncidentRisk"]
    assert next(o for o in result.observations if o.rule == "SensorAnomaly").count == 5
    assert dict(result.quarantined) == {("mqtt", int(T0 // 60) * 60_000): 3}


def test_flood_gate_folds_in_stage_one(config):
    from services.alerts.evaluate import FloodGate, evaluate_batch
    from shared.codec import dumps

    gate = FloodGate()
    items = [("anomalies", dumps(anomaly(f"s{i}"))) for i in range(10_000)]
    result = evaluate_batch(config, items, window_s=60, now_s=T0, gate=gate)
    assert len(result.observations) == 4  # 3 under the limit + 1 folded, for 10,000 hits
    [flood] = [o for o in result.observations if o.labels.get("flood")]
    assert flood.count == 9_997
    again = evaluate_batch(config, items[:3], window_s=60, now_s=T0 + 1, gate=gate)
    assert not any(o.labels.get("flood") for o in again.observations)  # the admitted ones stay admitted
    later = evaluate_batch(config, items[5:6], window_s=60, now_s=T0 + 61, gate=gate)
    assert not later.observations[0].labels.get("flood")  # a new window


def test_a_record_whose_alert_cannot_be_encoded_is_rejected_not_sent(config):
    from services.alerts.evaluate import evaluate_batch
    from shared.codec import dumps

    # A float time far beyond 64-bit milliseconds becomes an integer orjson cannot write: sending the hit would
    # raise out of the stage on every retry (found by the topic fuzzer), so the record is set aside instead.
    items = [("anomalies", dumps(anomaly("s1", ts=1e308))), ("anomalies", dumps(anomaly("s2", ts=5)))]
    result = evaluate_batch(config, items, window_s=60, now_s=T0)
    assert result.rejected == [(0, "alerts: rule SensorAnomaly made an alert that cannot be encoded")]
    assert dict(result.evaluated) == {"anomalies": 1}
    assert [o.labels["sensor"] for o in result.observations] == ["s2"]
