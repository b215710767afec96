"""The Faust side of ingest: the readings agent, its tables, the silence timer, the cache.

Per micro-batch (``take_events``) the readings agent

1. skips messages it had finished before a restart (``progress`` table: last finished
   offset per partition of readings.raw, written once per partition per batch);
2. decodes and validates every message (pure functions, :mod:`services.ingest.pipeline`)
   and admits valid readings against their sensor's state (duplicates, lateness);
3. produces clean readings, quarantined inputs and forwarded readings as one record batch
   per topic-partition (:class:`~services.ingest.outbox.Outbox`) and waits for the acks;
4. only then writes each changed sensor's state once (``sensors`` table) and the
   partition's progress, in the partition context of the event that last touched them
   (shared.streaming.event_context) — so recovery restores exactly what was produced;
5. tells waiting HTTP requests their verdicts and queues the sensor's latest reading
   for the Redis cache.

A crash between 3 and 4 makes the worker redo the batch: readings.clean may then carry a
reading twice (consumers are idempotent on sensor_id+ts), but nothing is ever lost. A crash
after 4 is invisible. The silence timer publishes ``silent``/``back`` to sensor.events; a
small agent on sensor.events records them in the ``silence`` table, so a restarted worker
knows which of its sensors it already announced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from services.ingest import metrics as m
from services.ingest.outbox import Outbox, PartitionMap
from services.ingest.pipeline import H_FORWARDED, H_REQUEST, H_SOURCE, BatchProcessor, Inbound, Outcome
from services.ingest.rules import Rules
from services.ingest.sensors import SensorState, silence_transitions
from services.ingest.settings import IngestSettings
from services.ingest.verdicts import VerdictBoard
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, EVENTS_IN, EVENTS_OUT
from shared.records import SensorEvent
from shared.settings import Settings
from shared.streaming import event_context
from shared.topics import READINGS_CLEAN, READINGS_QUARANTINE, READINGS_RAW, SENSOR_EVENTS, faust_topic

log = logging.getLogger(__name__)

SERVICE = m.SERVICE


def now_ms() -> int:
    return int(time.time() * 1000)


def _headers(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    items = raw.items() if isinstance(raw, dict) else raw
    out: dict[str, bytes] = {}
    for k, v in items:
        out[k.decode() if isinstance(k, bytes) else str(k)] = v if isinstance(v, bytes) else str(v).encode()
    return out


def to_inbound(event: Any) -> Inbound:
    msg = event.message
    headers = _headers(msg.headers)
    ts = msg.timestamp
    source = headers.get(H_SOURCE)
    return Inbound(
        value=msg.value,
        key=msg.key,
        partition=msg.partition,
        offset=msg.offset,
        received_ms=int(ts * 1000) if ts else now_ms(),
        source=source.decode("utf-8", "replace") if source else "kafka",
        request=headers.get(H_REQUEST),
        forwarded=H_FORWARDED in headers,
        headers=[(k, v) for k, v in headers.items()],
        event=event,
    )


class Ingest:
    """Everything of ingest that lives inside the Faust worker."""

    def __init__(self, app: faust.App, settings: Settings, isettings: IngestSettings, rules: Rules) -> None:
        self.app = app
        self.settings = settings
        self.isettings = isettings
        self.rules = rules
        self.raw_topic = faust_topic(app, READINGS_RAW, settings)
        self.events_topic = faust_topic(app, SENSOR_EVENTS, settings)
        self.raw_name = settings.topic(READINGS_RAW.name)
        self.clean_name = settings.topic(READINGS_CLEAN.name)
        self.quarantine_name = settings.topic(READINGS_QUARANTINE.name)
        self.events_name = settings.topic(SENSOR_EVENTS.name)
        # Keys are raw bytes (sensor_id); values are JSON (Faust's json codec, which is orjson when installed).
        table_opts: dict[str, Any] = {
            "key_type": bytes,
            "default": None,
            "partitions": READINGS_RAW.partitions_for(settings),
        }
        self.sensors = app.Table("sensors", help="Per-sensor state (SensorState) keyed by sensor_id", **table_opts)
        self.progress = app.Table("progress", help="Last finished offset per partition of readings.raw", **table_opts)
        self.silence = app.Table("silence", help="Sensors announced silent, keyed by sensor_id", **table_opts)
        self.board = VerdictBoard()
        self.cache = Cache(settings.redis_url, ttl_s=settings.cache_ttl_s, service=SERVICE)
        self.cache_pending: dict[str, Any] = {}
        self.silent: set[str] = set()
        self._silence_loaded = False
        self.producer: AIOKafkaProducer | None = None
        self.partition_of: PartitionMap | None = None
        self.processor: BatchProcessor | None = None
        self._start_lock = asyncio.Lock()
        self.started_error: str = ""

    # --- start-up -----------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start the output producer and learn the partition counts (first caller does it)."""
        if self.processor is not None:
            return
        async with self._start_lock:
            if self.processor is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers,
                client_id=f"{self.settings.topic_prefix}flowwatch-ingest-out",
                acks="all",
                linger_ms=5,
                max_batch_size=1024 * 1024,
                max_request_size=4 * 1024 * 1024,
            )
            await producer.start()
            try:
                counts = {}
                for name in (self.raw_name, self.clean_name, self.quarantine_name, self.events_name):
                    counts[name] = len(await producer.partitions_for(name))
            except Exception:
                await producer.stop()
                raise
            if len(set(counts.values())) != 1:
                # Sensor state is co-partitioned with readings.clean through readings.raw's partitions.
                self.started_error = f"partition counts differ, co-partitioning impossible: {counts}"
                log.error("ingest cannot start: %s", self.started_error)
            self.producer = producer
            self.partition_of = PartitionMap(counts[self.clean_name])
            self.processor = BatchProcessor(self.rules, partition_of=self.partition_of, load_state=self._load_state)
            log.info("ingest output producer started; %d partitions", counts[self.clean_name])

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.cache.close()

    def ready_check(self) -> tuple[bool, str]:
        if self.started_error:
            return False, self.started_error
        if self.processor is None:
            return True, "output producer starts with the first batch"
        return True, "producer up"

    def local_partitions(self) -> set[int]:
        """Partitions of readings.raw this worker owns now."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic == self.raw_name}

    def on_rebalance(self) -> None:
        # Another worker may have owned (and changed) these sensors meanwhile.
        if self.processor is not None:
            self.processor.forget()
        self.silent.clear()
        self._silence_loaded = False

    def _load_state(self, sensor_id: str, msg: Inbound) -> SensorState | None:
        with event_context(msg.event):
            data = self.sensors.get(sensor_id.encode())
        return SensorState.from_dict(data) if data else None

    # --- the readings agent -----------------------------------------------------------

    async def run_readings(self, stream: Any) -> None:
        async for events in stream.take_events(self.isettings.batch_size, self.isettings.batch_within_s):
            await self.handle_batch(events)

    def _done_offsets(self, batch: list[Inbound]) -> dict[int, int]:
        firsts: dict[int, Inbound] = {}
        for msg in batch:
            firsts.setdefault(msg.partition, msg)
        done: dict[int, int] = {}
        for partition, msg in firsts.items():
            with event_context(msg.event):
                value = self.progress.get(b"%d" % partition)
            if value is not None:
                done[partition] = int(value)
        return done

    async def handle_batch(self, events: list[Any]) -> Outcome:
        await self.ensure_started()
        assert self.processor is not None and self.producer is not None and self.partition_of is not None
        started = time.perf_counter()
        batch = [to_inbound(e) for e in events]
        sources: dict[str, int] = {}
        for msg in batch:
            sources[msg.source] = sources.get(msg.source, 0) + 1
        try:
            outcome = self.processor.process(batch, done_offsets=self._done_offsets(batch))
            await self._produce(outcome)
        except BaseException:
            # The in-memory states already admitted this batch; the redelivery must not see them.
            self.processor.forget()
            raise
        self._write_state(outcome, batch)
        elapsed = time.perf_counter() - started
        self._account(batch, outcome, sources, elapsed)
        for item, status, reasons in outcome.verdicts:
            self.board.resolve(item, status, reasons)
        return outcome

    async def _produce(self, outcome: Outcome) -> None:
        assert self.producer is not None
        box = Outbox(self.producer)
        for partition, reading in outcome.clean:
            box.add(self.clean_name, partition, reading.sensor_id.encode(), dumps(reading))
        for partition, record in outcome.quarantined:
            key = record.sensor_id.encode() if record.sensor_id else None
            box.add(self.quarantine_name, partition, key, dumps(record))
        for partition, sensor_id, msg in outcome.forward:
            headers = [(k, v) for k, v in msg.headers if k != H_FORWARDED] + [(H_FORWARDED, b"1")]
            box.add(self.raw_name, partition, sensor_id.encode(), msg.value or b"", headers)
        await box.flush()

    def _write_state(self, outcome: Outcome, batch: list[Inbound]) -> None:
        for sensor_id, (state, msg) in outcome.states.items():
            with event_context(msg.event):
                self.sensors[sensor_id.encode()] = state.to_dict()
        lasts: dict[int, Inbound] = {}
        for msg in batch:
            lasts[msg.partition] = msg
        for partition, msg in lasts.items():
            with event_context(msg.event):
                self.progress[b"%d" % partition] = msg.offset
        pending = self.cache_pending
        for _, reading in outcome.clean:
            pending[reading.sensor_id] = reading

    def _account(self, batch: list[Inbound], outcome: Outcome, sources: dict[str, int], elapsed: float) -> None:
        for source, n in sources.items():
            m.INPUTS.labels(source).inc(n)
        EVENTS_IN.labels(SERVICE, self.raw_name).inc(len(batch))
        BATCH_SIZE.labels(SERVICE, "readings").observe(len(batch))
        BATCH_SECONDS.labels(SERVICE, "readings").observe(elapsed)
        if outcome.clean:
            utilities: dict[str, int] = {}
            now = time.time() * 1000
            observe = m.LATENCY.observe
            for _, reading in outcome.clean:
                utilities[reading.utility] = utilities.get(reading.utility, 0) + 1
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
        if outcome.skipped:
            m.REDELIVERED.inc(outcome.skipped)
        if outcome.unknown_metrics:
            m.UNKNOWN_METRICS.inc(outcome.unknown_metrics)

    # --- sensor.events -> silence table --------------------------------------------------

    async def run_events(self, stream: Any) -> None:
        async for events in stream.take_events(500, 0.5):
            latest: dict[bytes, tuple[dict[str, Any], Any]] = {}
            for event in events:
                try:
                    data = loads(event.message.value)
                    key = data["sensor_id"].encode()
                    kind = data["kind"]
                except Exception:  # noqa: BLE001 - not ours or malformed: nothing to remember
                    continue
                latest[key] = ({"silent": kind == "silent", "ts": data.get("ts", 0)}, event)
            for key, (value, event) in latest.items():
                with event_context(event):
                    self.silence[key] = value

    # --- silence timer ---------------------------------------------------------------------

    def _local_states(self, local: set[int]) -> dict[str, SensorState]:
        assert self.processor is not None and self.partition_of is not None
        cached = self.processor.states
        states: dict[str, SensorState] = {}
        for key, value in self.sensors.items():
            sensor_id = key.decode() if isinstance(key, bytes) else str(key)
            if self.partition_of(sensor_id) not in local or not value:
                continue
            states[sensor_id] = cached.get(sensor_id) or SensorState.from_dict(value)
        return states

    async def check_silence(self) -> tuple[list[SensorState], list[SensorState]]:
        """Publish ``silent``/``back`` for this worker's sensors; returns them (for tests)."""
        if self.app.rebalancing or self.app.in_recovery:
            return [], []
        await self.ensure_started()
        assert self.partition_of is not None and self.producer is not None
        local = self.local_partitions()
        if not local:
            return [], []
        if not self._silence_loaded:
            self.silent = {
                (k.decode() if isinstance(k, bytes) else str(k))
                for k, v in self.silence.items()
                if v and v.get("silent")
            }
            self.silent = {s for s in self.silent if self.partition_of(s) in local}
            self._silence_loaded = True
        states = self._local_states(local)
        now = now_ms()
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

    # --- Redis cache ----------------------------------------------------------------------

    async def flush_cache(self) -> int:
        """Write the latest reading and stats of each sensor that changed since the last flush."""
        if not self.cache_pending or self.processor is None:
            return 0
        pending, self.cache_pending = self.cache_pending, {}
        states = self.processor.states
        items: dict[str, Any] = {}
        for sensor_id, reading in pending.items():
            state = states.get(sensor_id)
            items[sensor_id] = {
                "reading": reading,
                "stats": state.stats() if state is not None else {},
                "silent": sensor_id in self.silent,
            }
        await self.cache.set_many("sensor", items)
        return len(items)

    def sensor_ids(self) -> Iterable[str]:
        for key in self.sensors.keys():
            yield key.decode() if isinstance(key, bytes) else str(key)
