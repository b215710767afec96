"""Every topic the alerts worker's Faust side writes, and how each kind of record goes out.

The anomaly intake (:mod:`services.alerts.intake`) has its own producer; everything else
the worker produces goes through :class:`Outputs`: the internal events and silence-command
topics, notifications to Kafka receivers, the notification DLQ, operator feedback, and
dead letters for input records that are not records of their topic. Each send waits for
the broker's ack: what follows it (a delivery, an API answer) relies on it being there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from shared import deadletter
from shared.codec import dumps
from shared.metrics import DEAD_LETTERS, EVENTS_OUT
from shared.settings import Settings
from shared.topics import ALERTS_DLQ, DEADLETTER, FEEDBACK

log = logging.getLogger(__name__)

SERVICE = "alerts"
RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


class Outputs:
    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.events = app.topic(f"{app.conf.id}-events", internal=True, partitions=settings.partitions, **RAW)
        self.silence_commands = app.topic(f"{app.conf.id}-silence-commands", internal=True, partitions=1, **RAW)
        self.dlq = app.topic(settings.topic(ALERTS_DLQ.name), internal=False, **RAW)
        self.deadletters = app.topic(settings.topic(DEADLETTER.name), internal=False, **RAW)
        self.feedback_topic = app.topic(settings.topic(FEEDBACK.name), internal=False, **RAW)
        self.receivers: dict[str, Any] = {}  # topics of Kafka receivers, made on first use

    async def declare_events(self) -> None:
        """Create the internal events topic if it is missing: read by a pump, not an agent, Faust does not."""
        await self.events.maybe_declare()

    async def event(self, value: dict[str, Any], *, key: bytes | None = None, partition: int | None = None) -> None:
        await (await self.events.send(key=key, value=dumps(value), partition=partition))

    async def report(self, partition: int, value: dict[str, Any]) -> None:
        """A delivery's result, back to the state stage of the alert's partition."""
        await self.event(value, partition=partition)

    async def ack(self, alert: dict[str, Any], value: dict[str, Any]) -> None:
        await self.event(value, partition=alert["partition"])

    async def silence(self, sid: str, silence: dict[str, Any] | None) -> None:
        """A silence to store, or None to forget it: the one writer of the silences table applies it."""
        await (await self.silence_commands.send(key=sid.encode(), value=dumps(silence)))

    async def feedback(self, record: dict[str, Any]) -> None:
        await (await self.feedback_topic.send(key=record["fingerprint"].encode(), value=dumps(record)))
        EVENTS_OUT.labels(SERVICE, FEEDBACK.name).inc()

    async def kafka_send(self, topic: str, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        """A notification to a Kafka receiver: all sent, then one wait for the acks (one round trip, not N)."""
        name = self.settings.topic(topic)
        if name not in self.receivers:
            self.receivers[name] = self.app.topic(name, internal=False, **RAW)
        futures = [await self.receivers[name].send(key=key, value=dumps(value)) for key, value in records]
        await asyncio.gather(*futures)
        EVENTS_OUT.labels(SERVICE, topic).inc(len(records))

    async def dead_letter_notification(self, record: dict[str, Any]) -> None:
        await (await self.dlq.send(key=record["receiver"].encode(), value=dumps(record)))
        EVENTS_OUT.labels(SERVICE, ALERTS_DLQ.name).inc()
        log.error(
            "notification %s to %s/%s sent to the DLQ after %s attempt(s): %s",
            record["id"],
            record["receiver"],
            record["integration"],
            record["attempts"],
            record["error"],
        )

    async def dead_letter_events(self, rejected: list[tuple[Any, str, str]]) -> None:
        """``(event, source, reason)``: records that cannot be used, each dead-lettered with why, all acked first."""
        futures = []
        for event, source, reason in rejected:
            msg = event.message
            value = deadletter.dead_letter(
                event.value, [reason], SERVICE, msg.topic, key=event.key, partition=msg.partition, offset=msg.offset
            )
            futures.append(await self.deadletters.send(key=event.key, value=value))
            DEAD_LETTERS.labels(SERVICE, source).inc()
        await asyncio.gather(*futures)
