"""The detector inside the Faust worker: the readings pump, micro-batches, state checkpoints, outputs.

Why not a Faust agent on readings.clean: Faust's consumer path costs on the order of
150 µs per message before an agent sees it (measured on the 2-core reference machine,
see docs/detector.md), which caps a worker far below the 20,000 readings/s target
whatever the agent does. The pump reads readings.clean with its own aiokafka consumer
in ``getmany`` fetches (one Python call per fetch) and hands each fetch to
:class:`~services.detector.pipeline.Scorer` as one micro-batch.

What stays Faust's: the consumer group and the partition assignment, the tables and
their recovery. The pump consumes exactly the readings.clean partitions whose
``detector-sensor-state`` table partitions this worker owns (Faust co-partitions the
group's topics by partition number), starts each at the offset recorded in the
``detector-progress`` table, and on a rebalance finishes its batch, checkpoints and
only resumes once Faust has recovered the tables.

Per micro-batch: decode, score (in a thread, so heartbeats keep flowing), then the
scores, anomalies, zone partials and quarantined messages go out as one record batch
per topic-partition; once the broker has acknowledged them the batch counts as done.
Every ``checkpoint_s`` the states of the sensors that changed (once per sensor, however
many readings it had) and the last done offset per partition are written to the tables
together, so a restart resumes exactly there: readings after the checkpoint are scored
again from the checkpointed state, which reproduces the same scores (at-least-once
outputs, idempotent on sensor_id + ts).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.detector import aggregates
from services.detector import metrics as m
from services.detector.pipeline import BatchResult, Scorer
from services.detector.settings import DetectorSettings
from services.detector.state import pack, unpack
from shared.batching import Outbox, PartitionEvent, PartitionMap, persisted, write_many
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, CONSUMER_LAG, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.records import QuarantinedReading, Reading
from shared.settings import Settings
from shared.streaming import event_context
from shared.topics import ANOMALIES, READINGS_CLEAN, READINGS_QUARANTINE, SCORES

log = logging.getLogger(__name__)

SERVICE = "detector"
PARTIALS_TOPIC = "detector.zone-partials"


def decode(value: bytes | None) -> tuple[Reading | None, str]:
    """A reading from its wire bytes, or the reason it is not one."""
    try:
        data = loads(value or b"")
        if not isinstance(data, dict):
            return None, f"undecodable: expected a JSON object, got {type(data).__name__}"
        r = Reading.from_dict(data)
    except (ValueError, TypeError) as exc:
        return None, f"undecodable: {type(exc).__name__}: {exc}"
    if not isinstance(r.sensor_id, str) or not r.sensor_id:
        return None, "invalid: missing sensor_id"
    if not isinstance(r.ts, int) or isinstance(r.ts, bool):
        return None, "invalid: ts is not an integer (epoch ms)"
    if not isinstance(r.values, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in r.values.values()
    ):
        return None, "invalid: values must be a map of numbers"
    return r, ""


@dataclass(slots=True)
class Submitted:
    """A micro-batch whose outputs are on their way to the broker."""

    offsets: dict[int, int]  # partition -> last offset in the batch
    partitions: dict[str, int]  # sensor -> its readings.clean partition
    result: BatchResult
    readings: int
    quarantined: int
    acked: asyncio.Future[Any]
    started: float


class DetectorEngine:
    def __init__(self, app: Any, settings: Settings, ds: DetectorSettings, scorer: Scorer) -> None:
        self.app = app
        self.settings = settings
        self.ds = ds
        self.scorer = scorer
        self.clean_name = settings.topic(READINGS_CLEAN.name)
        self.names = {
            "scores": settings.topic(SCORES.name),
            "anomalies": settings.topic(ANOMALIES.name),
            "quarantine": settings.topic(READINGS_QUARANTINE.name),
            "partials": settings.topic(PARTIALS_TOPIC),
        }
        opts: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "default": None}
        opts["partitions"] = READINGS_CLEAN.partitions_for(settings)
        self.states = app.Table("detector-sensor-state", help="Rolling state per sensor (packed vector)", **opts)
        self.progress = app.Table(
            "detector-progress", help="Last checkpointed offset per readings.clean partition", **opts
        )
        self.cache = Cache(
            settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE
        )
        self.producer: AIOKafkaProducer | None = None
        self.partition_of: dict[str, PartitionMap] = {}
        # latest state (metrics, vector) of every sensor seen since the assignment; packed at checkpoints
        self.memory: dict[str, tuple[tuple[str, ...], Any]] = {}
        self.dirty: dict[str, int] = {}  # sensor -> partition, changed since the last checkpoint
        self.finished: dict[int, int] = {}
        self._events: dict[int, PartitionEvent] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()
        self.paused = True
        self.lock = asyncio.Lock()
        self.inflight: deque[Submitted] = deque()
        self.last_batch_at = time.monotonic()
        self.lag = 0
        self.error = ""
        self.cache_latest: dict[str, dict[str, Any]] = {}
        self.cache_counts: dict[str, int] = {}
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=20_000)
        self.totals = {"batches": 0, "readings": 0, "anomalies": 0, "late": 0, "quarantined": 0, "checkpoints": 0}

    # --- start-up and partitions ------------------------------------------------------------

    async def ensure_started(self) -> None:
        if self.producer is not None:
            return
        producer = AIOKafkaProducer(
            **self.settings.kafka_client_options(),
            client_id=f"{self.settings.topic_prefix}flowwatch-detector-out",
            acks="all",
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        await producer.start()
        try:
            for kind, name in self.names.items():
                self.partition_of[kind] = PartitionMap(len(await producer.partitions_for(name)))
            clean = len(await producer.partitions_for(self.clean_name))
        except Exception:
            await producer.stop()
            raise
        if clean != self.states.partitions:
            self.error = f"{self.clean_name} has {clean} partitions, the state table {self.states.partitions}"
            log.error("detector cannot co-partition its state: %s", self.error)
        self.producer = producer

    def _event(self, partition: int) -> PartitionEvent:
        event = self._events.get(partition)
        if event is None:
            event = self._events[partition] = PartitionEvent(self.clean_name, partition)
        return event

    def owned_partitions(self) -> set[int]:
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return set()
        changelog = self.states.changelog_topic.get_topic_name()
        return {tp.partition for tp in actives if tp.topic == changelog}

    def _settled(self) -> bool:
        app = self.app
        recovery = getattr(app.tables, "_recovery", None)
        recovered = recovery is None or recovery.completed.is_set()
        return not app.rebalancing and not app.in_recovery and recovered

    def checkpointed_offsets(self, partitions: set[int]) -> dict[int, int]:
        out = {}
        for p in partitions:
            with event_context(self._event(p)):
                value = self.progress.get(b"%d" % p)
            if value is not None:
                out[p] = int(value)
        return out

    def load_state(self, sensor_id: str, partition: int) -> tuple[tuple[str, ...], Any] | None:
        hit = self.memory.get(sensor_id)
        if hit is None:
            with event_context(self._event(partition)):
                raw = self.states.get(sensor_id.encode())
            if raw is not None:
                try:
                    hit = self.memory[sensor_id] = unpack(raw)
                except ValueError as exc:
                    m.STATE_ERRORS.inc()
                    log.warning("stored state of %s unreadable (%s); starting it afresh", sensor_id, exc)
        return hit

    def forget(self) -> None:
        self.memory.clear()

    # --- one micro-batch ----------------------------------------------------------------------

    async def submit(self, records: list[Any]) -> Submitted:
        assert self.producer is not None
        started = time.perf_counter()
        readings: list[Reading] = []
        partitions: dict[str, int] = {}
        offsets: dict[int, int] = {}
        box = Outbox(self.producer)
        bad = 0
        now = int(time.time() * 1000)
        for rec in records:
            offsets[rec.partition] = rec.offset
            r, why = decode(rec.value)
            if r is None:
                bad += 1
                key = rec.key.decode("utf-8", "replace") if rec.key else None
                payload = (rec.value or b"").decode("utf-8", "replace")
                q = QuarantinedReading(
                    payload=payload, source="detector", reasons=[why], received_ms=now, sensor_id=key
                )
                qkey = rec.key or None
                part = (
                    self.partition_of["quarantine"](qkey)
                    if qkey
                    else rec.partition % self.partition_of["quarantine"].partitions
                )
                box.add(self.names["quarantine"], part, qkey, dumps(q))
                m.QUARANTINED.labels(why.split(":")[0]).inc()
                continue
            readings.append(r)
            partitions[r.sensor_id] = rec.partition
        states = {sid: self.load_state(sid, p) for sid, p in partitions.items()}
        try:
            if self.ds.compute_in_thread and readings:
                result = await asyncio.to_thread(self.scorer.process, readings, states.get)
            else:
                result = self.scorer.process(readings, states.get)
        except Exception as exc:  # a batch that cannot be scored is quarantined, never lost
            log.exception("scoring a batch of %d readings failed; quarantining it", len(readings))
            why = f"scoring failed: {type(exc).__name__}: {exc}"
            for r in readings:
                key = r.sensor_id.encode()
                q = QuarantinedReading(
                    payload=r.to_dict(), source="detector", reasons=[why], received_ms=now, sensor_id=r.sensor_id
                )
                box.add(self.names["quarantine"], self.partition_of["quarantine"](key), key, dumps(q))
            m.QUARANTINED.labels("scoring failed").inc(len(readings))
            bad += len(readings)
            readings, partitions, result = [], {}, BatchResult()
        for sid, blob in result.states.items():
            self.memory[sid] = blob
        pscores, panom, ppart = (
            self.partition_of["scores"],
            self.partition_of["anomalies"],
            self.partition_of["partials"],
        )
        scores_t, anomalies_t, partials_t = self.names["scores"], self.names["anomalies"], self.names["partials"]
        for s in result.scores:
            key = s.sensor_id.encode()
            box.add(scores_t, pscores(key), key, dumps(s))
        for a in result.anomalies:
            key = a.sensor_id.encode()
            box.add(anomalies_t, panom(key), key, dumps(a))
        for zone, partial in result.partials.items():
            key = zone.encode()
            box.add(partials_t, ppart(key), key, dumps(partial))
        return Submitted(offsets, partitions, result, len(readings), bad, await box.send(), started)

    async def complete(self, sub: Submitted) -> None:
        """Wait for a batch's acks; then its offsets and states count for the next checkpoint."""
        await sub.acked
        self.finished.update(sub.offsets)
        self.dirty.update(sub.partitions)
        result = sub.result
        elapsed = time.perf_counter() - sub.started
        self.recent.append((elapsed, sub.readings + sub.quarantined))
        t = self.totals
        t["batches"] += 1
        t["readings"] += sub.readings
        t["anomalies"] += len(result.anomalies)
        t["late"] += result.late
        t["quarantined"] += sub.quarantined
        EVENTS_IN.labels(SERVICE, self.clean_name).inc(sub.readings + sub.quarantined)
        if sub.quarantined:
            DECODE_ERRORS.labels(SERVICE, self.clean_name).inc(sub.quarantined)
        EVENTS_OUT.labels(SERVICE, self.names["scores"]).inc(len(result.scores))
        EVENTS_OUT.labels(SERVICE, self.names["anomalies"]).inc(len(result.anomalies))
        BATCH_SIZE.labels(SERVICE, "score").observe(sub.readings + sub.quarantined)
        BATCH_SECONDS.labels(SERVICE, "score").observe(elapsed)
        if result.late:
            m.LATE.inc(result.late)
        if result.bad_states:
            m.STATE_ERRORS.inc(result.bad_states)
        by_model: dict[str, int] = {}
        flagged_by_model: dict[str, int] = {}
        for s in result.scores:
            by_model[s.model] = by_model.get(s.model, 0) + 1
            if s.is_anomaly:
                flagged_by_model[s.model] = flagged_by_model.get(s.model, 0) + 1
        for name, n in by_model.items():
            m.READINGS_SCORED.labels(name).inc(n)
        for name, n in flagged_by_model.items():
            m.ANOMALIES.labels(name).inc(n)
        if self.ds.cache_enabled and (result.scores or result.anomalies):
            latest = {
                s.sensor_id: {
                    "ts": s.ts,
                    "score": s.score,
                    "threshold": s.threshold,
                    "is_anomaly": s.is_anomaly,
                    "model_version": s.model_version,
                    "zone": s.zone,
                }
                for s in result.scores
            }
            flagged: dict[str, int] = {}
            for a in result.anomalies:
                key = aggregates.zone_key(a.site, a.zone, a.utility)
                flagged[key] = flagged.get(key, 0) + 1
            # coalesced: a sensor scored many times between flushes costs one Redis write
            self.cache_latest.update(latest)
            for key, n in flagged.items():
                self.cache_counts[key] = self.cache_counts.get(key, 0) + n

    async def flush_cache(self) -> None:
        """Write the latest score per sensor and the new anomaly counts per zone to Redis (best effort)."""
        latest, self.cache_latest = self.cache_latest, {}
        counts, self.cache_counts = self.cache_counts, {}
        if latest:
            await self.cache.set_many("score", latest)
        if counts:
            await self.cache.incr_many("zone_anomalies", counts)

    async def checkpoint(self) -> int:
        """Write changed sensor states and done offsets, once per key, in their partitions."""
        if not self.dirty and not self.finished:
            return 0
        assert self.producer is not None
        dirty, self.dirty = self.dirty, {}
        finished, self.finished = self.finished, {}
        states: dict[int, dict[bytes, bytes]] = {}
        for sid, partition in dirty.items():
            held = self.memory.get(sid)
            if held is not None:
                states.setdefault(partition, {})[sid.encode()] = pack(*held)
        progress = {p: {b"%d" % p: b"%d" % offset} for p, offset in finished.items()}
        box = Outbox(self.producer)
        try:
            write_many(self.states, box, states, self._event)
            write_many(self.progress, box, progress, self._event)
            last = await (await box.send())
        except BaseException:
            for sid, p in dirty.items():
                self.dirty.setdefault(sid, p)
            for p, offset in finished.items():
                self.finished.setdefault(p, offset)
            raise
        persisted(self.states, last)
        persisted(self.progress, last)
        self.totals["checkpoints"] += 1
        return len(dirty)

    # --- the pump -------------------------------------------------------------------------------

    async def _start_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(),
            client_id=f"{self.settings.topic_prefix}flowwatch-detector-pump",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.ds.batch_size,
            fetch_max_wait_ms=max(1, int(self.ds.batch_wait_s * 1000)),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await consumer.start()
        return consumer

    async def _reassign(self, wanted: set[int]) -> None:
        assert self.consumer is not None
        tps = [TopicPartition(self.clean_name, p) for p in sorted(wanted)]
        self.consumer.assign(tps)
        offsets = self.checkpointed_offsets(wanted)
        for tp in tps:
            done = offsets.get(tp.partition)
            if done is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, done + 1)
        self.assigned = set(wanted)
        log.info("detector consuming %s partitions %s from %s", self.clean_name, sorted(wanted), offsets)

    async def drain(self) -> None:
        while self.inflight:
            await self.complete(self.inflight[0])
            self.inflight.popleft()
            self.last_batch_at = time.monotonic()

    async def _rewind(self, exc: BaseException) -> None:
        log.error("producing a batch failed; rewinding to the last checkpoint: %s", exc)
        m.SEND_ERRORS.labels("batch").inc()
        for sub in self.inflight:
            sub.acked.cancel()
        self.inflight.clear()
        self.dirty.clear()
        self.finished.clear()
        self.forget()
        if self.assigned:
            await self._reassign(set(self.assigned))

    async def on_revoked(self) -> None:
        """Awaited by Faust before it takes partitions away: finish, checkpoint, stop reading."""
        self.paused = True
        async with self.lock:
            try:
                await self.drain()
                await self.checkpoint()
            except KafkaError as exc:
                log.error("checkpoint before a rebalance failed; the next owner replays from the last one: %s", exc)
            self.forget()
            if self.consumer is not None and self.assigned:
                self.consumer.assign([])
            self.assigned = set()

    async def run(self) -> None:
        await self.ensure_started()
        # Everything alive now (modules, models, tables) lives for the whole process: keep it out
        # of the collector's way, and collect young objects less often; the hot path allocates a
        # few objects per reading and frees them within the batch.
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        self.consumer = await self._start_consumer()
        batch_size = self.ds.batch_size
        within_ms = max(1, int(self.ds.batch_wait_s * 1000))
        window = max(1, self.ds.batches_in_flight)
        last_checkpoint = time.monotonic()
        try:
            while True:
                if not self._settled():
                    self.paused = True
                    await asyncio.sleep(0.1)
                    continue
                wanted = self.owned_partitions()
                if self.paused or wanted != self.assigned:
                    async with self.lock:
                        await self.drain()
                        if self.assigned - wanted:
                            await self.checkpoint()
                            self.forget()
                        await self._reassign(wanted)
                        self.paused = False
                if not self.assigned:
                    await asyncio.sleep(0.2)
                    continue
                fetched = await self.consumer.getmany(
                    timeout_ms=0 if self.inflight else within_ms, max_records=batch_size
                )
                async with self.lock:
                    if self.paused:
                        continue  # a revoke came in while fetching: re-read after the reassignment
                    batch = [r for records in fetched.values() for r in records]
                    if batch:
                        try:
                            self.inflight.append(await self.submit(batch))
                        except KafkaError as exc:
                            await self._rewind(exc)
                            continue
                    while self.inflight and (self.inflight[0].acked.done() or len(self.inflight) > window or not batch):
                        try:
                            await self.complete(self.inflight[0])
                        except KafkaError as exc:
                            await self._rewind(exc)
                            break
                        self.inflight.popleft()
                        self.last_batch_at = time.monotonic()
                    now = time.monotonic()
                    if now - last_checkpoint >= self.ds.checkpoint_s:
                        await self.drain()
                        await self.checkpoint()
                        last_checkpoint = now
                        await self._report_lag()
        finally:
            await self.consumer.stop()

    async def _report_lag(self) -> None:
        assert self.consumer is not None
        lag = 0
        for p in self.assigned:
            tp = TopicPartition(self.clean_name, p)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag += max(0, highwater - await self.consumer.position(tp))
        self.lag = lag
        CONSUMER_LAG.labels(SERVICE, self.clean_name).set(lag)

    def check(self, stall_seconds: float) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        if self.producer is None:
            return False, "starting: output producer not started yet"
        stalled = self.stalled_for()
        if stalled > stall_seconds:
            return False, f"no batch for {stalled:.0f}s with {self.lag} readings waiting"
        if self.paused:
            if self.owned_partitions():
                return False, "starting: waiting for table recovery before reading readings.clean"
            return True, "no partitions assigned to this worker"
        return True, f"partitions {sorted(self.assigned)}, lag {self.lag}"

    def stalled_for(self) -> float:
        if self.paused or not self.assigned or self.lag <= 0:
            return 0.0
        return time.monotonic() - self.last_batch_at

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.cache.close()
