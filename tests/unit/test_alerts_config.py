"""The alerts YAML: the shipped default loads; every mistake is reported with file, place and field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.alerts.config import ConfigError, load_config, parse_config
from services.alerts.settings import DEFAULT_CONFIG

BASE = {
    "rules": [
        {
            "name": "SensorAnomaly",
            "source": "anomaly",
            "when": ["score >= threshold"],
            "labels": {"site": "{site}", "zone": "{zone}", "sensor": "{sensor_id}", "severity": "{severity}"},
            "annotations": {"summary": "{sensor_id} {score:.2f}"},
        }
    ],
    "route": {"receiver": "hook", "group_by": ["site", "zone", "alertname"]},
    "receivers": [{"name": "hook", "webhook_configs": [{"url": "http://127.0.0.1:1/x", "secret_env": "HOOK_SECRET"}]}],
}
ENV = {"HOOK_SECRET": "s3cr3t-value"}


def cfg(mutate=None, env=ENV):
    data = copy.deepcopy(BASE)
    if mutate:
        mutate(data)
    return parse_config(data, "alerts.yaml", env)


def error(mutate, env=ENV) -> str:
    with pytest.raises(ConfigError) as info:
        cfg(mutate, env)
    return str(info.value)


def test_default_config_loads_and_routes_critical_to_oncall():
    config = load_config(DEFAULT_CONFIG, env={})
    assert {r.source for r in config.rules} == {"anomaly", "risk", "sensor_event", "quarantine", "report", "drift"}
    routes = config.route.match({"alertname": "ZoneIncidentRisk", "severity": "critical", "site": "s", "zone": "z"})
    assert [r.receiver for r in routes] == ["oncall"]
    assert [r.receiver for r in config.route.match({"severity": "warning"})] == ["stream"]


def test_secret_is_read_from_env_and_never_shown_in_repr():
    config = cfg()
    hook = config.receivers["hook"].webhooks[0]
    assert hook.secret == b"s3cr3t-value"
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["rules"][0]["when"].__setitem__(0, "scor >= 1"),
            "rules[0] 'SensorAnomaly': when[0]: condition 'scor >= 1': unknown field 'scor'",
        ),
        (lambda d: d["rules"][0]["when"].__setitem__(0, "score >>= 1"), "when[0]: cannot parse condition"),
        (lambda d: d["rules"][0].__setitem__("source", "weather"), "source: unknown source 'weather'"),
        (
            lambda d: d["rules"][0]["labels"].__setitem__("zone", "{zoen}"),
            "labels.zone: template '{zoen}': unknown field 'zoen'",
        ),
        (lambda d: d["rules"][0].__setitem__("resolve_after", "5 minutes"), "resolve_after: not a duration"),
        (lambda d: d["rules"][0].__setitem__("colour", "red"), "rules[0] 'SensorAnomaly': colour: unknown field"),
        (lambda d: d["rules"].append(copy.deepcopy(d["rules"][0])), "rules[1] 'SensorAnomaly': name: duplicate"),
        (lambda d: d["route"].__setitem__("receiver", "nobody"), "route root: receiver: unknown receiver 'nobody'"),
        (
            lambda d: d["route"].__setitem__("group_by", ["alertname"]),
            "route root: group_by: must include the shard labels",
        ),
        (
            lambda d: d["route"].__setitem__("routes", [{"matchers": ['zone=~"("']}]),
            "route root/0: matchers: bad regular expression",
        ),
        (
            lambda d: d["receivers"][0]["webhook_configs"][0].__setitem__("url", "ftp://x"),
            "webhook_configs[0]: url: must be an http(s) URL",
        ),
        (
            lambda d: d.__setitem__(
                "inhibit_rules", [{"source_matchers": ['a="b"'], "target_matchers": [], "equal": ["zone"]}]
            ),
            "inhibit_rules[0]: equal: must include the shard labels",
        ),
        (
            lambda d: d["route"].__setitem__("mute_time_intervals", ["night"]),
            "route root: mute_time_intervals: unknown time interval 'night'",
        ),
        (
            lambda d: d.__setitem__(
                "time_intervals",
                [{"name": "night", "time_intervals": [{"times": [{"start_time": "22:00", "end_time": "06:00"}]}]}],
            ),
            "time_intervals[0]: time_intervals[0]: start_time 22:00 must be before end_time",
        ),
        (
            lambda d: d["rules"][0].__setitem__("rate_limit", {"max_alerts": 5, "collapse_by": ["utility"]}),
            "rate_limit: collapse_by: ['utility'] are not labels of this rule",
        ),
    ],
)
def test_errors_name_file_place_and_field(mutate, expected):
    message = error(mutate)
    assert message.startswith("alerts.yaml: ")
    assert expected in message


def test_missing_secret_env_is_named_without_value():
    message = error(None, env={})
    assert "secret_env: environment variable HOOK_SECRET is not set" in message


def test_secret_file(tmp_path: Path):
    secret = tmp_path / "hook.secret"
    secret.write_text("from-file\n")

    def mutate(d):
        d["receivers"][0]["webhook_configs"][0].pop("secret_env")
        d["receivers"][0]["webhook_configs"][0]["secret_file"] = str(secret)

    assert cfg(mutate, env={}).receivers["hook"].webhooks[0].secret == b"from-file"


def test_route_children_inherit_and_continue():
    def mutate(d):
        d["route"]["group_wait"] = "1s"
        d["route"]["routes"] = [
            {"matchers": ['severity="critical"'], "continue": True, "repeat_interval": "1h"},
            {"matchers": ['zone=~"z[0-9]+"']},
            {"matchers": ['zone="z1"']},
        ]

    config = cfg(mutate)
    hits = config.route.match({"severity": "critical", "zone": "z1"})
    assert [r.path for r in hits] == ["root/0", "root/1"]  # continue on 0; 1 matches and stops
    assert hits[0].group_wait_s == 1.0 and hits[0].repeat_interval_s == 3600.0
    assert [r.path for r in config.route.match({"zone": "x"})] == ["root"]


def test_env_expansion_in_file(tmp_path: Path):
    data = copy.deepcopy(BASE)
    data["receivers"][0]["webhook_configs"][0]["url"] = "${HOOK_URL}"
    path = tmp_path / "a.yaml"
    path.write_text("# ${NOT_EXPANDED} in a comment\n" + yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="HOOK_URL is not set"):
        load_config(path, env=ENV)
    assert load_config(path, env={**ENV, "HOOK_URL": "http://h/x"}).receivers["hook"].webhooks[0].url == "http://h/x"


def test_unreadable_and_invalid_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
