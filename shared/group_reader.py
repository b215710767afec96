"""Topics that are not the service's own, read by a Kafka consumer group in fetches, poison isolated.

For a stateless job over topics whose partitions Faust's tables do not follow (a door reading
topics other systems write: ingest's mapped source topics), so :class:`shared.pump.Pump`, whose
assignment and offsets are Faust tables co-partitioned with the topic, cannot host it. The group
assigns the partitions to the workers; each fetch (``getmany``) goes to the job as one batch and
its offsets are committed to the group once the job returned, i.e. once the broker acknowledged
all of its outputs: a crash or a broker outage repeats a fetch, never loses one.

A fetch whose processing raises follows the poison rule of :mod:`shared.poison` (retried after a
pause, then one message at a time, the one that fails twice set aside with its error and counted);
a set-aside message's offset is committed at once, so a restart never reads it again. Broker errors
reconnect (with backoff) and read again from the committed offsets.

A hard crash (segfault, OOM kill) raises nothing, so with ``pump_crash_guard`` each fetch's first
offsets are committed before it is processed with a *guard* in the offset's metadata (the range,
as :class:`shared.pump.Suspect` encodes it; one broker round trip), cleared by the commit after it.
A worker that finds a guard when it first fetches a partition processes that range one message at
a time, each under its own guard, and sets aside the message whose guard it finds after the next
restart ("the worker died while processing this message alone"): replayed into a crash at most
once more, as in the pump.

Topics are looked for every ``topic_check_s``: only those that exist are subscribed (aiokafka
logs an error per retry for a missing one); a new one is read from its start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from shared.poison import SetAside, isolate
from shared.pump import Suspect
from shared.settings import Settings

log = logging.getLogger(__name__)


class GroupReader:
    """``topics`` read by the consumer group ``group``; each fetch handled by ``handle`` (see the module doc).

    ``handle(records)`` must return only once the broker has the fetch's outputs, and raise before
    sending any when it fails (so a retried fetch writes nothing twice). ``start()`` returns the
    producer that set-aside messages go through.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        name: str,
        topics: Iterable[str],
        group: str,
        start: Callable[[], Awaitable[AIOKafkaProducer]],
        handle: Callable[[list[Any]], Awaitable[None]],
        set_aside_topic: str | None = None,
        source: str = "",
        on_set_aside: Callable[[list[str]], None] | None = None,
        batch_size: int = 2000,
        within_s: float = 0.05,
        session_timeout_s: float = 30.0,
        topic_check_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.service = service
        self.name = name
        self.topics = frozenset(topics)
        self.group = group
        self._start = start
        self.handle = handle
        self.aside = SetAside(settings, service, "", set_aside_topic, source)
        self.on_set_aside = on_set_aside  # the service's own accounting of what it set aside
        self.batch_size = batch_size
        self.within_s = within_s
        self.session_timeout_s = session_timeout_s
        self.topic_check_s = topic_check_s
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.connected = False
        self.batches = 0
        self.set_aside = 0
        self.last_error = ""
        # As the pump's crash guard (shared.pump), in the group's committed offsets' metadata.
        self.guard = settings.pump_crash_guard
        self.checked: set[TopicPartition] = set()  # partitions whose guard was looked at since their assignment
        self.suspects: dict[TopicPartition, Suspect] = {}

    def check(self) -> tuple[bool, str]:
        # Trouble with topics someone else writes does not make the service unready: its other inputs still work.
        if self.connected:
            return True, f"reading {len(self.topics)} {self.name} topics"
        return True, f"not reading ({self.last_error or 'starting'}); retrying"

    async def run(self) -> None:
        if not self.topics:
            return
        backoff = 0.5
        while True:
            self.consumer = consumer = self._consumer()
            self.checked, self.suspects = set(), {}  # read again from the group after a reconnect
            try:
                self.producer = await self._start()
                await consumer.start()
                self.connected = True
                backoff = 0.5
                await self._read(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: reconnect later, from the last commit
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s %s: %s; retrying in %.1fs", self.service, self.name, self.last_error, backoff)
            finally:
                self.connected = False
                await consumer.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        subscribed: set[str] = set()
        looked = 0.0
        while True:
            if time.monotonic() - looked > self.topic_check_s:
                looked = time.monotonic()
                existing = set(self.topics.intersection(await consumer.topics()))
                if existing != subscribed:
                    consumer.subscribe(sorted(existing))
                    subscribed = existing
                    log.info("%s %s: reading %s", self.service, self.name, ", ".join(sorted(existing)) or "nothing yet")
            if not subscribed:
                await asyncio.sleep(1.0)
                continue
            fetched = await consumer.getmany(timeout_ms=1000, max_records=self.batch_size)
            fetched = {tp: batch for tp, batch in fetched.items() if batch}
            if not fetched:
                continue
            if self.guard:
                await self._load_guards(consumer, fetched)
            records: list[Any] = []
            for tp, batch in fetched.items():
                suspect = self.suspects.get(tp)
                if suspect is not None:
                    # Where a worker died: one message at a time, each under its own guard.
                    careful = [r for r in batch if r.offset <= suspect.last]
                    for record in careful:
                        await self._alone(consumer, tp, suspect, record)
                    if careful and careful[-1].offset >= suspect.last:
                        del self.suspects[tp]
                    batch = batch[len(careful) :]
                records.extend(batch)
            if records:
                await self._process(consumer, records)
            self.batches += 1

    async def _process(self, consumer: AIOKafkaConsumer, records: list[Any]) -> None:
        """A fetch (less any suspect range) under one guard per partition, by the poison rule; then committed."""
        first: dict[TopicPartition, int] = {}
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first.setdefault(tp, r.offset)
            last[tp] = r.offset
        if self.guard:
            await consumer.commit(
                {tp: OffsetAndMetadata(o, Suspect(o, last[tp]).encode().decode()) for tp, o in first.items()}
            )
        self.set_aside += await isolate(
            records, self.handle, self._set_aside, service=self.service, backoff_s=self.settings.pump_retry_backoff_s
        )
        await consumer.commit({tp: OffsetAndMetadata(o + 1, "") for tp, o in last.items()})

    async def _alone(self, consumer: AIOKafkaConsumer, tp: TopicPartition, suspect: Suspect, record: Any) -> None:
        """One message of a range a worker died in; the one it died on alone is set aside."""
        if suspect.died_at == record.offset:
            log.error(
                "%s: %s partition %d offset %d killed the worker when processed alone; setting it aside",
                self.service,
                record.topic,
                record.partition,
                record.offset,
            )
            await self._set_aside(record, ["the worker died while processing this message alone"])
            return
        guard = Suspect(suspect.first, suspect.last, at=record.offset)
        await consumer.commit({tp: OffsetAndMetadata(record.offset, guard.encode().decode())})
        self.set_aside += await isolate(
            [record], self.handle, self._set_aside, service=self.service, backoff_s=self.settings.pump_retry_backoff_s
        )
        await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})

    async def _load_guards(self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Any]]) -> None:
        """For partitions fetched for the first time since they were assigned: a guard left in the group's offsets.

        A guard is committed (as the offset's metadata) before a fetch is processed and cleared by the commit
        after it: one still there means a worker stopped inside that range (a hard crash: nothing else leaves it).
        """
        assigned = consumer.assignment()
        self.checked &= assigned
        self.suspects = {tp: s for tp, s in self.suspects.items() if tp in assigned}
        unknown = [tp for tp in fetched if tp not in self.checked]
        if not unknown:
            return
        admin = AIOKafkaAdminClient(**self.settings.kafka_client_options())
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(self.group, partitions=unknown)
        finally:
            await admin.close()
        for tp in unknown:
            self.checked.add(tp)
            meta = committed.get(tp)
            guard = Suspect.decode(meta.metadata.encode()) if meta is not None and meta.metadata else None
            if guard is None or not guard.first <= meta.offset <= guard.last:  # type: ignore[union-attr]
                continue
            log.warning(
                "%s %s: %s partition %d offsets %d..%d were being processed when a worker stopped; "
                "processing them one at a time",
                self.service,
                self.name,
                tp.topic,
                tp.partition,
                meta.offset,  # type: ignore[union-attr]
                guard.last,
            )
            self.suspects[tp] = Suspect(meta.offset, guard.last, alone=True, died_at=guard.died_at)  # type: ignore[union-attr]

    async def _set_aside(self, record: Any, reasons: list[str]) -> None:
        """Set aside, then commit past it: the records before it in its partition are done (one at a time)."""
        assert self.producer is not None and self.consumer is not None
        await self.aside.put(self.producer, record, reasons)
        if self.on_set_aside is not None:
            self.on_set_aside(reasons)
        tp = TopicPartition(record.topic, record.partition)
        await self.consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})

    def _consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            **settings.kafka_client_options(),
            client_id=f"{settings.topic_prefix}flowwatch-{self.service}-{self.name}",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=max(1, int(self.within_s * 1000)),
            session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, self.session_timeout_s / 4) * 1000),
        )
