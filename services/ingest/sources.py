"""The Kafka door for other formats: source topics read through a payload mapping into readings.raw.

A mapping's ``kafka:`` topics (prefixed by ``FLOWWATCH_TOPIC_PREFIX`` like every flowwatch topic)
are read by a :class:`~shared.group_reader.GroupReader` in the consumer group ``<app id>-sources``
(so several workers share them), in ``getmany`` fetches: each fetch is mapped
(:meth:`~services.ingest.worker.Ingest.map_items`: the decode limits first, then the mapping), its
readings written to readings.raw keyed by sensor_id and its failures to readings.quarantine
(``mapping_error`` naming the mapping and the field, or the decode reason). The offsets are
committed only after the broker acknowledged all of it, so a crash or a broker outage repeats a
fetch but never loses one (readings.clean consumers are idempotent on sensor_id and ts). From
readings.raw on, the readings take the one validation path.

The readings of sensors whose readings.raw partition this worker reads skip readings.raw (unless
``FLOWWATCH_INGEST_SOURCES_DIRECT=false``): in the readings pump's turn (:meth:`shared.pump.Pump.beside`)
they go, already decoded, to the same pipeline (:meth:`~services.ingest.worker.Ingest.submit_mapped`),
and the pump checkpoints the state they changed before the door returns, so the fetch's offsets are
committed only once that state is durable: a crash replays the fetch, whose readings the state then
recognises. When the pump reads nothing here (starting, rebalancing) or the work is lost to a rewind,
they take readings.raw. The source topic is then the record of what arrived (docs/ingest.md).

A fetch whose handling raises (a bug met by some message, beyond the per-message mapping errors)
follows the poison rule of :mod:`shared.poison`: retried, then one message at a time, the one that
fails twice quarantined with ``processing failed twice: <error>`` (source ``kafka``) and counted in
``flowwatch_pump_set_aside_total{service="ingest"}``; its offset is committed, so it is not read again.

Not a Faust agent: Faust's per-message consumer path caps an agent at ~6,000-7,000 messages/s on
the reference machine (docs/ingest.md), and a gas station's message is one reading. Not the
readings pump either: its partitions follow ingest's tables, and source topics belong to whoever
writes them (any partition count, created whenever): ingest does not create them. The reader
reads those that exist and looks for the others every ``TOPIC_CHECK_S``; a new one is read from
its start (the group has no offset for it yet).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from services.ingest import metrics as m
from services.ingest.mappings import PayloadMapping
from services.ingest.payloads import Item, written
from services.ingest.pipeline import H_MAPPING, H_SOURCE, Inbound
from services.ingest.validation import reason_code
from shared.batching import Outbox
from shared.group_reader import GroupReader
from shared.pump import Pump
from shared.topics import READINGS_QUARANTINE

if TYPE_CHECKING:
    from services.ingest.worker import Ingest

#: How often (seconds) the reader looks for source topics created since it started.
TOPIC_CHECK_S = 30.0


def counted(reasons: list[str]) -> None:
    """A source message set aside counts as a quarantined input of the Kafka door."""
    m.QUARANTINED.inc()
    for code in {reason_code(r) for r in reasons}:
        m.QUARANTINE_REASONS.labels(code).inc()
    m.INPUTS.labels("kafka").inc()


def owned_here(
    mapped: list[tuple[str, list[Item]]], local: frozenset[int], partition_of: Callable[[str], int], received_ms: int
) -> tuple[list[Inbound], list[tuple[str, list[Item]]]]:
    """The mapped readings of sensors in ``local`` partitions as the pipeline's input, and the others (by topic).

    ``local``: the readings.raw partitions this worker reads now, whose sensors' state it holds.
    """
    mine: list[Inbound] = []
    others: list[tuple[str, list[Item]]] = []
    for topic, items in mapped:
        elsewhere: list[Item] = []
        for item in items:
            sensor_id = item.sensor_id
            assert sensor_id is not None  # MappedSources.handle hands only those with one
            partition = partition_of(sensor_id)
            if partition in local:
                # positional, as worker.to_inbound; not read from readings.raw, so no offset
                mine.append(Inbound(item.value, sensor_id.encode(), partition, -1, received_ms, "kafka",
                                    None, False, (), item.decoded))  # fmt: skip
            else:
                elsewhere.append(item)
        if elsewhere:
            others.append((topic, elsewhere))
    return mine, others


def caught_up(local: frozenset[int], written: dict[int, int], done_through: Callable[[int], int]) -> frozenset[int]:
    """The partitions of ``local`` whose readings.raw the pump has decided up to what this door wrote there.

    ``written``: partition -> the last offset the door wrote to readings.raw (a fallback, a sensor owned elsewhere
    then). Until the pump is past it, a newer reading of the same sensor taken directly would make those look late.
    """
    return frozenset(p for p in local if p not in written or done_through(p) >= written[p])


class MappedSources:
    """Every mapped source topic of this worker's mappings, read by one consumer group."""

    def __init__(self, ingest: Ingest, pump: Pump | None = None) -> None:
        self.ingest = ingest
        settings = ingest.settings
        isettings = ingest.isettings
        self.routes: dict[str, PayloadMapping] = {
            settings.topic(name): mp for mp in ingest.mappings.values() for name in mp.kafka
        }
        self.headers = {
            topic: [(H_SOURCE, b"kafka"), (H_MAPPING, mp.name.encode())] for topic, mp in self.routes.items()
        }
        self.group = f"{ingest.app.conf.id}-sources"
        self.reader = GroupReader(
            settings,
            service="ingest",
            name="sources",
            topics=self.routes,
            group=self.group,
            start=self.start,
            handle=self.handle,
            set_aside_topic=settings.topic(READINGS_QUARANTINE.name),
            source="kafka",
            on_set_aside=counted,
            batch_size=isettings.batch_size,
            within_s=isettings.batch_within_s,
            session_timeout_s=isettings.session_timeout_s,
            topic_check_s=TOPIC_CHECK_S,
        )
        self._spread = 0
        # The readings pump, to hand it mapped readings of its partitions (None: all take readings.raw).
        self.pump = pump
        self.raw_name = ingest.raw_name
        # partition -> the last readings.raw offset this door wrote: readings of that partition go to the pipeline
        # directly only once the pump has finished up to it, so a sensor's readings are decided in order.
        self.raw_written: dict[int, int] = {}
        self.max_line_bytes = isettings.max_line_bytes

    def check(self) -> tuple[bool, str]:
        return self.reader.check()

    async def run(self) -> None:
        await self.reader.run()

    async def start(self) -> AIOKafkaProducer:
        await self.ingest.start()
        assert self.ingest.producer is not None
        return self.ingest.producer

    async def handle(self, records: list[Any]) -> None:
        """Map and write one fetch (aiokafka records of the source topics); returns once all of it is durable.

        With the pump given, mapped readings of sensors whose readings.raw partition this worker reads go
        straight to the pipeline in the pump's turn (:meth:`shared.pump.Pump.beside`, which returns once
        their outputs are acknowledged and the state they changed is checkpointed); the others go to
        readings.raw. What goes to readings.raw and readings.quarantine is collected before anything is
        sent and sent last, so a fetch that raises before the pump's turn has written nothing.
        """
        ingest = self.ingest
        assert ingest.producer is not None
        by_topic: dict[str, list[Item]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(Item(r.value if isinstance(r.value, bytes) else b"", None))
        box = Outbox(ingest.producer)
        mapped: list[tuple[str, list[Item]]] = []
        for topic in list(by_topic):
            # popped: the fetch's messages are not held while the pipeline works (fewer objects for the collector)
            # lazy: the readings handed to the pipeline are not written as JSON (those that take readings.raw are)
            items = ingest.map_items(self.routes[topic], by_topic.pop(topic), None, self.pump is not None)
            if self.pump is not None:
                # What the pipeline can take without readings.raw: a sensor to own it, nothing decided at the
                # door. Those decided at the door (mapping errors; too large for readings.raw, quarantined with
                # the door's record) and those without a sensor_id (no owner: the pipeline quarantines them)
                # take readings.raw as before.
                direct: list[Item] = []
                rest: list[Item] = []
                limit = self.max_line_bytes
                for item in items:
                    value = item.value
                    if item.reasons is None and item.sensor_id is not None and (value is None or len(value) <= limit):
                        direct.append(item)
                    else:
                        rest.append(item)
                if direct:
                    mapped.append((topic, direct))
                    items = rest
            self._write_raw(box, topic, items)
        if mapped:
            for topic, items in await self._direct(mapped):
                self._write_raw(box, topic, items)
        for (topic, partition), last in (await box.flush()).items():
            if topic == self.raw_name:
                self.raw_written[partition] = last

    async def _direct(self, mapped: list[tuple[str, list[Item]]]) -> list[tuple[str, list[Item]]]:
        """Hand the readings of sensors owned here to the pipeline; returns those that must take readings.raw."""
        ingest = self.ingest
        assert self.pump is not None and ingest.partition_of is not None
        partition_of = ingest.partition_of
        others: list[tuple[str, list[Item]]] = []
        handed: list[Inbound] = []

        async def submit(local: frozenset[int]) -> Any:
            # Not before the pump has decided what this door wrote to readings.raw (a fallback, a sensor that was
            # elsewhere): a newer reading taken first would make those look late.
            assert self.pump is not None
            local = caught_up(local, self.raw_written, self.pump.done_through)
            mine, elsewhere = owned_here(mapped, local, partition_of, int(time.time() * 1000))
            handed.extend(mine)
            others.extend(elsewhere)
            return await ingest.submit_mapped(mine) if mine else None

        if await self.pump.beside(submit):
            m.SOURCE_DIRECT.inc(len(handed))
            return others
        # Not read here now, or lost to a rewind (outputs may have gone out: at-least-once, as a replay):
        # through readings.raw, whose owner decides, with the state the tables hold.
        return mapped

    def _write_raw(self, box: Outbox, topic: str, items: list[Item]) -> None:
        if items:
            self.ingest.write_items(box, "kafka", written(items), self.headers[topic], self._spread)
            self._spread += len(items)
