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

from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from services.ingest import metrics as m
from services.ingest.mappings import PayloadMapping
from services.ingest.payloads import Item
from services.ingest.pipeline import H_MAPPING, H_SOURCE
from services.ingest.validation import reason_code
from shared.batching import Outbox
from shared.group_reader import GroupReader
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


class MappedSources:
    """Every mapped source topic of this worker's mappings, read by one consumer group."""

    def __init__(self, ingest: Ingest) -> None:
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

    def check(self) -> tuple[bool, str]:
        return self.reader.check()

    async def run(self) -> None:
        await self.reader.run()

    async def start(self) -> AIOKafkaProducer:
        await self.ingest.ensure_started()
        assert self.ingest.producer is not None
        return self.ingest.producer

    async def handle(self, records: list[Any]) -> None:
        """Map and write one fetch (aiokafka records of the source topics); returns once the broker has all of it.

        Everything is collected before anything is sent, so a fetch that raises has written nothing.
        """
        ingest = self.ingest
        assert ingest.producer is not None
        by_topic: dict[str, list[Item]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(Item(r.value if isinstance(r.value, bytes) else b"", None))
        box = Outbox(ingest.producer)
        for topic, messages in by_topic.items():
            items = ingest.map_items(self.routes[topic], messages)
            ingest.write_items(box, "kafka", items, self.headers[topic], self._spread)
            self._spread += len(items)
        await box.flush()
