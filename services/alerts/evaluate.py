"""The first stage: a micro-batch of input records → rule hits, merged per fingerprint.

Runs on the input partitions (keyed by sensor or zone) and keeps no state, so it
scales with the input topics; what it forwards is already collapsed (one
observation per alert per batch), which is what keeps a flood cheap downstream.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any

from services.alerts.config import Config
from services.alerts.labels import shard_partition
from services.alerts.metrics import RULE_ERRORS, RULE_HITS
from services.alerts.rules import Observation, Rule, merge
from services.alerts.transitions import fold, limit_key
from shared.codec import dumps, loads
from shared.deadletter import encodable
from shared.metrics import DECODE_ERRORS
from shared.records import Anomaly, DriftEvent, LeakReport, QuarantinedReading, Record, Risk, SensorEvent
from shared.topics import ANOMALIES, DRIFT, READINGS_QUARANTINE, REPORTS, RISK, SENSOR_EVENTS

log = logging.getLogger(__name__)

#: input topic (registry name) → (rule source, record type)
INPUTS: dict[str, tuple[str, type[Record]]] = {
    ANOMALIES.name: ("anomaly", Anomaly),
    RISK.name: ("risk", Risk),
    SENSOR_EVENTS.name: ("sensor_event", SensorEvent),
    READINGS_QUARANTINE.name: ("quarantine", QuarantinedReading),
    REPORTS.name: ("report", LeakReport),
    DRIFT.name: ("drift", DriftEvent),
}


class FloodGate:
    """Stage-1 flood protection: beyond a rule's rate limit, new alerts are folded before they leave the batch.

    In memory and per worker, so it is only a pre-filter: a worker that has seen more
    than ``max_alerts`` distinct alerts for one rule and zone in the window knows the
    whole system has too, and folds the rest into the rule's flood alert here instead
    of sending each one to the state stage. The state stage's table-backed limit
    stays the authority (after a restart this gate simply starts empty).
    """

    def __init__(self, max_keys: int = 100_000):
        self.windows: dict[str, tuple[int, set[str]]] = {}
        self.max_keys = max_keys
        # (rule, fingerprint) -> limit key: the fingerprint names the labels the key is made of
        self.keys: dict[tuple[str, str], str] = {}

    def admit(self, rule: Rule, obs: Observation, now_ms: int) -> Observation:
        rl = rule.rate_limit
        if rl is None or obs.resolve:
            return obs
        key = self.keys.get((rule.name, obs.fingerprint))
        if key is None:
            if len(self.keys) >= self.max_keys:
                self.keys.clear()  # bounded memory (pitfall 8)
            key = self.keys[(rule.name, obs.fingerprint)] = limit_key(rule, obs.labels)
        start, seen = self.windows.get(key, (now_ms, set()))
        if now_ms - start >= rl.per_s * 1000:
            start, seen = now_ms, set()
        if obs.fingerprint in seen or len(seen) < rl.max_alerts:
            seen.add(obs.fingerprint)
            if len(self.windows) >= self.max_keys and key not in self.windows:
                self.windows.clear()  # bounded memory (pitfall 8); the state stage still limits
            self.windows[key] = (start, seen)
            return obs
        return fold(rule, obs)


class Shape:
    """A record type read from its decoded JSON object straight into the dict of its fields the rules see.

    Checks what :meth:`shared.records.Record.from_dict` checks (a JSON object, every required field there;
    unknown fields dropped, defaults filled) without building the record and reading its fields back, which
    was a sixth of evaluating an anomaly. What ``from_dict`` refuses is refused by ``from_dict`` itself, so
    the reason given is the same.
    """

    def __init__(self, cls: type[Record]) -> None:
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.names = tuple(f.name for f in fields)
        self.values = operator.attrgetter(*self.names)
        self.required = frozenset(f.name for f in fields if f.default is MISSING and f.default_factory is MISSING)
        self.defaults = {f.name: f.default for f in fields if f.default is not MISSING}
        self.factories = tuple((f.name, f.default_factory) for f in fields if f.default_factory is not MISSING)

    def read(self, data: Any) -> dict[str, Any]:
        """The record's fields (TypeError/ValueError: not a record of this type)."""
        if type(data) is not dict or not self.required <= data.keys():
            obj = self.cls.from_dict(data)  # raises with from_dict's own reason
            return dict(zip(self.names, self.values(obj), strict=True))
        record = self.defaults.copy()
        for name, factory in self.factories:
            record[name] = factory()
        record.update(data)
        if len(record) != len(self.names):  # fields this version does not know
            record = {name: record[name] for name in self.names}
        return record


SHAPES = {cls: Shape(cls) for _, cls in INPUTS.values()}


@dataclass
class BatchResult:
    observations: list[Observation] = field(default_factory=list)
    quarantined: Tally = field(default_factory=Tally)  # (source, window_start_ms) -> count
    # Records that are not records of their topic, by their index in the batch, with why: dead-lettered by
    # the caller (shared.deadletter), never evaluated.
    rejected: list[tuple[int, str]] = field(default_factory=list)
    evaluated: Tally = field(default_factory=Tally)  # topic -> records decoded and evaluated

    @property
    def bad(self) -> int:
        return len(self.rejected)


