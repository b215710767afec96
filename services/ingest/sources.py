"""The Kafka door for other formats: source topics read through a payload mapping into readings.raw.

A mapping's ``kafka:`` topics (prefixed by ``FLOWWATCH_TOPIC_PREFIX`` like every flowwatch
topic) are consumed by one small agent each. A batch of messages is mapped
(:meth:`~services.ingest.engine.Ingest.map_items`: the decode limits first, then the mapping),
its readings written to readings.raw keyed by sensor_id and its failures to readings.quarantine
(``mapping_error`` naming the mapping and the field, or the decode reason); the batch's offsets
are committed only after the broker acknowledged all of it (``take_events`` acks after the
loop body), so a crash repeats a batch but never loses one. From readings.raw on, the
readings take the one validation path.

Ingest does not create source topics: they belong to whoever writes them. Until one exists
its agent waits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from services.ingest.mappings import PayloadMapping
from services.ingest.payloads import Item
from services.ingest.pipeline import H_MAPPING, H_SOURCE
from shared.batching import Outbox

if TYPE_CHECKING:
    from services.ingest.engine import Ingest

log = logging.getLogger(__name__)


class SourceTopic:
    """One mapped source topic: its Faust topic and the loop its agent runs."""

    def __init__(self, ingest: Ingest, name: str, mapping: PayloadMapping) -> None:
        self.ingest = ingest
        self.name = ingest.settings.topic(name)
        self.mapping = mapping
        self.topic = ingest.app.topic(
            self.name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", internal=False
        )
        self.headers = [(H_SOURCE, b"kafka"), (H_MAPPING, mapping.name.encode())]
        self._spread = 0

    async def run(self, stream: Any) -> None:
        ingest = self.ingest
        isettings = ingest.isettings
        async for events in stream.take_events(isettings.batch_size, within=isettings.batch_within_s):
            values = [e.value for e in events]
            backoff = 0.5
            while True:
                try:
                    await ingest.ensure_started()
                    await self.handle(values)
                    break
                except (KafkaError, OSError) as exc:
                    # Not acknowledged, so not committed: written again once the broker is back
                    # (readings.clean consumers are idempotent on sensor_id and ts).
                    log.warning("mapped source %s: writing failed (%s); retrying in %.1fs", self.name, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)

    async def handle(self, values: list[Any]) -> None:
        """Map and write one batch; returns once the broker has all of it."""
        ingest = self.ingest
        assert ingest.producer is not None
        messages = [Item(v if isinstance(v, bytes) else b"", None) for v in values]
        items = ingest.map_items(self.mapping, messages)
        box = Outbox(ingest.producer)
        ingest.write_items(box, "kafka", items, self.headers, self._spread)
        self._spread += len(items)
        await box.flush()


def source_topics(ingest: Ingest) -> list[SourceTopic]:
    return [SourceTopic(ingest, name, mp) for mp in ingest.mappings.values() for name in mp.kafka]
