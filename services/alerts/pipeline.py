"""The pure core of the state stage: a partition's internal events in, alert changes and deliveries out.

No Kafka, no Faust: the worker (:mod:`services.alerts.worker`) hands in table-like mappings
(dicts in unit tests) and the events' partition; every write is a reassignment of a whole
value (pitfall 4). :func:`apply_events` runs one micro-batch of a partition through a
:class:`Processor` and says what changed (:class:`Outcome`); the state machine it applies
is :mod:`services.alerts.transitions`. Events:

* ``obs``       rule hits (fire or resolve), many fingerprints of this partition per event
* ``qcount``    quarantined readings counted by a worker in one window
* ``tick``      run timers: quiet resolves, group flushes, outbox dispatch
* ``ack``       an operator acknowledged an alert
* ``result``    a delivery finished (delivered, or sent to the DLQ)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from services.alerts import transitions
from services.alerts.config import Config
from services.alerts.evaluate import decode_internal
from services.alerts.metrics import ALERT_TRANSITIONS, NOTIFICATIONS, OBSERVATIONS, RULE_ERRORS
from services.alerts.rules import Observation
from services.alerts.settings import AlertsSettings
from shared.metrics import DECODE_ERRORS

log = logging.getLogger(__name__)

Table = MutableMapping[str, Any]


@dataclass
class Schedule:
    """When each partition next needs a look: an in-memory hint over the tables, reset on every rebalance.

    A partition the schedule knows nothing about is simply scanned, so losing this
    (restart, rebalance) costs one scan, never a missed timer.
    """

    next_flush: dict[int, float] = field(default_factory=dict)
    next_sweep: dict[int, float] = field(default_factory=dict)
    next_outbox: dict[int, float] = field(default_factory=dict)

    def note_flush(self, partition: int, at: float) -> None:
        if partition in self.next_flush:
            self.next_flush[partition] = min(self.next_flush[partition], at)

    def note_outbox(self, partition: int, at: float) -> None:
        if partition in self.next_outbox:
            self.next_outbox[partition] = min(self.next_outbox[partition], at)

    def due(self, partition: int, now_s: float) -> bool:
        """Whether a tick would find a timer due on ``partition`` (one never scanned always has)."""
        return now_s >= min(
            self.next_flush.get(partition, 0.0),
            self.next_sweep.get(partition, 0.0),
            self.next_outbox.get(partition, 0.0),
        )

    def reset(self) -> None:
        self.next_flush.clear()
        self.next_sweep.clear()
        self.next_outbox.clear()


@dataclass
class Changes:
    """What one event changed, for the Redis mirror and the dispatcher."""

    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TickGate:
    """Ticks can queue up behind a backlog: one per half tick interval and partition is enough."""

    interval_s: float
    last: dict[int, float] = field(default_factory=dict)

    def admit(self, partition: int, now_s: float) -> bool:
        if now_s - self.last.get(partition, 0.0) < self.interval_s * 0.5:
            return False
        self.last[partition] = now_s
        return True

    def ran(self, partition: int, now_s: float) -> None:
        self.last[partition] = now_s


@dataclass
class Outcome:
    """What a partition's micro-batch changed: alerts for the Redis mirror (None: removed), deliveries by id."""

    mirror: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    dispatch: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, changes: Changes) -> None:
        self.mirror.update(changes.alerts)
        self.mirror.update(dict.fromkeys(changes.removed))
        self.dispatch.update((e["id"], e) for e in changes.dispatch)


def decode_events(
    raws: Iterable[bytes], partition: int, ticks: TickGate, clock: Callable[[], float]
) -> list[dict[str, Any]]:
    """The batch's internal events, decoded; an undecodable one is counted and skipped, a surplus tick dropped."""
    values = []
    for raw in raws:
        try:
            value = decode_internal(raw)
        except ValueError as exc:
            DECODE_ERRORS.labels("alerts", "events").inc()
            log.warning("undecodable internal event skipped: %s", exc)
            continue
        if value["type"] == "tick":
            if not ticks.admit(partition, clock()):
                continue
        elif value["type"] == "obs":
            OBSERVATIONS.labels("applied").inc(len(value.get("obs") or ()))
        values.append(value)
    return values


