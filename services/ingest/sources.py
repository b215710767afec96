"""The Kafka door for other formats: source topics read through a payload mapping into readings.raw.

A mapping's ``kafka:`` topics (prefixed by ``FLOWWATCH_TOPIC_PREFIX`` like every flowwatch topic)
are read by one aiokafka consumer in the group ``<app id>-sources`` (so several workers share
them), in ``getmany`` batches: each batch is mapped (:meth:`~services.ingest.engine.Ingest.map_items`:
the decode limits first, then the mapping), its readings written to readings.raw keyed by sensor_id
and its failures to readings.quarantine (``mapping_error`` naming the mapping and the field, or the
decode reason). The offsets are committed only after the broker acknowledged all of it, so a crash
or a broker outage repeats a batch but never loses one (readings.clean consumers are idempotent on
sensor_id and ts). From readings.raw on, the readings take the one validation path.

Not a Faust agent: Faust's per-message consumer path caps an agent at ~6,000-7,000 messages/s on
the reference machine (docs/ingest.md), and a gas station's message is one reading.

Ingest does not create source topics: they belong to whoever writes them. The consumer reads those
that exist and looks for the others every ``TOPIC_CHECK_S``; a new one is read from its start (the
group has no offset for it yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer

from services.ingest.mappings import PayloadMapping
from services.ingest.payloads import Item
from services.ingest.pipeline import H_MAPPING, H_SOURCE
from shared.batching import Outbox

if TYPE_CHECKING:
    from services.ingest.engine import Ingest

log = logging.getLogger(__name__)

#: How often (seconds) the consumer looks for source topics created since it started.
TOPIC_CHECK_S = 30.0


class MappedSources:
    """Every mapped source topic of this worker's mappings, read by one consumer."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        settings = ingest.settings
        self.routes: dict[str, PayloadMapping] = {
            settings.topic(name): mp for mp in ingest.mappings.values() for name in mp.kafka
        }
        self.headers = {
            topic: [(H_SOURCE, b"kafka"), (H_MAPPING, mp.name.encode())] for topic, mp in self.routes.items()
        }
        self.group = f"{ingest.app.conf.id}-sources"
        self.connected = False
        self.batches = 0
        self.last_error = ""
        self._spread = 0

    def check(self) -> tuple[bool, str]:
        # A source topic's trouble does not make ingest unready: the other doors still work.
        if self.connected:
            return True, f"reading {len(self.routes)} mapped source topics"
        return True, f"not reading ({self.last_error or 'starting'}); retrying"

    async def run(self) -> None:
        if not self.routes:
            return
        backoff = 0.5
        while True:
            consumer = self._consumer()
            try:
                await self.ingest.ensure_started()
                await consumer.start()
                self.connected = True
                backoff = 0.5
                subscribed: set[str] = set()
                looked = 0.0
                while True:
                    if time.monotonic() - looked > TOPIC_CHECK_S:
                        # Only topics that exist: aiokafka subscribed to a missing one logs an error per retry.
                        looked = time.monotonic()
                        existing = set(self.routes).intersection(await consumer.topics())
                        if existing != subscribed:
                            consumer.subscribe(sorted(existing))
                            subscribed = existing
                            log.info("mapped sources: reading %s", ", ".join(sorted(existing)) or "nothing yet")
                    if not subscribed:
                        await asyncio.sleep(1.0)
                        continue
                    fetched = await consumer.getmany(timeout_ms=1000, max_records=self.ingest.isettings.batch_size)
                    if fetched:
                        # One list per topic across its partitions (a dict keyed by topic from the partitions kept
                        # only the last partition's records of a fetch, and committed them all: they were lost).
                        batch: dict[str, list[Any]] = {}
                        for tp, records in fetched.items():
                            batch.setdefault(tp.topic, []).extend(r.value for r in records)
                        await self.handle(batch)
                        await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: reconnect later, from the last commit
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("mapped sources: %s; retrying in %.1fs", self.last_error, backoff)
            finally:
                self.connected = False
                await consumer.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def handle(self, batch: dict[str, list[Any]]) -> None:
        """Map and write one fetch (topic -> message values); returns once the broker has all of it."""
        ingest = self.ingest
        assert ingest.producer is not None
        box = Outbox(ingest.producer)
        for topic, values in batch.items():
            messages = [Item(v if isinstance(v, bytes) else b"", None) for v in values]
            items = ingest.map_items(self.routes[topic], messages)
            ingest.write_items(box, "kafka", items, self.headers[topic], self._spread)
            self._spread += len(items)
        await box.flush()
        self.batches += 1

    def _consumer(self) -> AIOKafkaConsumer:
        settings = self.ingest.settings
        isettings = self.ingest.isettings
        return AIOKafkaConsumer(
            **settings.kafka_client_options(),
            client_id=f"{settings.topic_prefix}flowwatch-ingest-sources",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=isettings.batch_size,
            fetch_max_wait_ms=max(1, int(isettings.batch_within_s * 1000)),
            session_timeout_ms=int(isettings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, isettings.session_timeout_s / 4) * 1000),
        )
