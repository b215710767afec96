"""Batched produce and batched table writes for services that pump Kafka themselves.

``AIOKafkaProducer.send`` costs tens of microseconds of Python per message (a future, the
accumulator, the partitioner) and ``table[key] = value`` about fifty (one changelog message
through Faust's producer buffer per key); at 20,000 readings/s that alone fills most of a core.

* :class:`Outbox` collects ``(topic, partition, key, value, headers)`` and sends one
  ``BatchBuilder`` per topic-partition; :meth:`Outbox.flush` waits for the broker's acks,
  which is the moment the inputs of the batch may be acknowledged.
* :class:`PartitionMap` is Kafka's default partitioner (murmur2, as the Java client), memoised.
* :func:`write_many` does what ``Table.__setitem__`` does — store the value in the partition's
  local store, append it to the changelog partition of the same number — for many keys at once,
  with the changelog records going through an :class:`Outbox`; :func:`persisted` then records
  the durable changelog offsets in the store as Faust's own ack callback does, so recovery after
  a restart starts where it should.
* :func:`start_output_producer` starts the producer all of this goes through and learns the
  partition counts of the topics it will write.
* :class:`PartitionEvent` stands in for a Faust event in :func:`shared.streaming.event_context`
  when the code is not a Faust stream (a pump) but must read or write a table partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.stores.base import SerializedStore
from faust.types import TP

from shared.streaming import event_context

Headers = Sequence[tuple[str, bytes]]


async def start_output_producer(
    settings: Any, name: str, topics: Sequence[str]
) -> tuple[AIOKafkaProducer, dict[str, PartitionMap]]:
    """A started ``acks=all`` producer for record batches, and a :class:`PartitionMap` per topic.

    ``settings`` is a :class:`shared.settings.Settings` (its Kafka TLS/SASL options apply);
    ``name`` goes into the client id. A topic that does not exist stops the producer and raises.
    """
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(),
        client_id=f"{settings.topic_prefix}flowwatch-{name}-out",
        acks="all",
        linger_ms=0,  # batches are sent closed (no linger either way); a lone send() goes at once too
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        maps = {topic: PartitionMap(len(await producer.partitions_for(topic))) for topic in topics}
    except BaseException:
        await producer.stop()
        raise
    return producer, maps


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionMap:
    """key -> partition as Kafka's default partitioner assigns it, memoised (pure-Python murmur2 is µs).

    Accepts ``bytes`` keys or ``str`` keys (hashed as their UTF-8 bytes, i.e. the same partition).
    """

    def __init__(self, partitions: int, max_size: int = 1_000_000) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.partitions = partitions
        self.max_size = max_size
        self._memo: dict[str | bytes, int] = {}
        #: The memoised partition of a key, None when not worked out yet (a dict look-up: a hot loop calls this
        #: first and the map only on a miss, a tenth of the cost of the call per key).
        self.known: Callable[[str | bytes], int | None] = self._memo.get

    def __call__(self, key: str | bytes) -> int:
        hit = self._memo.get(key)
        if hit is None:
            hit = kafka_partition(key.encode("utf-8") if isinstance(key, str) else key, self.partitions)
            if len(self._memo) >= self.max_size:
                self._memo.clear()
            self._memo[key] = hit
        return hit


class PartitionEvent:
    """Stands in for a Faust event of ``topic``/``partition`` so a table access goes to that partition.

    Faust routes table reads and writes by ``current_event().message.partition`` (and checks
    ``.topic`` against the changelog's partition count); that is all it reads.
    """

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


class PartitionEvents:
    """The :class:`PartitionEvent` of each partition of ``topic``, made once: ``events(partition)``."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._made: dict[int, PartitionEvent] = {}

    def __call__(self, partition: int) -> PartitionEvent:
        event = self._made.get(partition)
        if event is None:
            event = self._made[partition] = PartitionEvent(self.topic, partition)
        return event


#: Largest key + value one record may have: under the broker's default ``max.message.bytes`` (1,048,588) with room
#: for the record and batch headers. A larger record would be refused by the broker on every attempt.
MAX_RECORD_BYTES = 1_000_000


class RecordTooLarge(ValueError):
    """A record the broker would refuse whatever the retry: an error of the record, not of the broker.

    Deliberately not a ``KafkaError``: the pump treats those as broker trouble (rewind, try again) and this one as
    a failure of the job on its input (retry once, then isolate the message and set it aside).
    """


_NO_HEADERS: list[tuple[str, bytes]] = []
_NO_PARTITION_YET = object()


class Outbox:
    """Messages collected per topic-partition, sent as record batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._pending: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers]]] = {}
        self.count = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers = ()) -> None:
        """One message; a ``None`` value is a tombstone (a table row deleted in its changelog)."""
        size = (len(value) if value else 0) + (len(key) if key else 0)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a record of {size} bytes for {topic} is over the {MAX_RECORD_BYTES}-byte limit")
        # get before setdefault: no empty list made (and dropped) per message
        pending = self._pending.get((topic, partition))
        if pending is None:
            pending = self._pending[(topic, partition)] = []
        pending.append((key, value, headers))
        self.count += 1

    def add_all(
        self, topic: str, partitions: Iterable[int], keys: Iterable[bytes | None], values: Iterable[bytes | None]
    ) -> None:
        """:meth:`add` of each message (partition, key and value side by side), without headers: one call for a
        batch, and the partition's list looked up again only when the partition changes (a fetch holds each
        partition's messages together)."""
        pending_of = self._pending
        last: object = _NO_PARTITION_YET  # not None: a None partition is a key of its own, as in add()
        pending: list[tuple[bytes | None, bytes | None, Headers]] = []
        added = 0
        try:
            for partition, key, value in zip(partitions, keys, values, strict=True):
                size = (len(value) if value else 0) + (len(key) if key else 0)
                if size > MAX_RECORD_BYTES:
                    raise RecordTooLarge(
                        f"a record of {size} bytes for {topic} is over the {MAX_RECORD_BYTES}-byte limit"
                    )
                if partition != last:
                    got = pending_of.get((topic, partition))
                    if got is None:
                        got = pending_of[(topic, partition)] = []
                    pending, last = got, partition
                pending.append((key, value, ()))
                added += 1
        finally:
            self.count += added

    async def send(self) -> asyncio.Future[dict[tuple[str, int], int]]:
        """Hand everything collected to the producer; the future resolves when the broker has it all.

        Its result is the offset of the last message written per (topic, partition).
        """
        pending, self._pending, self.count = self._pending, {}, 0
        producer = self.producer
        futures: list[asyncio.Future[Any]] = []
        counts: list[int] = []
        for (topic, partition), messages in pending.items():
            batch = producer.create_batch()
            for key, value, headers in messages:
                # aiokafka takes a list; most messages have no headers and share one empty list (it is only read)
                listed = list(headers) if headers else _NO_HEADERS
                if batch.append(key=key, value=value, timestamp=None, headers=listed) is None:
                    counts.append(batch.record_count())
                    futures.append(await _send_closed(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=listed) is None:
                        raise ValueError(
                            f"a message of {len(value or b'')} bytes does not fit a record batch for {topic}"
                        )
            if batch.record_count():
                counts.append(batch.record_count())
                futures.append(await _send_closed(producer, batch, topic, partition))
        return asyncio.ensure_future(_last_offsets(futures, counts))

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send everything collected and wait until the broker has it (see :meth:`send`)."""
        return await (await self.send())


async def _send_closed(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
    """Hand a finished record batch to the producer, to be sent at once.

    aiokafka holds an *open* batch for the producer's ``linger_ms`` in case more messages come (5 ms per hop
    here, measured in bench/bench_latency_e2e.py); ours is complete, and closing it says so.
    """
    batch.close()
    return await producer.send_batch(batch, topic, partition=partition)


async def _last_offsets(futures: list[asyncio.Future[Any]], counts: list[int]) -> dict[tuple[str, int], int]:
    last: dict[tuple[str, int], int] = {}
    for meta, count in zip(await asyncio.gather(*futures), counts, strict=True):
        key = (meta.topic, meta.partition)
        last[key] = max(last.get(key, -1), meta.offset + count - 1)
    return last


def write_many(
    table: Any,
    outbox: Outbox,
    by_partition: Mapping[int, Mapping[bytes, Any]],
    event_for: Callable[[int], Any],
    encode: Callable[[Any], bytes] | None = None,
) -> int:
    """Put ``{partition: {key: value}}`` into ``table``'s local store and its changelog (via ``outbox``).

    ``event_for(partition)`` gives a stand-in event (:class:`PartitionEvent`). The store encodes
    values with the table's own serializer; the changelog gets ``encode(value)`` — pass the
    table's codec (e.g. ``orjson.dumps`` for a json table), or nothing when the values already
    are ``bytes`` (a raw table). Synchronous: nothing is sent until the caller flushes
    ``outbox`` and passes the result to :func:`persisted`.
    """
    store = table.data
    changelog = table.changelog_topic.get_topic_name()
    written = 0
    # A store that keeps bytes (rocksdb) gets the changelog's bytes rather than encoding the value
    # a second time: recovery reads the changelog with the table's codec, so ``encode`` must give
    # what that codec gives anyway (orjson for a json table). The encoding was ~40 % of a
    # checkpoint's store writes (ingest writes every sensor's state once a second).
    put = store._set if encode is not None and isinstance(store, SerializedStore) else None
    for partition, items in by_partition.items():
        with event_context(event_for(partition)):
            for key, value in items.items():
                if put is not None:
                    data = encode(value)  # type: ignore[misc]
                    put(store._encode_key(key), data)
                    outbox.add(changelog, partition, key, data)
                else:
                    store[key] = value
                    outbox.add(changelog, partition, key, value if encode is None else encode(value))
                written += 1
    return written


def persisted(table: Any, last_offsets: Mapping[tuple[str, int], int]) -> None:
    """Record the changelog offsets now durable, so recovery replays only what came after."""
    changelog = table.changelog_topic.get_topic_name()
    for (topic, partition), offset in last_offsets.items():
        if topic == changelog:
            table.data.set_persisted_offset(TP(topic, partition), offset)