def apply_events(
    proc: Processor, raws: Iterable[bytes], partition: int, ticks: TickGate, clock: Callable[[], float] = time.time
) -> Outcome:
    """One micro-batch of a partition's internal events through ``proc``, then the partition's due timers.

    The batch's rule hits are merged per alert first (:func:`fuse`: a backlog of fetches holds a repeating
    sensor many times). A group this batch made due (group_wait 0, or a timer that just expired) flushes
    now, not at the next tick; so does a partition the schedule does not know yet (after a start or a
    rebalance), which is scanned as a tick would (a scan of the partition's image in memory).
    """
    outcome = Outcome()
    for value in fuse(decode_events(raws, partition, ticks, clock)):
        outcome.add(proc.handle(value, partition, clock()))
    now = clock()
    if now >= proc.schedule.next_flush.get(partition, 0.0):
        ticks.ran(partition, now)
        outcome.add(proc.handle({"type": "tick"}, partition, now))
    return outcome


def fuse(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A partition's events of one micro-batch with each run of ``obs`` events made one, hits merged per alert.

    The evaluate stage merges the hits of one fetch; a backlog brings the state stage many
    fetches at once, and a sensor flagged again in each is then one hit per fetch. Applied one
    by one, every hit after the first only adds to the alert's count: merged here, the first
    hit keeps its place and its ``ts`` (``starts_at`` of a new alert), counts add up and the
    last hit's annotations win (unless it has none): what applying them in turn gives. A
    resolve ends the merge of its alert (hits after it start a new one); other events keep
    their place in between.
    """
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] | None = None
    at: dict[str, int] = {}  # fingerprint -> index in run of the hit that later hits of the alert join
    for value in values:
        if value.get("type") != "obs":
            out.append(value)
            run = None
            continue
        if run is None:
            run, at = [], {}
            out.append({"type": "obs", "obs": run})
        for obs in value.get("obs") or ():
            fp = obs.get("fingerprint")
            i = at.get(fp) if fp is not None else None
            if obs.get("resolve"):
                at.pop(fp, None)
                run.append(obs)
            elif i is None:
                if fp is not None:
                    at[fp] = len(run)
                run.append(obs)
            else:
                first = run[i]
                # an update with no annotations keeps the alert's (transitions.apply_observation)
                annotations = obs.get("annotations") or first.get("annotations")
                run[i] = {**first, "count": first.get("count", 1) + obs.get("count", 1), "annotations": annotations}
    return out


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
        inhibitors: Table,
        silences: Any,
        schedule: Schedule | None = None,
        pending_counts: dict[str, int] | None = None,
    ):
        self.config = config
        self.settings = settings
        self.alerts, self.groups, self.outbox = alerts, groups, outbox
        self.limits, self.counters, self.inhibitors, self.silences = limits, counters, inhibitors, silences
        self.schedule = schedule or Schedule()
        self.pending_counts = {} if pending_counts is None else pending_counts

    # ------------------------------------------------------------------------------------------ events

    def handle(self, value: dict[str, Any], partition: int, now_s: float | None = None) -> Changes:
        now_s = time.time() if now_s is None else now_s
        kind = value.get("type")
        changes = Changes()
        if kind == "obs":
            for obs in value["obs"]:
                self.on_observation(Observation.from_dict(obs), partition, now_s, changes)
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
            key = transitions.limit_key(rule, obs.labels)
            obs, window = transitions.rate_limit(rule, obs, self.limits.get(key), now_ms)
            # partition and length let the sweep of this partition forget the window later (pitfall 8).
            self.limits[key] = {**window, "partition": partition, "per_ms": int(rule.rate_limit.per_s * 1000)}
            prev = self.alerts.get(obs.fingerprint)
        new = transitions.apply_observation(prev, obs, now_ms, partition)
        if new is None:
            return
        if self._coalesce(obs, prev, new, now_ms):
            return
        self._store_alert(obs.fingerprint, prev, new, changes)
        if new["status"] == "firing" and (prev is None or prev["status"] != "firing"):
            for route, key, glabels in transitions.routes_for(self.config, new["labels"]):
                group = transitions.add_to_group(
                    self.groups.get(key), route, key, glabels, obs.fingerprint, now_s, partition
                )
                if group is not None:
                    self.groups[key] = group
                    self.schedule.note_flush(partition, group["next_flush_at"])

    def _coalesce(self, obs: Observation, prev: dict[str, Any] | None, new: dict[str, Any], now_ms: int) -> bool:
        """Skip re-writing an alert that only kept firing since it was written less than ``coalesce_s`` ago.

        A noisy sensor then costs one changelog write per few seconds, not one per batch.
        The observations in between are added to ``count`` at the next write (in memory
        until then, so a crash can under-count them); ``last_seen`` is at most
        ``coalesce_s`` (capped at a tenth of the quiet period) old, so nothing resolves early.
        """
        changed = prev is None or prev["status"] != "firing" or new["status"] != "firing"
        if changed or new["annotations"] != prev["annotations"]:
            self.pending_counts.pop(obs.fingerprint, None)
            return False
        window_ms = min(self.settings.coalesce_s, prev["resolve_after_s"] / 10) * 1000
        if now_ms - prev["updated_at"] < window_ms:
            if len(self.pending_counts) >= 200_000:  # bounded (pitfall 8): worst case, counts lag a little
                self.pending_counts.clear()
            self.pending_counts[obs.fingerprint] = self.pending_counts.get(obs.fingerprint, 0) + obs.count
            return True
        new["count"] += self.pending_counts.pop(obs.fingerprint, 0)
        return False

    def _store_alert(self, fp: str, prev: dict[str, Any] | None, new: dict[str, Any], changes: Changes) -> None:
        """Write an alert, count its transition, and keep the small index of inhibition sources."""
        self.alerts[fp] = new
        changes.alerts[fp] = new
        if prev is None or prev["status"] != new["status"]:
            ALERT_TRANSITIONS.labels(new["rule"], new["status"]).inc()
            if transitions.is_inhibitor(self.config, new["labels"]):
                if new["status"] == "firing":
                    self.inhibitors[fp] = {"fingerprint": fp, "labels": new["labels"], "partition": new["partition"]}
                elif self.inhibitors.get(fp) is not None:
                    del self.inhibitors[fp]

    def on_qcount(self, value: dict[str, Any], partition: int, now_s: float, changes: Changes) -> None:
        window_s = self.settings.quarantine_window_s
        start = int(value["window_start"])
        key = f"{value['source']}|{start}"
        count = int((self.counters.get(key) or {}).get("n", 0)) + int(value["n"])
        self.counters[key] = {"n": count, "partition": partition, "window_start": start}
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
        new = transitions.acknowledge(alert, value.get("by", ""), int(now_s * 1000), value.get("comment", ""))
        self._store_alert(value["fingerprint"], alert, new, changes)

    def on_result(self, value: dict[str, Any]) -> None:
        nid = value["id"]
        if self.outbox.get(nid) is not None:
            del self.outbox[nid]
        NOTIFICATIONS.labels(value.get("receiver", ""), value.get("integration", ""), value["outcome"]).inc()

    # ------------------------------------------------------------------------------------------ timers

    def on_tick(self, partition: int, now_s: float, changes: Changes) -> None:
        """Run what is due on this partition; cheap when nothing is (the schedule says when to look)."""
        now_ms = int(now_s * 1000)
        sched = self.schedule
        if now_s >= sched.next_sweep.get(partition, 0.0):
            self._sweep(partition, now_ms, changes)
            sched.next_sweep[partition] = now_s + self.settings.sweep_interval_s
        if now_s >= sched.next_outbox.get(partition, 0.0):
            waiting = [e for e in list(self.outbox.values()) if e is not None and e.get("partition") == partition]
            changes.dispatch += waiting
            # An empty outbox needs no look until something is enqueued (_enqueue brings the look forward).
            sched.next_outbox[partition] = now_s + self.settings.outbox_scan_interval_s if waiting else float("inf")
        if now_s >= sched.next_flush.get(partition, 0.0):
            self._flush_groups(partition, now_s, changes)

    def _sweep(self, partition: int, now_ms: int, changes: Changes) -> None:
        """Full pass over this partition's alerts: quiet ones resolve, long-resolved ones are forgotten."""
        retention_ms = self.settings.resolved_retention_s * 1000
        for fp, alert in list(self.alerts.items()):
            if alert is None or alert.get("partition") != partition:
                continue
            if alert["status"] == "resolved" and now_ms - alert["ends_at"] > retention_ms:
                del self.alerts[fp]
                changes.removed.append(fp)
            else:
                self._resolve_if_quiet(fp, alert, now_ms, changes)
        horizon = now_ms - 2 * self.settings.quarantine_window_s * 1000
        # Only this partition's keys: a delete is written in this partition's context.
        for key, c in list(self.counters.items()):
            if c and c.get("partition") == partition and c["window_start"] < horizon:
                del self.counters[key]
        for key, w in list(self.limits.items()):
            if w and w.get("partition") == partition and now_ms - w["start"] > 2 * w.get("per_ms", 0):
                del self.limits[key]

    def _resolve_if_quiet(self, fp: str, alert: dict[str, Any], now_ms: int, changes: Changes) -> dict[str, Any]:
        resolved = transitions.resolve_if_quiet(alert, now_ms)
        if resolved is None:
            return alert
        self._store_alert(fp, alert, resolved, changes)
        return resolved

    def _flush_groups(self, partition: int, now_s: float, changes: Changes) -> None:
        now_ms = int(now_s * 1000)
        mine = [(k, g) for k, g in list(self.groups.items()) if g is not None and g.get("partition") == partition]
        due = [(k, g) for k, g in mine if now_s >= g["next_flush_at"]]
        upcoming = [g["next_flush_at"] for _, g in mine if now_s < g["next_flush_at"]]
        if due:
            # Members are resolve-checked when their group flushes: that is when a resolution is told anyway.
            for _, group in due:
                for fp in group["fingerprints"]:
                    alert = self.alerts.get(fp)
                    if alert is not None:
                        self._resolve_if_quiet(fp, alert, now_ms, changes)
            sources = [i for i in self.inhibitors.values() if i and i.get("partition") == partition]
            silences = [x for x in self.silences.values() if x]
            suppression = transitions.Suppression.build(self.config, silences, sources, now_ms)
            for key, group in due:
                flush = transitions.flush_group(self.config, group, self.alerts, suppression, now_s)
                if flush is None:
                    continue
                if flush.group is None:
                    del self.groups[key]
                else:
                    self.groups[key] = flush.group
                    upcoming.append(flush.group["next_flush_at"])
                if flush.notification is not None:
                    self._enqueue(flush.notification, partition, now_s, changes)
        self.schedule.next_flush[partition] = min(upcoming, default=float("inf"))

    def _enqueue(self, notification: dict[str, Any], partition: int, now_s: float, changes: Changes) -> None:
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
            self.outbox[nid] = entry = {
                "id": nid,
                "receiver": receiver.name,
                "integration": integration,
                "partition": partition,
                "created_at": now_s,
                "notification": {**payload, "id": nid},
            }
            changes.dispatch.append(entry)
            self.schedule.note_outbox(partition, now_s + self.settings.outbox_scan_interval_s)
