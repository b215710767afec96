"""One micro-batch of readings.raw, from bytes to decisions — no Kafka, no Faust.

The pump turns a fetch of readings.raw into :class:`Inbound` items and the engine
calls :meth:`BatchProcessor.process`; the :class:`Outcome` says what to produce where,
which sensor states changed, and what each HTTP request waiting on a reading should
hear. The engine then produces everything, waits for the broker's acks, and only then
counts the batch's offsets as finished for the next checkpoint (``services.ingest.engine``),
so a crash can repeat work but never lose a reading.

Co-partitioning: sensor state lives in the partition of its sensor_id (Kafka's
murmur2 partitioner over the partition count of readings.clean). A valid reading
that arrived in another partition of readings.raw (a producer that keyed it
differently, or not at all) is *forwarded*: written back to readings.raw keyed by
its sensor_id, where the owner of that partition admits it. Everything that does
not need state — decoding, validation, quarantine — happens where it arrives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.ingest.rules import Rules
from services.ingest.sensors import ACCEPTED, DUPLICATE, SensorState
from services.ingest.validation import decode, reason_code, validate
from shared.records import QuarantinedReading, Reading

CLEAN = "clean"
QUARANTINED = "quarantined"
FORWARDED = "forwarded"

# Header names on readings.raw (set by the HTTP and MQTT doors, and by forwarding).
H_SOURCE = "fw-source"
H_REQUEST = "fw-request"
H_FORWARDED = "fw-forwarded"


@dataclass(slots=True)
class Inbound:
    """One message of readings.raw as the pipeline sees it."""

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    received_ms: int
    source: str = "kafka"
    request: bytes | None = None  # opaque id of the HTTP request item waiting for the verdict
    forwarded: bool = False
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(slots=True)
class Outcome:
    """What one batch decided."""

    clean: list[tuple[int, Reading]] = field(default_factory=list)  # (partition, reading)
    quarantined: list[tuple[int, QuarantinedReading]] = field(default_factory=list)
    forward: list[tuple[int, str, Inbound]] = field(default_factory=list)  # (partition, sensor_id, message)
    states: dict[str, SensorState] = field(default_factory=dict)  # sensors whose state changed
    verdicts: list[tuple[bytes, str, list[str]]] = field(default_factory=list)  # (request item, status, reasons)
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # reason code -> count
    unknown_metrics: int = 0


def quarantine_payload(value: bytes | None, decoded: Any, ok: bool) -> Any:
    """The input as received: its JSON when it was JSON, else its text (bytes shown as escapes)."""
    if ok and decoded is not None:
        return decoded
    if value is None:
        return None
    return value.decode("utf-8", "backslashreplace")


class BatchProcessor:
    """Validates, routes and admits readings; holds the per-sensor state of this worker's partitions."""

    def __init__(
        self,
        rules: Rules,
        *,
        partition_of: Callable[[str], int],
        load_state: Callable[[str, Inbound], SensorState | None],
        max_cached: int = 500_000,
    ) -> None:
        self.rules = rules
        self.partition_of = partition_of
        self.load_state = load_state
        self.max_cached = max_cached
        # Decoded states of sensors this worker owns; cleared on every rebalance, since
        # a partition may have been owned (and its sensors changed) by another worker meanwhile.
        self.states: dict[str, SensorState] = {}

    def forget(self) -> None:
        self.states.clear()

    def state_for(self, sensor_id: str, msg: Inbound) -> SensorState:
        """The sensor's state; ``msg`` (in the sensor's partition) locates it in the table on a miss."""
        state = self.states.get(sensor_id)
        if state is None:
            state = self.load_state(sensor_id, msg) or SensorState(sensor_id)
            if len(self.states) >= self.max_cached:
                self.states.clear()
            self.states[sensor_id] = state
        return state

    def process(self, batch: list[Inbound]) -> Outcome:
        """Decide every message of a batch."""
        out = Outcome()
        rules = self.rules
        lateness = rules.lateness_ms
        memory = rules.dedup_memory
        partition_of = self.partition_of
        for msg in batch:
            decoded, error = decode(msg.value) if msg.value is not None else (None, "malformed_json: empty message")
            if error is None:
                checked = validate(decoded, msg.received_ms, rules, msg.source)
                reasons = checked.reasons
                out.unknown_metrics += checked.unknown_metrics
            else:
                checked = None
                reasons = [error]
            reading = checked.reading if checked is not None else None
            if reading is None:
                self._quarantine(out, msg, decoded, error is None, reasons, checked.sensor_id if checked else None)
                continue
            sensor_id = reading.sensor_id
            target = partition_of(sensor_id)
            if target != msg.partition and not msg.forwarded:
                out.forward.append((target, sensor_id, msg))
                continue
            state = self.state_for(sensor_id, msg)
            verdict = state.admit(reading, lateness, memory)
            out.states[sensor_id] = state
            if verdict == ACCEPTED:
                out.clean.append((target, reading))
                if msg.request is not None:
                    out.verdicts.append((msg.request, CLEAN, []))
            elif verdict == DUPLICATE:
                out.duplicates += 1
                if msg.request is not None:
                    out.verdicts.append(
                        (msg.request, DUPLICATE, [f"duplicate: {sensor_id} already sent ts {reading.ts}"])
                    )
            else:
                why = (
                    f"late: ts {reading.ts} is {state.newest_ts - reading.ts} ms older than the newest reading of "
                    f"{sensor_id} (lateness {lateness} ms)"
                )
                self._quarantine(out, msg, decoded, True, [why], sensor_id)
        return out

    def _quarantine(
        self, out: Outcome, msg: Inbound, decoded: Any, decoded_ok: bool, reasons: list[str], sensor_id: str | None
    ) -> None:
        record = QuarantinedReading(
            payload=quarantine_payload(msg.value, decoded, decoded_ok),
            source=msg.source,
            reasons=reasons,
            received_ms=msg.received_ms,
            sensor_id=sensor_id,
        )
        out.quarantined.append((self.partition_of(sensor_id) if sensor_id else msg.partition, record))
        for code in {reason_code(r) for r in reasons}:
            out.reasons[code] += 1
        if msg.request is not None:
            out.verdicts.append((msg.request, QUARANTINED, reasons))
