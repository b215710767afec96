"""Putting a simulated history on the real Kafka as the stream would have carried it: readings on
readings.clean with their event time as the record time, incidents on labels, verdicts on feedback."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from services.forecaster.offline.history import History
from shared.codec import dumps
from shared.settings import Settings
from shared.topics import LABELS, READINGS_CLEAN


async def produce_timed(settings: Settings, topic: str, messages: list[tuple[bytes | None, Any, int]]) -> None:
    """``(key, value, record time ms)`` to a (prefixed) topic."""
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic(topic), dumps(value), key=key, timestamp_ms=int(ts))
            for key, value, ts in messages
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_history(settings: Settings, history: History) -> int:
    """The history's readings and labels; returns the number of readings sent."""
    readings = [(r["sensor_id"].encode(), r, r["ts"]) for r in history.readings()]
    await produce_timed(settings, READINGS_CLEAN.name, readings)
    labels = [(lab.incident_id.encode(), lab.to_dict(), lab.start_ms) for lab in history.labels]
    await produce_timed(settings, LABELS.name, labels)
    return len(readings)
