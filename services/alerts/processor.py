"""What the alert-state agent does with each event on its partition, over table-like mappings.

The Faust agent hands in its tables (dicts in unit tests) and the event's
partition; every write is a reassignment of a whole value (pitfall 4). Events:

* ``obs``       a rule hit (fire or resolve) for one fingerprint
* ``qcount``    quarantined readings counted by a worker in one window
* ``tick``      run timers: quiet resolves, group flushes, outbox dispatch
* ``ack``       an operator acknowledged an alert
* ``result``    a delivery finished (delivered, or sent to the DLQ)
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from services.alerts import engine
from services.alerts.config import Config
from services.alerts.metrics import ALERT_TRANSITIONS, NOTIFICATIONS, RULE_ERRORS
from services.alerts.rules import Observation
from services.alerts.settings import AlertsSettings

log = logging.getLogger(__name__)

Table = MutableMapping[str, Any]


@dataclass
class Changes:
    """What one event changed, for the Redis mirror and the dispatcher."""

    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)


class Processor:
    def __init__(
        self,
        config: Config,
        settings: AlertsSettings,
        *,
        alerts: Table,
        groups: Table,
        outbox: Table,
        limits: Table,
        counters: Table,
        silences: Any,
    ):
        self.config = config
        self.settings = settings
        self.alerts, self.groups, self.outbox = alerts, groups, outbox
        self.limits, self.counters, self.silences = limits, counters, silences

    # ------------------------------------------------------------------------------------------ events

    def handle(self, value: dict[str, Any], partition: int, now_s: float | None = None) -> Changes:
        now_s = time.time() if now_s is None else now_s
        kind = value.get("type")
        changes = Changes()
        if kind == "obs":
            self.on_observation(Observation.from_dict(value["obs"]), partition, now_s, changes)
        elif kind == "qcount":
            self.on_qcount(value, partition, now_s, changes)
        elif kind == "tick":
            self.on_tick(partition, now_s, changes)
        elif kind == "ack":
            self.on_ack(value, now_s, changes)
        elif kind == "result":
            self.on_result(value)
        else:
            log.warning("unknown internal event type %r ignored", kind)
        return changes

    def on_observation(self, obs: Observation, partition: int, now_s: float, changes: Changes) -> None:
        now_ms = int(now_s * 1000)
        prev = self.alerts.get(obs.fingerprint)
        rule = self.config.rule(obs.rule)
        if rule is not None and rule.rate_limit and not obs.resolve and (prev is None or prev["status"] != "firing"):
            key = engine.limit_key(rule, obs.labels)
            obs, window = engine.rate_limit(rule, obs, self.limits.get(key), now_ms)
            self.limits[key] = window
            prev = self.alerts.get(obs.fingerprint)
        new = engine.apply_observation(prev, obs, now_ms, partition)
        if new is None:
            return
        self.alerts[obs.fingerprint] = new
        changes.alerts[obs.fingerprint] = new
        if prev is None or prev["status"] != new["status"]:
            ALERT_TRANSITIONS.labels(obs.rule, new["status"]).inc()
        if new["status"] == "firing" and (prev is None or prev["status"] != "firing"):
            for route, key, glabels in engine.routes_for(self.config, new["labels"]):
                group = engine.add_to_group(
                    self.groups.get(key), route, key, glabels, obs.fingerprint, now_s, partition
                )
                if group is not None:
                    self.groups[key] = group

    def on_qcount(self, value: dict[str, Any], partition: int, now_s: float, changes: Changes) -> None:
        window_s = self.settings.quarantine_window_s
        start = int(value["window_start"])
        key = f"{value['source']}|{start}"
        count = int(self.counters.get(key) or 0) + int(value["n"])
        self.counters[key] = count
        record = {
            "source": value["source"],
            "count": count,
            "window_s": window_s,
            "window_start": start,
            "ts": int(now_s * 1000),
        }
        for rule in self.config.rules_for("quarantine"):
            try:
                obs = rule.evaluate(record)
            except (KeyError, ValueError, IndexError) as exc:
                RULE_ERRORS.labels(rule.name).inc()
                log.warning("rule %s cannot render quarantine count: %s", rule.name, exc)
                continue
            if obs is not None:
                self.on_observation(obs, partition, now_s, changes)

    def on_ack(self, value: dict[str, Any], now_s: float, changes: Changes) -> None:
        alert = self.alerts.get(value["fingerprint"])
        if alert is None:
            return
        new = engine.acknowledge(alert, value.get("by", ""), int(now_s * 1000), value.get("comment", ""))
        self.alerts[value["fingerprint"]] = new
        changes.alerts[value["fingerprint"]] = new

    def on_result(self, value: dict[str, Any]) -> None:
        nid = value["id"]
        if self.outbox.get(nid) is not None:
            del self.outbox[nid]
        NOTIFICATIONS.labels(value.get("receiver", ""), value.get("integration", ""), value["outcome"]).inc()

    # ------------------------------------------------------------------------------------------ timers

    def on_tick(self, partition: int, now_s: float, changes: Changes) -> None:
        now_ms = int(now_s * 1000)
        retention_ms = self.settings.resolved_retention_s * 1000
        firing: list[dict[str, Any]] = []
        mine: dict[str, dict[str, Any]] = {}
        for fp, alert in list(self.alerts.items()):
            if alert is None or alert.get("partition") != partition:
                continue
            resolved = engine.resolve_if_quiet(alert, now_ms)
            if resolved is not None:
                alert = resolved
                self.alerts[fp] = alert
                changes.alerts[fp] = alert
                ALERT_TRANSITIONS.labels(alert["rule"], "resolved").inc()
            elif alert["status"] == "resolved" and now_ms - alert["ends_at"] > retention_ms:
                del self.alerts[fp]
                changes.removed.append(fp)
                continue
            mine[fp] = alert
            if alert["status"] == "firing":
                firing.append(alert)
        silences = [s for s in self.silences.values() if s]
        suppression = engine.Suppression.build(self.config, silences, firing, now_ms)
        for key, group in list(self.groups.items()):
            if group is None or group.get("partition") != partition:
                continue
            flush = engine.flush_group(self.config, group, mine, suppression, now_s)
            if flush is None:
                continue
            if flush.group is None:
                del self.groups[key]
            else:
                self.groups[key] = flush.group
            if flush.notification is not None:
                self._enqueue(flush.notification, partition, now_s)
        for entry in list(self.outbox.values()):
            if entry is not None and entry.get("partition") == partition:
                changes.dispatch.append(entry)
        # Quarantine counters of windows long closed are not needed any more.
        horizon = now_ms - 2 * self.settings.quarantine_window_s * 1000
        for key in [k for k in self.counters.keys() if int(k.rsplit("|", 1)[1]) < horizon]:
            del self.counters[key]

    def _enqueue(self, notification: dict[str, Any], partition: int, now_s: float) -> None:
        """One outbox entry per integration of the receiver: written before anything is sent."""
        receiver = self.config.receivers.get(notification["receiver"])
        if receiver is None:
            return
        for integration, cfg in receiver.integrations():
            payload = notification
            if not cfg.send_resolved:
                firing = [a for a in notification["alerts"] if a["status"] == "firing"]
                if not firing:
                    continue
                payload = {**notification, "alerts": firing}
            nid = f"{notification['id']}-{integration.replace('/', '')}"
            self.outbox[nid] = {
                "id": nid,
                "receiver": receiver.name,
                "integration": integration,
                "partition": partition,
                "created_at": now_s,
                "notification": {**payload, "id": nid},
            }
