"""One micro-batch of readings.raw, from bytes to decisions — no Kafka, no Faust.

The pump turns a fetch of readings.raw into :class:`Inbound` items and the engine
calls :meth:`BatchProcessor.process`; the :class:`Outcome` says what to produce where,
which sensor states changed, and what each HTTP request waiting on a reading should
hear. The engine then produces everything, waits for the broker's acks, and only then
counts the batch's offsets as finished for the next checkpoint (``services.ingest.worker``),
so a crash can repeat work but never lose a reading.

Co-partitioning: sensor state lives in the partition of its sensor_id (Kafka's
murmur2 partitioner over the partition count of readings.clean). A valid reading
that arrived in another partition of readings.raw (a producer that keyed it
differently, or not at all) is *forwarded*: written back to readings.raw keyed by
its sensor_id, where the owner of that partition admits it. Everything that does
not need state — decoding, validation, quarantine — happens where it arrives.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from services.ingest.rules import Rules
from services.ingest.sensors import ACCEPTED, DUPLICATE, SensorState
from services.ingest.validation import Validated, check, decode, decoded_within, reason_code
from shared.codec import encode_record
from shared.deadletter import quarantined
from shared.records import Reading

log = logging.getLogger(__name__)

CLEAN = "clean"
QUARANTINED = "quarantined"
FORWARDED = "forwarded"

#: The doors, the only values ``source`` (and its metric label) can take.
SOURCES = ("http", "mqtt", "kafka")

# Header names on readings.raw (set by the HTTP and MQTT doors, and by forwarding).
H_SOURCE = "fw-source"
H_REQUEST = "fw-request"
H_FORWARDED = "fw-forwarded"
H_MAPPING = "fw-mapping"  # the payload mapping a door read the message with (provenance only)


class Inbound(msgspec.Struct, gc=False):
    """One message of readings.raw as the pipeline sees it.

    A msgspec struct, made in C (~35 against ~170 ns for a slotted dataclass, once per message); ``gc=False``:
    what it holds (bytes, numbers, text, headers, a decoded reading) never refers back to it, so the collector
    need not track it.
    """

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    received_ms: int
    source: str = "kafka"
    request: bytes | None = None  # opaque id of the HTTP request item waiting for the verdict
    forwarded: bool = False
    headers: Sequence[tuple[str, bytes]] = ()
    # What ``value`` decodes to, when the worker built it (a mapped reading handed over by the Kafka source
    # door, not read from readings.raw): held to the same limits, not parsed again. ``value`` None beside it: the
    # door knew the reading within the limits without writing it (mappings.expand's ``lazy``).
    decoded: Any = None

    def raw(self) -> bytes | None:
        """The message's bytes: ``value``, or a mapped reading's native JSON when the door left it unwritten."""
        if self.value is None and self.decoded is not None:
            return orjson.dumps(self.decoded)  # what the door would have written (mappings.expand)
        return self.value


@dataclass(slots=True)
class Outcome:
    """What one batch decided."""

    clean: list[tuple[int, Reading, bytes]] = field(default_factory=list)  # (partition, reading, its JSON)
    quarantined: list[Quarantined] = field(default_factory=list)
    forward: list[tuple[int, str, Inbound]] = field(default_factory=list)  # (partition, sensor_id, message)
    states: dict[str, SensorState] = field(default_factory=dict)  # sensors whose state changed
    verdicts: list[tuple[bytes, str, list[str]]] = field(default_factory=list)  # (request item, status, reasons)
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # reason code -> count
    unknown_metrics: int = 0
    inputs: dict[str, int] | None = None  # messages per door, when the caller knew them without counting


@dataclass(slots=True)
class Quarantined:
    """A readings.quarantine record ready to send (built by :func:`shared.deadletter.quarantine`)."""

    partition: int
    key: bytes | None
    value: bytes


def _unknown(sensor_id: str) -> None:
    return None


class NewSensorLimit:
    """At most ``per_min`` sensor ids never seen before per door and minute (a sliding window of one minute).

    Sensor state is kept per sensor id, and ids are chosen by whoever sends: without a cap one
    client could grow the tables and memory without bound.
    """

    def __init__(self, per_min: int, clock: Callable[[], float]) -> None:
        self.per_min = per_min
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def allow(self, source: str) -> bool:
        if self.per_min <= 0:
            return True
        now = self.clock()
        start, used = self._windows.get(source, (now, 0))
        if now - start >= 60.0:
            start, used = now, 0
        if used >= self.per_min:
            self._windows[source] = (start, used)
            return False
        self._windows[source] = (start, used + 1)
        return True


class BatchProcessor:
    """Validates, routes and admits readings; holds the per-sensor state of this worker's partitions."""

    def __init__(
        self,
        rules: Rules,
        *,
        partition_of: Callable[[str], int],
        load_state: Callable[[str, Inbound], SensorState | None],
        max_cached: int = 500_000,
        new_sensors: NewSensorLimit | None = None,
    ) -> None:
        self.rules = rules
        self.partition_of = partition_of
        self.partitions = getattr(partition_of, "partitions", 1)
        # A PartitionMap's memo, looked up first (most sensors are known): see shared.batching.PartitionMap.known
        self.known_partition: Callable[[str], int | None] = getattr(partition_of, "known", _unknown)
        self.load_state = load_state
        self.max_cached = max_cached
        self.new_sensors = new_sensors
        # Decoded states of sensors this worker owns; cleared on every rebalance, since
        # a partition may have been owned (and its sensors changed) by another worker meanwhile.
        self.states: dict[str, SensorState] = {}

    def forget(self) -> None:
        self.states.clear()

    def state_for(self, sensor_id: str, msg: Inbound) -> SensorState | None:
        """The sensor's state; ``msg`` (in the sensor's partition) locates it in the table on a miss.

        None when the sensor is new and its door has introduced too many new sensors this minute.
        """
        state = self.states.get(sensor_id)
        if state is None:
            state = self.load_state(sensor_id, msg)
            if state is None:
                if self.new_sensors is not None and not self.new_sensors.allow(msg.source):
                    return None
                state = SensorState(sensor_id)
            if len(self.states) >= self.max_cached:
                self.states.clear()
            self.states[sensor_id] = state
        return state

    def process(self, batch: list[Inbound]) -> Outcome:
        """Decide every message of a batch; a failure of one message quarantines that message only."""
        out = Outcome()
        for msg in batch:
            try:
                self._decide(out, msg)
            except Exception as exc:
                log.exception("ingest could not decide one message (partition %d offset %d)", msg.partition, msg.offset)
                self._quarantine(out, msg, None, False, [f"internal_error: {type(exc).__name__}"], None)
        return out

    def _decide(self, out: Outcome, msg: Inbound) -> None:
        rules = self.rules
        decoded = msg.decoded
        if decoded is not None:
            value = msg.value
            if value is None:  # a mapped reading the door knew within the limits (mappings.PayloadMapping.within)
                error = None
            # decoded_within's usual answer without the call: within the size, fewer brackets than the depth
            elif len(value) > rules.max_line_bytes or value.count(b"[") + value.count(b"{") > rules.max_json_depth:
                error = decoded_within(value, decoded, rules.max_line_bytes, rules.max_json_depth)
                if error is not None:
                    decoded = None  # as decode() leaves it: the quarantine keeps the text
            else:
                error = None
        elif msg.value is None:
            error = "malformed_json: empty message"
        else:
            decoded, error = decode(msg.value, rules.max_line_bytes, rules.max_json_depth)
        if error is not None:
            self._quarantine(out, msg, decoded, False, [error], None)
            return
        reading = check(decoded, msg.received_ms, rules, msg.source)
        unknown = 0
        if type(reading) is Validated:
            checked = reading
            unknown = checked.unknown_metrics
            out.unknown_metrics += unknown
            reading = checked.reading
            if reading is None:
                self._quarantine(out, msg, decoded, True, checked.reasons, checked.sensor_id)
                return
        sensor_id = reading.sensor_id
        target = self.known_partition(sensor_id)
        if target is None:
            target = self.partition_of(sensor_id)
        if target != msg.partition and not msg.forwarded:
            out.forward.append((target, sensor_id, msg))
            return
        state = self.states.get(sensor_id)
        if state is None:
            state = self.state_for(sensor_id, msg)
        if state is None:
            why = f"too_many_new_sensors: {msg.source} introduced more than {self.new_sensors.per_min} new sensors this minute"  # type: ignore[union-attr]
            self._quarantine(out, msg, decoded, True, [why], sensor_id)
            return
        counters = rules.counters
        resets = (
            state.counter_resets_in(reading, counters) if counters and not counters.isdisjoint(reading.values) else ()
        )
        if resets:
            # A counter going down is a reset or a new meter, not a measurement: flagged for consumers.
            reading.extra["counter_resets"] = resets
        # Encoded before admitting: a reading that cannot be written must not change its sensor's state.
        encoded = encode_record(reading)  # shared.codec.dumps_record without its call
        verdict = state.admit(reading, rules.lateness_ms, rules.dedup_memory)
        out.states[sensor_id] = state
        if verdict == ACCEPTED:
            if resets:
                state.counter_resets += len(resets)
            if unknown:
                state.unknown_metrics += 1
            out.clean.append((target, reading, encoded))
            if msg.request is not None:
                out.verdicts.append((msg.request, CLEAN, []))
        elif verdict == DUPLICATE:
            out.duplicates += 1
            if msg.request is not None:
                out.verdicts.append((msg.request, DUPLICATE, [f"duplicate: {sensor_id} already sent ts {reading.ts}"]))
        else:
            why = (
                f"late: ts {reading.ts} is {state.newest_ts - reading.ts} ms older than the newest reading of "
                f"{sensor_id} (lateness {rules.lateness_ms} ms)"
            )
            self._quarantine(out, msg, decoded, True, [why], sensor_id)

    def _quarantine(
        self, out: Outcome, msg: Inbound, decoded: Any, decoded_ok: bool, reasons: list[str], sensor_id: str | None
    ) -> None:
        partition, key, value = quarantined(
            msg.raw(),
            reasons,
            msg.source,
            self.partition_of,
            self.partitions,
            sensor_id=sensor_id,
            source_partition=msg.partition,
            decoded=decoded,
            decoded_ok=decoded_ok,
            received_ms=msg.received_ms,
        )
        out.quarantined.append(Quarantined(partition, key, value))
        for code in {reason_code(r) for r in reasons}:
            out.reasons[code] += 1
        if msg.request is not None:
            out.verdicts.append((msg.request, QUARANTINED, reasons))
