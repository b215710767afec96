"""Batched produce and batched table writes for the readings pump.

``producer.send`` costs tens of microseconds of Python per message and
``table[key] = value`` about fifty; at 20,000 readings/s (three messages and a
state write each) that alone would fill a core. :class:`Outbox` sends a
micro-batch's messages as one record batch per topic-partition, and
:func:`write_many` does what ``Table.__setitem__`` does (local store, changelog
message in the partition of the same number) for many keys at once, then
:func:`persisted` records the changelog offsets as Faust's own ack callback would,
so recovery starts where it should. (Same technique as services/ingest; kept
here rather than imported so the services stay independent.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.types import TP

from shared.streaming import event_context


class PartitionEvent:
    """Stands in for a Faust event of ``topic``/``partition``: table access goes to that partition."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


class PartitionMap:
    """key -> partition as Kafka's default partitioner (murmur2) assigns it, memoised."""

    def __init__(self, partitions: int, max_size: int = 1_000_000) -> None:
        self.partitions = partitions
        self.max_size = max_size
        self._memo: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        hit = self._memo.get(key)
        if hit is None:
            hit = (murmur2(key) & 0x7FFFFFFF) % self.partitions
            if len(self._memo) >= self.max_size:
                self._memo.clear()
            self._memo[key] = hit
        return hit


class Outbox:
    """Messages collected per topic-partition, sent as record batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.pending: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        self.count = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        self.pending.setdefault((topic, partition), []).append((key, value))
        self.count += 1

    async def send(self) -> asyncio.Future[dict[tuple[str, int], int]]:
        """Hand everything to the producer; the future gives the last offset per (topic, partition) once acked."""
        futures, counts = [], []
        pending, self.pending, self.count = self.pending, {}, 0
        producer = self.producer
        for (topic, partition), messages in pending.items():
            batch = producer.create_batch()
            for key, value in messages:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    counts.append(batch.record_count())
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a message of {len(value)} bytes does not fit a record batch for {topic}")
            if batch.record_count():
                counts.append(batch.record_count())
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        return asyncio.ensure_future(_last_offsets(futures, counts))


async def _last_offsets(futures: list[Any], counts: list[int]) -> dict[tuple[str, int], int]:
    last: dict[tuple[str, int], int] = {}
    for meta, count in zip(await asyncio.gather(*futures), counts, strict=True):
        key = (meta.topic, meta.partition)
        last[key] = max(last.get(key, -1), meta.offset + count - 1)
    return last


def write_many(table: Any, outbox: Outbox, by_partition: Mapping[int, Mapping[bytes, bytes]], event_for: Any) -> int:
    """Put raw ``{partition: {key: value}}`` into ``table``'s store and its changelog (via ``outbox``)."""
    store = table.data
    changelog = table.changelog_topic.get_topic_name()
    written = 0
    for partition, items in by_partition.items():
        with event_context(event_for(partition)):
            for key, value in items.items():
                store[key] = value
                outbox.add(changelog, partition, key, value)
                written += 1
    return written


def persisted(table: Any, last_offsets: Mapping[tuple[str, int], int]) -> None:
    """Record the changelog offsets now durable, so recovery replays only what came after."""
    changelog = table.changelog_topic.get_topic_name()
    for (topic, partition), offset in last_offsets.items():
        if topic == changelog:
            table.data.set_persisted_offset(TP(topic, partition), offset)
