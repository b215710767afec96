"""The heart of ingest inside the Faust worker: batches, state, checkpoints, silence, cache.

Per fetch of readings.raw (``Ingest`` is the :class:`~shared.pump.BatchJob` of ingest's
:class:`~shared.pump.Pump`, which reads readings.raw outside Faust's per-message consumer
path; why and how: :mod:`shared.pump`):

1. decode and validate every message (pure functions, :mod:`services.ingest.pipeline`) and
   admit valid readings against their sensor's state (duplicates, lateness);
2. produce clean readings, quarantined inputs and forwarded readings as one record batch per
   topic-partition (:class:`~shared.batching.Outbox`) — :meth:`Ingest.decide`;
3. once the broker acknowledged them (a few batches may be in flight meanwhile), count the
   batch as finished, tell waiting HTTP requests their verdicts and queue each sensor's
   latest reading for Redis — :meth:`Ingest.finish`.

Every ``FLOWWATCH_INGEST_CHECKPOINT_S`` (and before a rebalance or shutdown) the changed
sensor states and, per partition, the offset of the last message whose outputs were
acknowledged are written to the ``sensors`` and ``progress`` tables — once per key, in the
partition the key belongs to (:class:`~shared.pump.Checkpoint`). On restart the pump resumes each partition after its checkpointed
offset with the checkpointed states, so replaying is deterministic: readings after the last
checkpoint are produced again (readings.clean is at-least-once; consumers are idempotent on
sensor_id+ts), and nothing is ever lost, because outputs are acknowledged before the offset
that covers them is checkpointed.

The silence timer publishes ``silent``/``back`` to sensor.events; a small Faust agent on
sensor.events records them in the ``silence`` table, so a restarted worker knows which of
its sensors it already announced.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from operator import attrgetter, itemgetter
from typing import Any

import faust
import orjson

from services.ingest import metrics as m
from services.ingest.mappings import PayloadMapping, expand
from services.ingest.payloads import Item
from services.ingest.pipeline import (
    H_FORWARDED,
    H_REQUEST,
    H_SOURCE,
    SOURCES,
    BatchProcessor,
    Inbound,
    NewSensorLimit,
    Outcome,
)
from services.ingest.rules import Rules
from services.ingest.sensors import SensorState, silence_transitions
from services.ingest.settings import IngestSettings
from services.ingest.validation import reason_code
from services.ingest.verdicts import VerdictBoard
from services.ingest.wire import reading_dict
from shared.batching import Outbox, PartitionMap
from shared.cache import Cache
from shared.codec import dumps
from shared.metrics import EVENTS_OUT
from shared.pump import Batch, BatchJob, Checkpoint, PumpConfig
from shared.records import SensorEvent
from shared.settings import Settings
from shared.streaming import decode_events, event_context, last_event_per_key, write_once_per_key
from shared.topics import READINGS_CLEAN, READINGS_QUARANTINE, READINGS_RAW, SENSOR_EVENTS, faust_topic

log = logging.getLogger(__name__)

SERVICE = m.SERVICE
LATENCY_SAMPLE = 64
CACHE_CHUNK = 250


def now_ms() -> int:
    return int(time.time() * 1000)


_SOURCE_VALUES = frozenset(s.encode() for s in SOURCES)
_SOURCE_OF = attrgetter("source")
_PARTITION_OF = itemgetter(0)
_READING_OF = itemgetter(1)
_ENCODED_OF = itemgetter(2)
_UTILITY_OF = attrgetter("utility")
_SENSOR_ID_OF = attrgetter("sensor_id")


def to_inbound(record: Any) -> Inbound:
    """An aiokafka ConsumerRecord as the pipeline sees it."""
    source = "kafka"
    request = None
    forwarded = False
    headers = record.headers or ()
    for name, value in headers:
        if name == H_SOURCE:
            # A label and a field downstream: only the known doors, whatever a producer put in the header.
            if value in _SOURCE_VALUES:
                source = value.decode()
        elif name == H_REQUEST:
            request = value
        elif name == H_FORWARDED:
            forwarded = True
    stamp = record.timestamp
    # positional: once per message, and keywords cost a little more
    return Inbound(
        record.value,
        record.key,
        record.partition,
        record.offset,
        stamp if stamp and stamp > 0 else now_ms(),
        source,
        request,
        forwarded,
        headers,
    )


def to_inbounds(records: list[Any]) -> list[Inbound]:
    """:func:`to_inbound` of each record; one without headers (a Kafka producer's) without the call per record."""
    return _to_inbounds(records)[0]


def _to_inbounds(records: list[Any]) -> tuple[list[Inbound], bool]:
    """:func:`to_inbounds`, and whether no record had headers (then every message came by the Kafka door)."""
    batch: list[Inbound] = []
    add = batch.append
    plain = True
    for record in records:
        if record.headers:
            add(to_inbound(record))
            plain = False
            continue
        stamp = record.timestamp
        add(
            Inbound(
                record.value, record.key, record.partition, record.offset, stamp if stamp and stamp > 0 else now_ms()
            )
        )
    return batch, plain


class Ingest(BatchJob[tuple[list[Inbound], Outcome]]):
    """Everything of ingest that lives inside the Faust worker."""

    batch_kind = "readings"

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        isettings: IngestSettings,
        rules: Rules,
        mappings: dict[str, PayloadMapping] | None = None,
    ) -> None:
        self.raw_name = settings.topic(READINGS_RAW.name)
        self.clean_name = settings.topic(READINGS_CLEAN.name)
        self.events_name = settings.topic(SENSOR_EVENTS.name)
        partitions = READINGS_RAW.partitions_for(settings)
        config = PumpConfig(
            service=SERVICE,
            topic=self.raw_name,
            progress_table="progress",
            batch_size=isettings.batch_size,
            within_s=isettings.batch_within_s,
            in_flight=isettings.batches_in_flight,
            checkpoint_s=isettings.checkpoint_s,
            mirror_group=f"{app.conf.id}-readings",
            # sensor state follows readings.raw's partition into readings.clean, and silence into sensor.events
            copartitioned=(self.clean_name, self.events_name),
        )
        outputs = (self.raw_name, self.clean_name, settings.topic(READINGS_QUARANTINE.name), self.events_name)
        super().__init__(settings, config, partitions, outputs)
        self.app = app
        self.isettings = isettings
        self.rules = rules
        self.mappings = mappings or {}
        self.events_topic = faust_topic(app, SENSOR_EVENTS, settings)
        # Keys are raw bytes (sensor_id); values are JSON (Faust's json codec, which is orjson when installed).
        table_opts: dict[str, Any] = {
            "key_type": bytes,
            "default": None,
            "partitions": partitions,
        }
        self.sensors = app.Table("sensors", help="Per-sensor state (SensorState) keyed by sensor_id", **table_opts)
        self.silence = app.Table("silence", help="Sensors announced silent, keyed by sensor_id", **table_opts)
        self.board = VerdictBoard()
        self.cache = Cache(
            settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE
        )
        self.cache_pending: dict[str, Any] = {}
        self.silent: set[str] = set()
        self._silence_loaded = False
        self.partition_of: PartitionMap | None = None  # readings.clean's: sensor_id -> partition
        self.processor: BatchProcessor | None = None
        self.dirty: dict[str, SensorState] = {}  # changed since the last checkpoint

    # --- start-up -----------------------------------------------------------------------

    def started(self) -> None:
        self.partition_of = self.partition_maps[self.clean_name]
        self.processor = BatchProcessor(
            self.rules,
            partition_of=self.partition_of,
            load_state=self._load_state,
            new_sensors=NewSensorLimit(self.isettings.new_sensors_per_min, time.monotonic),
        )
        log.info("ingest output producer started; %d partitions", self.partition_of.partitions)

    async def close(self) -> None:
        await self.cache.close()

    def forget(self) -> None:
        """Drop in-memory state after a checkpoint, before partitions may change hands."""
        if self.processor is not None:
            self.processor.forget()
        self.silent.clear()
        self._silence_loaded = False

    def _load_state(self, sensor_id: str, msg: Inbound) -> SensorState | None:
        # Dropped from the processor's bounded cache but not yet in the table (or being written there now).
        unsaved = self.unsaved(sensor_id)
        if unsaved is not None:
            return unsaved  # type: ignore[no-any-return]
        with event_context(self.event(msg.partition)):
            data = self.sensors.get(sensor_id.encode())
        return SensorState.from_dict(data) if data else None

    def refuse(self, box: Outbox, source: str, value: bytes, key: bytes | None, partition: int) -> list[str] | None:
        """A door's item too large to carry through readings.raw goes straight to quarantine (its text cut to fit).

        Returns the reasons when the item was refused, None when it may go on to readings.raw.
        """
        limit = self.isettings.max_line_bytes
        if len(value) <= limit:
            return None
        reasons = [f"too_large: {len(value)} bytes (limit {limit})"]
        self.quarantine_at_door(box, source, value, key, partition, reasons)
        return reasons

    def quarantine_at_door(
        self,
        box: Outbox,
        source: str,
        value: bytes,
        key: bytes | None,
        partition: int,
        reasons: list[str],
        decoded: Any = None,
    ) -> None:
        """An input a door decided itself (too large, or a mapped message that makes no reading), counted."""
        self.quarantine(
            box, value, reasons, source=source, key=key, source_partition=partition, decoded=decoded,
            decoded_ok=decoded is not None,
        )  # fmt: skip
        m.QUARANTINED.inc()
        for code in {reason_code(r) for r in reasons}:
            m.QUARANTINE_REASONS.labels(code).inc()
        m.INPUTS.labels(source).inc()
        EVENTS_OUT.labels(SERVICE, self.quarantine_name).inc()

    def map_items(
        self, mapping: PayloadMapping, messages: list[Item], topic: str | None = None, lazy: bool = False
    ) -> list[Item]:
        """The readings the messages become with ``mapping``; a message that makes none is one item with reasons.

        Each item's ``message`` is the index of the message it came from. ``lazy``: see :func:`expand`.
        """
        out: list[Item] = []
        rules = self.rules
        made = 0
        for index, msg in enumerate(messages):
            if msg.reasons:
                out.append(Item(msg.value, None, msg.reasons, index))
                continue
            try:
                readings, reasons, decoded = expand(mapping, msg.value, rules, topic, lazy)
            except Exception as exc:  # a bug met by one message: that message is quarantined, the rest go on
                log.exception("mapping %s could not read one message", mapping.name)
                readings, reasons, decoded = [], [f"internal_error: {type(exc).__name__}"], None
            if reasons:
                out.append(Item(msg.value, None, reasons, index, decoded))
                continue
            for item in readings:
                item.message = index
            made += len(readings)
            out.extend(readings)
        m.MAPPED_MESSAGES.labels(mapping.name).inc(len(messages))
        m.MAPPED_READINGS.labels(mapping.name).inc(made)
        return out

    def write_items(
        self, box: Outbox, source: str, items: list[Item], headers: list[tuple[str, bytes]], spread: int = 0
    ) -> None:
        """Put a door's items on readings.raw keyed by sensor_id (or quarantine those decided at the door)."""
        assert self.partition_of is not None
        partitions = self.partition_of.partitions
        for n, item in enumerate(items):
            if item.sensor_id is not None:
                key: bytes | None = item.sensor_id.encode()
                partition = self.partition_of(item.sensor_id)
            else:
                key, partition = None, (spread + n) % partitions
            if item.reasons:
                self.quarantine_at_door(box, source, item.value, key, partition, item.reasons, item.decoded)
            elif self.refuse(box, source, item.value, key, partition) is None:
                box.add(self.raw_name, partition, key, item.value, headers)

    # --- one fetch of readings.raw ---------------------------------------------------------

    async def decide(self, records: list[Any], box: Outbox) -> tuple[list[Inbound], Outcome]:
        """Decide a batch into ``box``; :meth:`finish` accounts for it once the broker has the outputs.

        The pump keeps a few batches in flight so the worker decodes the next fetch while the
        broker acknowledges the last one. States are marked for the next checkpoint now; the
        pump writes a checkpoint that holds batches in flight only once the broker has
        acknowledged them, so only acknowledged work is ever checkpointed.
        """
        batch, plain = _to_inbounds(records)
        work = self.decide_inbound(batch, box)
        if plain and batch:
            work[1].inputs = {"kafka": len(batch)}  # what _account would count, without a pass over the batch
        return work

    async def submit_mapped(self, batch: list[Inbound]) -> Batch[tuple[list[Inbound], Outcome]]:
        """Readings the Kafka source door mapped (already decoded), decided as a fetch of readings.raw would be.

        The same pipeline, state, outputs and accounting (:meth:`finish`); called in the pump's turn
        (:meth:`shared.pump.Pump.beside`), for sensors whose partitions this worker reads.
        """
        return await self.submit(batch, self._decide_mapped)

    async def _decide_mapped(self, batch: list[Inbound], box: Outbox) -> tuple[list[Inbound], Outcome]:
        return self.decide_inbound(batch, box)

    def decide_inbound(self, batch: list[Inbound], box: Outbox) -> tuple[list[Inbound], Outcome]:
        """:meth:`decide` for messages already in the pipeline's shape."""
        assert self.processor is not None
        outcome = self.processor.process(batch)
        self.dirty.update(outcome.states)
        clean = outcome.clean
        # in C up to the Outbox's loop: partitions, the readings' sensor_ids as keys, their JSON
        box.add_all(
            self.clean_name,
            map(_PARTITION_OF, clean),
            map(str.encode, map(_SENSOR_ID_OF, map(_READING_OF, clean))),
            map(_ENCODED_OF, clean),
        )
        for q in outcome.quarantined:
            box.add(self.quarantine_name, q.partition, q.key, q.value)
        for partition, sensor_id, msg in outcome.forward:
            headers = [(k, v) for k, v in msg.headers if k != H_FORWARDED] + [(H_FORWARDED, b"1")]
            box.add(self.raw_name, partition, sensor_id.encode(), msg.raw() or b"", headers)
        return batch, outcome

    def finish(self, work: tuple[list[Inbound], Outcome], elapsed: float) -> None:
        """Count a batch the broker acknowledged (verdicts, cache, metrics)."""
        batch, outcome = work
        readings = list(map(_READING_OF, outcome.clean))
        # in C: a Python loop over the batch was ~2 % of the worker's CPU
        self.cache_pending.update(zip(map(_SENSOR_ID_OF, readings), readings, strict=True))
        self._account(batch, outcome)
        for item, status, reasons in outcome.verdicts:
            self.board.resolve(item, status, reasons)

    def rewind(self) -> None:
        """Forget everything since the last checkpoint; the pump then re-reads from there."""
        super().rewind()
        self.cache_pending.clear()

    def write_state(self, checkpoint: Checkpoint, dirty: dict[str, SensorState]) -> None:
        """The sensor states changed since the last checkpoint, once per sensor, in its partition."""
        assert self.partition_of is not None
        partition_of = self.partition_of
        states: dict[int, dict[bytes, Any]] = {}
        for sensor_id, state in dirty.items():
            states.setdefault(partition_of(sensor_id), {})[sensor_id.encode()] = state.to_dict()
        checkpoint.write(self.sensors, states, orjson.dumps)

    def _account(self, batch: list[Inbound], outcome: Outcome) -> None:
        # Counted in C (Counter over map): once per message, a Python loop was ~2 % of the worker's CPU.
        inputs = outcome.inputs
        if inputs is None:
            inputs = Counter(map(_SOURCE_OF, batch))
        for source, n in inputs.items():
            m.INPUTS.labels(source).inc(n)
        if outcome.clean:
            utilities = Counter(map(_UTILITY_OF, map(_READING_OF, outcome.clean)))
            # An even sample of at most LATENCY_SAMPLE readings per batch: the distribution, at a
            # fraction of the cost of observing every one (a locked histogram update each).
            now = time.time() * 1000
            observe = m.LATENCY.observe
            step = max(1, len(outcome.clean) // LATENCY_SAMPLE)
            for _, reading, _ in outcome.clean[::step]:
                observe(max(0.0, (now - reading.received_ms) / 1000.0))
            for utility, n in utilities.items():
                m.ACCEPTED.labels(utility).inc(n)
            EVENTS_OUT.labels(SERVICE, self.clean_name).inc(len(outcome.clean))
        if outcome.quarantined:
            m.QUARANTINED.inc(len(outcome.quarantined))
            EVENTS_OUT.labels(SERVICE, self.quarantine_name).inc(len(outcome.quarantined))
            for code, n in outcome.reasons.items():
                m.QUARANTINE_REASONS.labels(code).inc(n)
        if outcome.duplicates:
            m.DUPLICATES.inc(outcome.duplicates)
        if outcome.forward:
            m.FORWARDED.inc(len(outcome.forward))
        if outcome.unknown_metrics:
            m.UNKNOWN_METRICS.inc(outcome.unknown_metrics)

    # --- sensor.events -> silence table --------------------------------------------------

    async def run_events(self, stream: Any) -> None:
        async for events in stream.take_events(500, 0.5):
            records, good, _ = decode_events(events, SensorEvent, service=SERVICE, topic=self.events_name)
            mine = [(r, e) for r, e in zip(records, good, strict=True) if isinstance(r.sensor_id, str)]
            values = {r.sensor_id.encode(): {"silent": r.kind == "silent", "ts": r.ts} for r, _ in mine}
            write_once_per_key(self.silence, values, last_event_per_key((r.sensor_id.encode(), e) for r, e in mine))

    # --- silence timer ---------------------------------------------------------------------

    def _load_local(self, local: set[int]) -> None:
        """After a (re)assignment: which sensors were announced silent, and every known sensor's state.

        Reading the whole table once warms the in-memory states, which then stay current
        (the pipeline updates them), so the timer never decodes the table again.
        """
        assert self.processor is not None and self.partition_of is not None
        partition_of = self.partition_of
        silent = set()
        for key, value in self.silence.items():
            sensor_id = key.decode() if isinstance(key, bytes) else str(key)
            if value and value.get("silent") and partition_of(sensor_id) in local:
                silent.add(sensor_id)
        self.silent = silent
        cached = self.processor.states
        for key, value in self.sensors.items():
            sensor_id = key.decode() if isinstance(key, bytes) else str(key)
            if value and sensor_id not in cached and partition_of(sensor_id) in local:
                cached[sensor_id] = SensorState.from_dict(value)
        self._silence_loaded = True

    async def check_silence(self) -> tuple[list[SensorState], list[SensorState]]:
        """Publish ``silent``/``back`` for the sensors of the partitions read here; returns them (for tests)."""
        if self.app.rebalancing or self.app.in_recovery:
            return [], []
        await self.start()
        assert self.partition_of is not None and self.producer is not None
        local = self.local_partitions()
        if not local:
            return [], []
        if not self._silence_loaded:
            self._load_local(local)
        assert self.processor is not None
        now = now_ms()
        self.evict_stale(now)
        states = {sid: st for sid, st in self.processor.states.items() if st.count}
        factor = self.isettings.silence_factor
        min_ms = int(self.isettings.silence_min_s * 1000)
        went, back = silence_transitions(states, self.silent, now, factor, min_ms)
        if went or back:
            box = Outbox(self.producer)
            for kind, group in (("silent", went), ("back", back)):
                for state in group:
                    event = SensorEvent(
                        sensor_id=state.sensor_id,
                        kind=kind,
                        ts=now,
                        site=state.site,
                        zone=state.zone,
                        utility=state.utility,
                        asset=state.asset,
                        last_seen_ms=state.last_seen_ms,
                        expected_interval_ms=int(state.interval_ms),
                    )
                    box.add(
                        self.events_name, self.partition_of(state.sensor_id), state.sensor_id.encode(), dumps(event)
                    )
            await box.flush()
            self.silent.update(s.sensor_id for s in went)
            self.silent.difference_update(s.sensor_id for s in back)
            m.SENSOR_EVENTS.labels("silent").inc(len(went))
            m.SENSOR_EVENTS.labels("back").inc(len(back))
            EVENTS_OUT.labels(SERVICE, self.events_name).inc(len(went) + len(back))
            for state in went:
                log.info("sensor silent", extra={"sensor_id": state.sensor_id, "last_seen_ms": state.last_seen_ms})
        m.SENSORS.set(len(states))
        m.SILENT.set(len(self.silent))
        return went, back

    def evict_stale(self, now: int) -> int:
        """Forget sensors not heard from for ``sensor_ttl_s``: table rows (tombstones in the changelogs) and memory.

        Sensor ids are chosen by whoever sends readings; without this the tables would only grow.
        A sensor changed since the last checkpoint is kept (its new state is on its way to the table).
        """
        ttl_ms = int(self.isettings.sensor_ttl_s * 1000)
        if ttl_ms <= 0 or self.processor is None or self.partition_of is None:
            return 0
        cutoff = now - ttl_ms
        states = self.processor.states
        stale = [s for s, st in states.items() if 0 < st.last_seen_ms < cutoff and self.unsaved(s) is None]
        for sensor_id in stale:
            key = sensor_id.encode()
            with event_context(self.event(self.partition_of(sensor_id))):
                for table in (self.sensors, self.silence):
                    if table.get(key) is not None:
                        del table[key]
            del states[sensor_id]
            self.silent.discard(sensor_id)
            self.cache_pending.pop(sensor_id, None)
        if stale:
            m.EVICTED.inc(len(stale))
            log.info("forgot %d sensors not heard from for %.0f s", len(stale), ttl_ms / 1000)
        return len(stale)

    # --- Redis cache ----------------------------------------------------------------------

    async def flush_cache(self) -> int:
        """Write the latest reading and stats of each sensor that changed since the last flush."""
        if not self.cache_pending or self.processor is None:
            return 0
        pending, self.cache_pending = self.cache_pending, {}
        states = self.processor.states
        written = 0
        chunk: dict[str, Any] = {}
        for sensor_id, reading in pending.items():
            state = states.get(sensor_id)
            chunk[sensor_id] = {
                "reading": reading_dict(reading),
                "stats": state.stats() if state is not None else {},
                "silent": sensor_id in self.silent,
            }
            if len(chunk) >= CACHE_CHUNK:
                # Pipelines of bounded size, so building one never holds up the readings for long.
                await self.cache.set_many("sensor", chunk)
                written += len(chunk)
                chunk = {}
        if chunk:
            await self.cache.set_many("sensor", chunk)
            written += len(chunk)
        return written
