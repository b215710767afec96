"""The readings pump: readings.raw -> :meth:`Ingest.submit` / :meth:`Ingest.complete`, one fetch at a time.

Why not a Faust agent: measured on the 2-core reference machine, Faust's consumer path
costs ~150 µs per message before an agent sees it (two ``wait_first`` task pairs, a queue,
sensors, an ack per event), so even an agent that does nothing tops out near 6,000-7,000
messages/s. The pump reads readings.raw with its own aiokafka consumer in ``getmany``
batches (one Python call per fetch, not per message) and hands each fetch to the pipeline.

What stays Faust's: the consumer group and its assignment, the tables and their recovery.
The pump consumes exactly the readings.raw partitions whose ``sensors`` table partitions
this worker owns (Faust co-partitions every topic of the group with the same partition
count), starts each at the offset recorded in the ``progress`` table (so offsets and sensor
state are checkpointed together; Kafka group offsets are not used for readings.raw), and
on every rebalance stops, checkpoints and only resumes once Faust has recovered the tables.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.ingest import metrics as m
from services.ingest.pipeline import H_FORWARDED, H_REQUEST, H_SOURCE, Inbound
from shared.metrics import CONSUMER_LAG

if TYPE_CHECKING:
    from services.ingest.engine import Ingest, Submitted

log = logging.getLogger(__name__)


def to_inbound(record: Any) -> Inbound:
    """An aiokafka ConsumerRecord as the pipeline sees it."""
    source = "kafka"
    request = None
    forwarded = False
    headers = record.headers or ()
    for name, value in headers:
        if name == H_SOURCE:
            source = value.decode("utf-8", "replace")
        elif name == H_REQUEST:
            request = value
        elif name == H_FORWARDED:
            forwarded = True
    return Inbound(
        value=record.value,
        key=record.key,
        partition=record.partition,
        offset=record.offset,
        received_ms=record.timestamp if record.timestamp and record.timestamp > 0 else int(time.time() * 1000),
        source=source,
        request=request,
        forwarded=forwarded,
        headers=headers,
    )


class ReadingsPump:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.topic = ingest.raw_name
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()
        self.lock = asyncio.Lock()  # held while a batch is in flight; rebalances wait for it
        self.paused = True
        self.last_batch_at = time.monotonic()
        self.batches = 0
        self.lag = 0
        self.inflight: deque[Submitted] = deque()

    def _app_settled(self) -> bool:
        app = self.ingest.app
        recovery = getattr(app.tables, "_recovery", None)
        recovered = recovery is None or recovery.completed.is_set()
        return not app.rebalancing and not app.in_recovery and recovered

    async def _start_consumer(self) -> AIOKafkaConsumer:
        isettings = self.ingest.isettings
        consumer = AIOKafkaConsumer(
            **self.ingest.settings.kafka_client_options(),
            client_id=f"{self.ingest.settings.topic_prefix}flowwatch-ingest-pump",
            # Never joins this group (partitions are assigned by hand); checkpointed offsets are
            # also committed under it, only so that standard lag tools see ingest's progress.
            group_id=f"{self.ingest.app.conf.id}-readings",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=isettings.batch_size,
            fetch_max_wait_ms=max(1, int(isettings.batch_within_s * 1000)),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await consumer.start()
        return consumer

    async def _reassign(self, wanted: set[int]) -> None:
        """Follow Faust's assignment: start each partition where its last checkpoint ended."""
        assert self.consumer is not None
        tps = [TopicPartition(self.topic, p) for p in sorted(wanted)]
        self.consumer.assign(tps)
        offsets = self.ingest.checkpointed_offsets(wanted)
        for tp in tps:
            done = offsets.get(tp.partition)
            if done is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, done + 1)
        self.assigned = set(wanted)
        log.info("pump consuming %s partitions %s from %s", self.topic, sorted(wanted), offsets)

    async def drain(self) -> None:
        """Wait for every batch in flight; on a failed produce, rewind to the last checkpoint."""
        try:
            while self.inflight:
                await self.ingest.complete(self.inflight[0])
                self.inflight.popleft()
                self.batches += 1
                self.last_batch_at = time.monotonic()
        except KafkaError as exc:
            await self._rewind(exc)

    async def _rewind(self, exc: BaseException) -> None:
        # The outputs of some batch did not reach the broker: nothing after the last checkpoint
        # counts. Drop the in-memory state and read again from the checkpointed offsets.
        log.error("producing a batch failed; rewinding to the last checkpoint: %s", exc)
        m.REWINDS.inc()
        for sub in self.inflight:
            sub.acked.cancel()
        self.inflight.clear()
        self.ingest.rewind()
        if self.assigned:
            await self._reassign(set(self.assigned))

    async def on_revoked(self) -> None:
        """Called (and awaited) by Faust before it takes partitions away: finish, checkpoint, stop."""
        self.paused = True
        async with self.lock:
            await self.drain()
            await self.ingest.checkpoint()
            self.ingest.forget()
            if self.consumer is not None and self.assigned:
                self.consumer.assign([])
            self.assigned = set()

    async def run(self) -> None:
        ingest = self.ingest
        await ingest.ensure_started()
        if ingest.started_error:
            return  # not ready, with the reason on /ready; reading would break co-partitioning
        self.consumer = await self._start_consumer()
        # Everything allocated so far (Faust, the app, the rules) lives as long as the process;
        # keeping it out of the collector's scans roughly halved the p99 latency in the bench.
        gc.freeze()
        batch_size = ingest.isettings.batch_size
        within_ms = max(1, int(ingest.isettings.batch_within_s * 1000))
        checkpoint_every = ingest.isettings.checkpoint_s
        window = max(1, ingest.isettings.batches_in_flight)
        last_checkpoint = time.monotonic()
        try:
            while True:
                if not self._app_settled():
                    self.paused = True
                    await asyncio.sleep(0.1)
                    continue
                wanted = ingest.owned_partitions()
                if self.paused or wanted != self.assigned:
                    async with self.lock:
                        await self.drain()
                        if self.assigned - wanted:
                            await ingest.checkpoint()
                            ingest.forget()
                        await self._reassign(wanted)
                        self.paused = False
                if not self.assigned:
                    await asyncio.sleep(0.2)
                    continue
                # With batches in flight, take what is already fetched rather than wait for more.
                fetched = await self.consumer.getmany(
                    timeout_ms=0 if self.inflight else within_ms, max_records=batch_size
                )
                async with self.lock:
                    if self.paused:
                        continue  # a revoke came in while fetching: these are re-read after reassignment
                    batch = [to_inbound(r) for records in fetched.values() for r in records]
                    if batch:
                        try:
                            self.inflight.append(await ingest.submit(batch))
                        except KafkaError as exc:
                            await self._rewind(exc)
                            continue
                    # Complete the oldest batches: those already acknowledged, and any beyond the window.
                    while self.inflight and (self.inflight[0].acked.done() or len(self.inflight) > window or not batch):
                        try:
                            await ingest.complete(self.inflight[0])
                        except KafkaError as exc:
                            await self._rewind(exc)
                            break
                        self.inflight.popleft()
                        self.batches += 1
                        self.last_batch_at = time.monotonic()
                    now = time.monotonic()
                    if now - last_checkpoint >= checkpoint_every:
                        await self.drain()
                        done = await ingest.checkpoint()
                        last_checkpoint = now
                        await self._publish_progress(done)
        finally:
            await self.consumer.stop()

    async def _publish_progress(self, done: dict[int, int]) -> None:
        """Consumer lag for /metrics, and the checkpointed offsets for external lag tools (best effort)."""
        assert self.consumer is not None
        offsets = {TopicPartition(self.topic, p): o + 1 for p, o in done.items() if p in self.assigned}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:
                log.debug("could not mirror offsets to the consumer group: %s", exc)
        await self._report_lag()

    async def _report_lag(self) -> None:
        assert self.consumer is not None
        lag = 0
        for p in self.assigned:
            tp = TopicPartition(self.topic, p)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag += max(0, highwater - await self.consumer.position(tp))
        self.lag = lag
        CONSUMER_LAG.labels("ingest", self.topic).set(lag)

    def check(self, stall_seconds: float) -> tuple[bool, str]:
        stalled = self.stalled_for()
        if stalled > stall_seconds:
            return False, f"no batch for {stalled:.0f}s with {self.lag} readings waiting"
        if self.paused:
            if self.ingest.owned_partitions():
                return False, "starting: waiting for table recovery before reading readings.raw"
            return True, "no partitions assigned to this worker"
        return True, f"partitions {sorted(self.assigned)}, lag {self.lag}"

    def stalled_for(self) -> float:
        """Seconds without a batch while readings wait in readings.raw (0 when idle or caught up)."""
        if self.paused or not self.assigned or self.lag <= 0:
            return 0.0
        return time.monotonic() - self.last_batch_at