def evaluate_batch(
    config: Config,
    items: Iterable[tuple[str, bytes]],
    window_s: float,
    now_s: float | None = None,
    gate: FloodGate | None = None,
) -> BatchResult:
    """``items`` are ``(registry topic name, raw value)``; malformed values come back in ``rejected``, never raised."""
    now_s = time.time() if now_s is None else now_s
    window_ms = int(window_s * 1000)
    result = BatchResult()
    hits: list[Observation] = []
    # counted per batch: a labelled metric update and a log line per record would cost more than the record
    bad: dict[str, int] = {}
    hit_counts: dict[str, int] = {}
    hitting: list[tuple[int, str, list[tuple[Rule, Observation]]]] = []  # (index, topic, its hits)
    for i, (topic, raw) in enumerate(items):
        source, cls = INPUTS[topic]
        try:
            record = SHAPES[cls].read(loads(raw))  # validates required fields, fills defaults
        except (ValueError, TypeError) as exc:
            bad[topic] = bad.get(topic, 0) + 1
            result.rejected.append((i, f"alerts: not a {cls.__name__} record ({type(exc).__name__}: {exc})"))
            continue
        if source == "quarantine":
            result.evaluated[topic] += 1
            start = int(now_s * 1000) // window_ms * window_ms
            result.quarantined[(str(record.get("source") or "unknown"), start)] += 1
            continue
        rules = config.rules_for(source)
        found: list[tuple[Rule, Observation]] = []
        for rule in rules:
            try:
                obs = rule.evaluate(record)
            except Exception as exc:  # noqa: BLE001 - a record one rule cannot render must not stop the batch
                RULE_ERRORS.labels(rule.name).inc()
                log.warning("rule %s could not render a %s record: %s", rule.name, topic, exc)
                continue
            if obs is not None:
                found.append((rule, obs))
        hitting.append((i, topic, found))
    # What a hit carries goes on to the internal events topic: one that cannot be encoded (an integer beyond
    # 64 bits made from the record's fields) would stop the stage on every retry, so its record is set aside.
    # The whole batch is tried at once; record by record only when that fails. Only the fields a record can
    # make unencodable are tried (the rest are hex, a bool, a float and a count); orjson writes a dataclass
    # several times slower than the tuple.
    whole = encodable([(obs.rule, obs.labels, obs.annotations, obs.ts) for _, _, found in hitting for _, obs in found])
    now_ms = int(now_s * 1000)
    for i, topic, found in hitting:
        unencodable = None if whole else next((rule for rule, obs in found if not encodable(obs)), None)
        if unencodable is not None:
            bad[topic] = bad.get(topic, 0) + 1
            result.rejected.append((i, f"alerts: rule {unencodable.name} made an alert that cannot be encoded"))
            continue
        result.evaluated[topic] += 1
        for rule, obs in found:
            hit_counts[rule.name] = hit_counts.get(rule.name, 0) + 1
            hits.append(gate.admit(rule, obs, now_ms) if gate else obs)
    result.rejected.sort()
    for topic, n in bad.items():
        DECODE_ERRORS.labels("alerts", topic).inc(n)
    for name, n in hit_counts.items():
        RULE_HITS.labels(name).inc(n)
    result.observations = merge(hits)
    return result


#: Observations per internal message: keeps one well under Kafka's 1 MB default.
OBS_PER_MESSAGE = 500


class Shards:
    """Each alert's events partition (:func:`~services.alerts.labels.shard_partition` of its labels), remembered.

    By fingerprint, which names the labels: hashing the shard labels again for every hit of a known alert was
    ~5 % of evaluating an anomaly. Bounded (pitfall 8).
    """

    def __init__(self, shard_by: tuple[str, ...], partitions: int, max_keys: int = 100_000) -> None:
        self.shard_by = shard_by
        self.partitions = partitions
        self.max_keys = max_keys
        self.known: dict[str, int] = {}

    def of(self, obs: Observation) -> int:
        p = self.known.get(obs.fingerprint)
        if p is None:
            if len(self.known) >= self.max_keys:
                self.known.clear()
            p = self.known[obs.fingerprint] = shard_partition(obs.labels, self.shard_by, self.partitions)
        return p


def internal_messages(
    result: BatchResult, config: Config, partitions: int, shards: Shards | None = None
) -> list[tuple[int, bytes]]:
    """``(events partition, value)`` for a batch's results: one message per destination partition, not per alert.

    Observations go to the partition of their shard labels (``global.shard_by``), so every alert, group
    and inhibition of a zone lives on one partition; quarantine counts to the partition of no labels.
    ``shards`` (for ``config.shard_by`` and ``partitions``) remembers the partitions of alerts seen before.
    """
    if shards is None or shards.partitions != partitions or shards.shard_by != config.shard_by:
        shards = Shards(config.shard_by, partitions)
    per_partition: dict[int, list[Observation]] = {}
    for obs in result.observations:
        per_partition.setdefault(shards.of(obs), []).append(obs)
    out = []
    for p, items in per_partition.items():
        for i in range(0, len(items), OBS_PER_MESSAGE):
            # as dicts: orjson writes a dataclass several times slower than the same fields in a dict (same JSON)
            chunk = [obs.to_dict() for obs in items[i : i + OBS_PER_MESSAGE]]
            out.append((p, dumps({"type": "obs", "obs": chunk})))
    for (source, start), n in result.quarantined.items():
        value = dumps({"type": "qcount", "source": source, "window_start": start, "n": n})
        out.append((shard_partition({}, config.shard_by, partitions), value))
    return out


def decode_internal(raw: bytes) -> dict[str, Any]:
    value = loads(raw)
    if not isinstance(value, dict) or "type" not in value:
        raise ValueError("internal event without a type")
    return value
