"""A message whose processing raises: retried after a pause, then isolated, and set aside with why.

The rule every reader of a topic follows (so that nothing from outside can stop a service, and
nothing is replayed into the same failure after a restart):

1. a batch whose processing raises is tried once more, after ``pump_retry_backoff_s``;
2. if it raises again, its messages are processed one at a time, each retried once after the pause;
3. a message that fails twice alone is *set aside* — quarantined (readings: ``readings.quarantine``,
   :func:`shared.deadletter.quarantine`) or dead-lettered (other topics: ``deadletter``,
   :func:`shared.deadletter.dead_letter`) with ``processing failed twice: <error>`` — and counted
   (``flowwatch_pump_set_aside_total``); the rest of the batch goes on. Each failure counts in
   ``flowwatch_pump_job_failures_total``.

Broker errors (:class:`aiokafka.errors.KafkaError`) are not the message's fault: they go up to the
reader, which reads again from its last durable offsets.

:class:`shared.pump.Pump` applies this rule across fetches (its jobs keep state that a failed batch
must be rewound to a checkpoint first, and it guards against hard crashes);
:class:`shared.group_reader.GroupReader` applies it within a fetch with :func:`isolate` (its jobs
are stateless and commit their offsets after each fetch). Both set messages aside with :class:`SetAside`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.batching import Outbox, PartitionMap
from shared.deadletter import dead_letter, quarantined, target_partition
from shared.metrics import DEAD_LETTERS, Counter
from shared.settings import Settings
from shared.topics import DEADLETTER, READINGS_CLEAN, READINGS_QUARANTINE, READINGS_RAW

log = logging.getLogger(__name__)

JOB_FAILURES = Counter(
    "flowwatch_pump_job_failures_total",
    "Batches or single messages whose processing raised (retried, then isolated)",
    ["service"],
)
SET_ASIDE = Counter(
    "flowwatch_pump_set_aside_total",
    "Messages a pump quarantined or dead-lettered because processing them failed twice or killed the worker",
    ["service"],
)


def failed_twice(error: BaseException) -> str:
    """The reason a message set aside by this rule carries."""
    return f"processing failed twice: {type(error).__name__}: {error}"


class SetAside:
    """Where a message goes that cannot be processed: readings.quarantine for readings, the deadletter topic else.

    ``target`` overrides the choice; the record is a quarantine record whenever the target is readings.quarantine
    (``source`` is then its ``source`` field: the door or service), a dead letter otherwise.
    """

    def __init__(
        self, settings: Settings, service: str, topic: str, target: str | None = None, source: str = ""
    ) -> None:
        self.service = service
        self.source = source or service
        readings = {settings.topic(READINGS_RAW.name), settings.topic(READINGS_CLEAN.name)}
        quarantine_topic = settings.topic(READINGS_QUARANTINE.name)
        self.topic = target or (quarantine_topic if topic in readings else settings.topic(DEADLETTER.name))
        self.quarantines = self.topic == quarantine_topic
        self.partitions: PartitionMap | None = None

    async def put(self, producer: AIOKafkaProducer, record: Any, reasons: list[str], topic: str | None = None) -> None:
        """Set one aiokafka ``ConsumerRecord`` (of ``topic``, by default its own) aside with ``reasons``.

        Returns once the broker has it.
        """
        origin = topic or record.topic
        if self.partitions is None:
            self.partitions = PartitionMap(len(await producer.partitions_for(self.topic)))
        key = record.key or None
        try:  # kept as the JSON it was when it is JSON (shared.deadletter falls back to text when needed)
            decoded, decoded_ok = orjson.loads(record.value or b""), True
        except orjson.JSONDecodeError:
            decoded, decoded_ok = None, False
        parts = self.partitions
        if self.quarantines:
            partition, key, value = quarantined(
                record.value,
                reasons,
                self.source,
                parts,
                parts.partitions,
                key=key,
                source_partition=record.partition,
                decoded=decoded,
                decoded_ok=decoded_ok,
            )
        else:
            value = dead_letter(
                record.value,
                reasons,
                self.service,
                origin,
                key=key,
                partition=record.partition,
                offset=record.offset,
                decoded=decoded,
                decoded_ok=decoded_ok,
            )
            partition = target_partition(key, parts, parts.partitions, record.partition)
            DEAD_LETTERS.labels(self.service, origin).inc()
        box = Outbox(producer)
        box.add(self.topic, partition, key, value)
        await box.flush()
        SET_ASIDE.labels(self.service).inc()


async def isolate(
    records: list[Any],
    process: Callable[[list[Any]], Awaitable[None]],
    set_aside: Callable[[Any, list[str]], Awaitable[None]],
    *,
    service: str,
    backoff_s: float,
) -> int:
    """Process ``records`` by the rule above, for a stateless job; returns how many were set aside.

    ``process`` must either finish (its outputs acknowledged) or raise before any output is sent, so a
    retried batch writes nothing twice. :class:`KafkaError` goes up unchanged.
    """
    for attempt in range(2):
        try:
            await process(records)
            return 0
        except KafkaError:
            raise
        except Exception as exc:  # noqa: BLE001 - any job error: retry, then isolate; never stop the reader
            JOB_FAILURES.labels(service).inc()
            if attempt == 0:
                log.error(
                    "%s: a batch of %d messages raised (%s: %s); retrying in %.1fs",
                    service,
                    len(records),
                    type(exc).__name__,
                    exc,
                    backoff_s,
                )
                await asyncio.sleep(backoff_s)
            else:
                log.error("%s: the batch failed twice (%s); processing its messages one at a time", service, exc)
    aside = 0
    for record in records:
        error: Exception | None = None
        for attempt in range(2):
            try:
                await process([record])
                error = None
                break
            except KafkaError:
                raise
            except Exception as exc:  # noqa: BLE001 - as above: retry once, then set the message aside
                JOB_FAILURES.labels(service).inc()
                error = exc
                if attempt == 0:
                    await asyncio.sleep(backoff_s)
        if error is not None:
            log.error(
                "%s: %s partition %d offset %d failed twice; setting it aside: %s",
                service,
                record.topic,
                record.partition,
                record.offset,
                failed_twice(error),
            )
            await set_aside(record, [failed_twice(error)])
            aside += 1
    return aside
