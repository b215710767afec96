"""Outbox (shared/batching.py): what reaches the record batches is what was added, headers included."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from shared import batching
from shared.batching import Outbox


class _Producer:
    """Real aiokafka record batches, kept instead of sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1 << 20, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, bytes(batch._build())))
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(topic=topic, partition=partition, offset=0))
        return done


def _records(data: bytes) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    return [(r.key, r.value, list(r.headers)) for r in DefaultRecordBatch(data)]


def test_outbox_sends_each_message_with_its_own_headers() -> None:
    producer = _Producer()
    box = Outbox(producer)  # type: ignore[arg-type]
    box.add("t", 0, b"a", b"1")
    box.add("t", 0, b"b", b"2", [("fw-source", b"http"), ("fw-request", b"r1")])
    box.add("t", 0, b"c", b"3", (("fw-forwarded", b"1"),))
    box.add("t", 1, None, b"4")
    box.add("t", 0, b"d", None)  # a tombstone

    last = asyncio.run(box.flush())

    sent = {(topic, partition): _records(data) for topic, partition, data in producer.sent}
    assert sent[("t", 0)] == [
        (b"a", b"1", []),
        (b"b", b"2", [("fw-source", b"http"), ("fw-request", b"r1")]),
        (b"c", b"3", [("fw-forwarded", b"1")]),
        (b"d", None, []),
    ]
    assert sent[("t", 1)] == [(None, b"4", [])]
    assert last == {("t", 0): 3, ("t", 1): 0}
    # messages without headers share one empty list: it must still be empty after they were written
    assert batching._NO_HEADERS == []


def test_add_all_is_add_of_each_message() -> None:
    """Partitions interleaved and repeated, a key None, a tombstone, and a topic another message already opened."""
    partitions = [0, 0, 1, 1, 0, 2, 2, 1]
    keys = [b"a", b"b", None, b"c", b"d", b"e", b"f", b"g"]
    values = [b"1", b"2", b"3", None, b"5", b"6", b"7", b"8"]

    def sent(fill: Any) -> tuple[dict[tuple[str, int], Any], dict[tuple[str, int], int], int]:
        producer = _Producer()
        box = Outbox(producer)  # type: ignore[arg-type]
        box.add("u", 1, b"x", b"0")
        box.add("t", 1, b"y", b"0", [("fw-source", b"http")])
        fill(box)
        count = box.count
        last = asyncio.run(box.flush())
        return {(topic, partition): _records(data) for topic, partition, data in producer.sent}, last, count

    def each(box: Outbox) -> None:
        for partition, key, value in zip(partitions, keys, values, strict=True):
            box.add("t", partition, key, value)

    def together(box: Outbox) -> None:
        box.add_all("t", iter(partitions), iter(keys), iter(values))

    assert sent(together) == sent(each)
    assert sent(together)[2] == 10


def test_add_all_refuses_a_record_too_large_after_adding_the_ones_before() -> None:
    box = Outbox(_Producer())  # type: ignore[arg-type]
    big = b"x" * (batching.MAX_RECORD_BYTES + 1)
    try:
        box.add_all("t", [0, 0, 1], [b"a", b"b", b"c"], [b"1", big, b"3"])
    except batching.RecordTooLarge:
        pass
    else:
        raise AssertionError("a record over the limit was taken")
    assert box.count == 1 and box._pending == {("t", 0): [(b"a", b"1", ())]}


def test_add_all_keeps_a_message_whose_partition_is_none_as_add_does() -> None:
    """A partition of None (the producer's partitioner picks one) is a key of its own, first message included."""
    each, together = Outbox(_Producer()), Outbox(_Producer())  # type: ignore[arg-type]
    for partition, key in ((None, b"a"), (None, b"b"), (0, b"c"), (None, b"d")):
        each.add("t", partition, key, b"v")  # type: ignore[arg-type]
    together.add_all("t", [None, None, 0, None], [b"a", b"b", b"c", b"d"], [b"v"] * 4)  # type: ignore[list-item]
    assert together._pending == each._pending and together.count == each.count == 4


def test_partition_map_known_is_the_memo() -> None:
    """A hot loop looks ``known`` up first and calls the map only on a miss: both must give one partition."""
    pm = batching.PartitionMap(12, max_size=2)
    assert pm.known("s-1") is None
    first = pm("s-1")
    assert pm.known("s-1") == first == batching.kafka_partition(b"s-1", 12)
    pm("s-2")
    pm("s-3")  # the memo is full: cleared, then s-3 remembered
    assert pm.known("s-1") is None and pm.known("s-3") == batching.kafka_partition(b"s-3", 12)
    assert pm("s-1") == first
