"""The alert state machine, without Kafka: pure functions over plain dicts (the table values).

Every function returns new dicts and never mutates its inputs, so the Faust layer
always *reassigns* table values (design pitfall 4).

* :func:`apply_observation` — dedup by fingerprint; firing, re-firing, explicit resolve.
* :func:`resolve_if_quiet` — firing → resolved after the rule's quiet period.
* :func:`flush_group` — Alertmanager's aggregation-group timers (group_wait,
  group_interval, repeat_interval) with silences, inhibition, acks and mute
  intervals applied; returns the notification to send, if any.
* :func:`rate_limit` — per-rule flood protection folding excess new alerts into one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.alerts.config import Config, InhibitRule, Route
from services.alerts.labels import fingerprint, group_key, group_labels
from services.alerts.matchers import Matcher, match_all
from services.alerts.rules import Observation, Rule
from services.alerts.silences import matchers_of, rfc3339, status

Alert = dict[str, Any]
Group = dict[str, Any]


# ----------------------------------------------------------------------------------------------- alerts


def apply_observation(alert: Alert | None, obs: Observation, now_ms: int, partition: int = 0) -> Alert | None:
    """The alert after this observation, or None when nothing changes (resolve of an unknown alert)."""
    if obs.resolve:
        if alert is None or alert["status"] != "firing":
            return None
        return {**alert, "status": "resolved", "ends_at": now_ms, "updated_at": now_ms}
    if obs.labels.get("flood") == "true":
        total = obs.count + (alert["count"] if alert is not None and alert["status"] == "firing" else 0)
        obs = Observation(**{**obs.to_dict(), "annotations": {**obs.annotations, "folded_hits": str(total)}})
    if alert is None or alert["status"] != "firing":
        return {
            "fingerprint": obs.fingerprint,
            "rule": obs.rule,
            "labels": dict(obs.labels),
            "annotations": dict(obs.annotations),
            "status": "firing",
            "starts_at": obs.ts or now_ms,
            "ends_at": 0,
            "last_seen": now_ms,
            "resolve_after_s": obs.resolve_after_s,
            "updated_at": now_ms,
            "count": obs.count,
            "acked_by": "",
            "acked_at": 0,
            "partition": partition,
        }
    return {
        **alert,
        "annotations": dict(obs.annotations) or alert["annotations"],
        "last_seen": max(alert["last_seen"], now_ms),
        "count": alert["count"] + obs.count,
        "updated_at": now_ms,
    }


def resolve_if_quiet(alert: Alert, now_ms: int) -> Alert | None:
    """Resolved copy of a firing alert not seen for its quiet period, else None."""
    if alert["status"] != "firing":
        return None
    if now_ms - alert["last_seen"] < alert["resolve_after_s"] * 1000:
        return None
    return {**alert, "status": "resolved", "ends_at": now_ms, "updated_at": now_ms}


def acknowledge(alert: Alert, who: str, now_ms: int, comment: str = "") -> Alert:
    return {**alert, "acked_by": who, "acked_at": now_ms, "ack_comment": comment, "updated_at": now_ms}


def rate_limit(
    rule: Rule, obs: Observation, window: Mapping[str, Any] | None, now_ms: int
) -> tuple[Observation, dict[str, Any] | None]:
    """Flood protection for a *new* alert of a rate-limited rule.

    Returns the observation to apply (the original, or the rule's flood alert that
    stands for every new alert over the limit) and the new window state to store.
    """
    rl = rule.rate_limit
    if rl is None:
        return obs, None
    per_ms = int(rl.per_s * 1000)
    if window is None or now_ms - window["start"] >= per_ms:
        window = {"start": now_ms, "count": 0, "folded": 0}
    if window["count"] < rl.max_alerts:
        return obs, {**window, "count": window["count"] + 1}
    window = {**window, "folded": window["folded"] + obs.count}
    return fold(rule, obs), window


def fold(rule: Rule, obs: Observation) -> Observation:
    """The rule's flood alert standing for ``obs``: same alertname (so it joins the rule's group), no sensor."""
    rl = rule.rate_limit
    if rl is None or obs.labels.get("flood") == "true":
        return obs
    labels = {"alertname": rule.name, "flood": "true"}
    labels.update({k: obs.labels[k] for k in rl.collapse_by if k in obs.labels})
    if "severity" in obs.labels:
        labels["severity"] = obs.labels["severity"]
    where = ", ".join(f"{k}={obs.labels[k]}" for k in rl.collapse_by if k in obs.labels) or "everywhere"
    return Observation(
        fingerprint=fingerprint(labels),
        rule=obs.rule,
        labels=labels,
        annotations={
            "summary": f"{rule.name}: more than {rl.max_alerts} new alerts within {rl.per_s:g}s ({where})",
            "description": f"Further {rule.name} hits beyond the rate limit are folded into this alert "
            "(folded_hits counts them); treat the area as one incident.",
        },
        ts=obs.ts,
        resolve_after_s=obs.resolve_after_s,
        count=obs.count,
    )


def limit_key(rule: Rule, labels: Mapping[str, str]) -> str:
    collapse = rule.rate_limit.collapse_by if rule.rate_limit else ()
    return rule.name + "|" + "|".join(labels.get(k, "") for k in collapse)


# ----------------------------------------------------------------------------------------------- groups


def routes_for(config: Config, labels: Mapping[str, str]) -> list[tuple[Route, str, dict[str, str]]]:
    """``(route, group key, group labels)`` for every route the alert goes to."""
    out = []
    for route in config.route.match(dict(labels)):
        glabels = group_labels(labels, route.group_by)
        out.append((route, group_key(route.path, glabels), glabels))
    return out


def add_to_group(
    group: Group | None, route: Route, key: str, glabels: dict[str, str], fp: str, now_s: float, partition: int
) -> Group | None:
    """The group with this alert in it; None when it is already there (no write needed)."""
    if group is None:
        return {
            "key": key,
            "route": route.path,
            "receiver": route.receiver,
            "labels": glabels,
            "fingerprints": [fp],
            "created_at": now_s,
            "next_flush_at": now_s + route.group_wait_s,
            "last_notified": {},
            "last_notified_at": 0.0,
            "seq": 0,
            "partition": partition,
        }
    if fp in group["fingerprints"]:
        return None
    return {**group, "fingerprints": [*group["fingerprints"], fp]}


@dataclass
class Suppression:
    """What keeps alerts quiet at one moment: active silences, firing inhibitors, the time of day."""

    silences: list[tuple[str, tuple[Matcher, ...]]] = field(default_factory=list)
    inhibitors: list[tuple[InhibitRule, dict[tuple[str, ...], set[str]]]] = field(default_factory=list)

    @classmethod
    def build(
        cls, config: Config, silences: Iterable[Mapping[str, Any]], firing: Iterable[Alert], now_ms: int
    ) -> Suppression:
        active = [(s["id"], matchers_of(s)) for s in silences if status(s, now_ms) == "active"]
        firing = list(firing)
        inhibitors = []
        for rule in config.inhibit_rules:
            sources: dict[tuple[str, ...], set[str]] = {}
            for a in firing:
                if match_all(rule.source_matchers, a["labels"]):
                    sources.setdefault(tuple(a["labels"].get(k, "") for k in rule.equal), set()).add(a["fingerprint"])
            inhibitors.append((rule, sources))
        return cls(active, inhibitors)

    def silenced_by(self, labels: Mapping[str, str]) -> list[str]:
        return [sid for sid, ms in self.silences if match_all(ms, labels)]

    def inhibited(self, alert: Alert) -> bool:
        labels = alert["labels"]
        for rule, sources in self.inhibitors:
            if not sources or not match_all(rule.target_matchers, labels):
                continue
            # An alert that is itself a source of this rule does not inhibit itself.
            if sources.get(tuple(labels.get(k, "") for k in rule.equal), set()) - {alert["fingerprint"]}:
                return True
        return False


def is_inhibitor(config: Config, labels: Mapping[str, str]) -> bool:
    """Whether an alert with these labels can inhibit others (matches a rule's source matchers)."""
    return any(match_all(rule.source_matchers, labels) for rule in config.inhibit_rules)


def muted(config: Config, route: Route, now_s: float) -> bool:
    intervals = config.time_intervals
    if any(intervals[n].contains(now_s) for n in route.mute_time_intervals):
        return True
    return bool(route.active_time_intervals) and not any(
        intervals[n].contains(now_s) for n in route.active_time_intervals
    )


def alert_view(alert: Alert, external_url: str = "") -> dict[str, Any]:
    """An alert as Alertmanager's webhook v4 shows it."""
    return {
        "status": alert["status"],
        "labels": alert["labels"],
        "annotations": alert["annotations"],
        "startsAt": rfc3339(alert["starts_at"]),
        "endsAt": rfc3339(alert["ends_at"]),
        "generatorURL": f"{external_url.rstrip('/')}/v1/alerts/{alert['fingerprint']}" if external_url else "",
        "fingerprint": alert["fingerprint"],
    }


def _common(dicts: list[Mapping[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def notification_id(key: str, created_at: float, seq: int) -> str:
    """Stable across retries and crashes; new for every flush (seq) and every incarnation of the group."""
    return hashlib.blake2b(f"{key}#{created_at!r}#{seq}".encode(), digest_size=12).hexdigest()


@dataclass
class Flush:
    """What a group flush decided: the group to store (None = delete) and the notification to send."""

    group: Group | None
    notification: dict[str, Any] | None = None
    reason: str = ""


def flush_group(
    config: Config,
    group: Group,
    alerts: Mapping[str, Alert],
    suppression: Suppression,
    now_s: float,
) -> Flush | None:
    """Run a group's timer if due. None when not due (nothing to write)."""
    if now_s < group["next_flush_at"]:
        return None
    route = config.routes().get(group["route"])
    if route is None:  # config changed and the route is gone: forget the group
        return Flush(None, reason="route removed")
    members = [alerts[fp] for fp in group["fingerprints"] if fp in alerts]
    prev: dict[str, str] = group["last_notified"]
    current: dict[str, str] = {}
    for a in members:
        if a["status"] == "firing":
            if not suppression.silenced_by(a["labels"]) and not suppression.inhibited(a):
                current[a["fingerprint"]] = "firing"
        elif prev.get(a["fingerprint"]) == "firing":
            current[a["fingerprint"]] = "resolved"
    # Resolved alerts never told as firing leave quietly; so do alerts that vanished from the table.
    keep = [a["fingerprint"] for a in members if a["status"] == "firing" or a["fingerprint"] in current]
    next_group = {**group, "fingerprints": keep, "next_flush_at": now_s + route.group_interval_s}
    if muted(config, route, now_s):
        return Flush(next_group, reason="muted")
    firing_now = {fp for fp, st in current.items() if st == "firing"}
    changed = current != {fp: st for fp, st in prev.items() if st == "firing"}
    unacked = any(not alerts[fp].get("acked_by") for fp in firing_now)
    repeat = not changed and firing_now and unacked and now_s - group["last_notified_at"] >= route.repeat_interval_s
    if not current or not (changed or repeat):
        if not current:
            next_group["last_notified"] = {}
        if not keep:
            return Flush(None, reason="empty")
        return Flush(next_group, reason="unchanged")
    seq = group["seq"] + 1
    sent = [alerts[fp] for fp in current]
    sent.sort(key=lambda a: (a["status"] != "firing", a["starts_at"], a["fingerprint"]))
    views = [alert_view(a, config.external_url) for a in sent]
    notification = {
        "id": notification_id(group["key"], group["created_at"], seq),
        "version": "4",
        "groupKey": group["key"],
        "truncatedAlerts": 0,
        "status": "firing" if firing_now else "resolved",
        "receiver": group["receiver"],
        "groupLabels": group["labels"],
        "commonLabels": _common([a["labels"] for a in sent]),
        "commonAnnotations": _common([a["annotations"] for a in sent]),
        "externalURL": config.external_url,
        "alerts": views,
    }
    remaining = [fp for fp in keep if current.get(fp) != "resolved"]
    next_group.update(
        fingerprints=remaining,
        last_notified={fp: "firing" for fp in firing_now},
        last_notified_at=now_s,
        seq=seq,
    )
    return Flush(next_group if remaining else None, notification, "repeat" if repeat else "changed")
