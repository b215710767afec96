"""The live feed: every record of the live topics, fanned out to SSE clients through bounded queues.

A group-less consumer (no consumer group, every partition, from the end) so that every console
replica sees the whole feed and any replica can serve any browser; it commits nothing and holds
no partition from anyone (design: pitfalls 1 and 6 do not apply to it). Publishing never waits:
a client whose queue is full loses its *oldest* update (counted per event), so a slow browser
slows only itself, never the consumer and never the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.console.metrics import LIVE_CLIENTS, LIVE_DROPPED, LIVE_EVENTS, LIVE_UNREADABLE
from shared.settings import Settings
from shared.topics import AGGREGATES, ALERTS, ANOMALIES, RISK, SENSOR_EVENTS

log = logging.getLogger(__name__)

#: topic -> SSE event name
EVENTS = {
    ANOMALIES.name: "anomaly",
    RISK.name: "risk",
    ALERTS.name: "alert",
    AGGREGATES.name: "aggregate",
    SENSOR_EVENTS.name: "sensor_event",
}


def frame(event: str, data: bytes) -> bytes:
    """One SSE message; ``data`` is compact JSON (orjson writes no newline), so it is one ``data:`` line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(eq=False)
class Client:
    """One SSE connection: its wanted events and a bounded queue of ``(event, SSE frame)``."""

    events: frozenset[str]
    size: int
    queue: deque[tuple[str, bytes]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def offer(self, event: str, framed: bytes) -> None:
        if event not in self.events:
            return
        if len(self.queue) >= self.size:
            self.queue.popleft()
            self.dropped += 1
            LIVE_DROPPED.labels(event).inc()
        self.queue.append((event, framed))
        self.ready.set()

    def take(self) -> list[tuple[str, bytes]]:
        items = list(self.queue)
        self.queue.clear()
        self.ready.clear()
        return items


class Hub:
    """The connected clients of this replica."""

    def __init__(self, queue_size: int, max_clients: int):
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.clients: set[Client] = set()

    def join(self, events: Iterable[str]) -> Client | None:
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(frozenset(events), self.queue_size)
        self.clients.add(client)
        LIVE_CLIENTS.set(len(self.clients))
        return client

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        LIVE_CLIENTS.set(len(self.clients))

    def publish(self, event: str, data: bytes) -> None:
        """Offer one record to every client; framed once here, not once per client (the fan-out's cost must
        not grow with the clients more than it has to: it shares the CPU with the pipeline)."""
        if not self.clients:
            return
        framed = frame(event, data)
        for client in self.clients:
            client.offer(event, framed)


def normalise(raw: bytes | None) -> bytes | None:
    """The record re-encoded as compact JSON (one line, so it cannot break the SSE framing); None if not JSON."""
    try:
        return orjson.dumps(orjson.loads(raw or b""))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError):
        return None


class Feed:
    """The group-less consumer that feeds the hub; ``started`` once it reads from the log ends."""

    def __init__(self, settings: Settings, hub: Hub):
        self.settings = settings
        self.hub = hub
        self.by_topic = {settings.topic(name): event for name, event in EVENTS.items()}
        self.started = asyncio.Event()
        self.stopping = False
        self.consumer: Any = None

    def check(self) -> tuple[bool, str]:
        return self.started.is_set(), "reading the live topics" if self.started.is_set() else "live feed not started"

    async def run(self) -> None:
        """Read and fan out until stopped; a broker failure is retried, never fatal."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        while not self.stopping:
            self.consumer = AIOKafkaConsumer(
                *self.by_topic,
                **self.settings.kafka_client_options(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                max_poll_records=self.settings.max_poll_records,
            )
            try:
                await self.consumer.start()
                await self.consumer.seek_to_end()
                self.started.set()
                while not self.stopping:
                    batch = await self.consumer.getmany(timeout_ms=500)
                    for tp, records in batch.items():
                        self.fan_out(tp.topic, (r.value for r in records))
            except (KafkaError, OSError) as exc:
                log.warning("live feed consumer failed (retrying in 5 s): %s", exc)
                self.started.clear()
                await asyncio.sleep(5)
            finally:
                await self.consumer.stop()

    def fan_out(self, topic: str, values: Iterable[bytes | None]) -> None:
        event = self.by_topic[topic]
        n = 0
        if not self.hub.clients:  # nobody to tell: no decoding either
            LIVE_EVENTS.labels(event).inc(sum(1 for _ in values))
            return
        for raw in values:
            data = normalise(raw)
            if data is None:
                LIVE_UNREADABLE.labels(topic).inc()
                continue
            self.hub.publish(event, data)
            n += 1
        LIVE_EVENTS.labels(event).inc(n)

    async def stop(self) -> None:
        self.stopping = True
