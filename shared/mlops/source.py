"""Records of a topic by time, straight from Kafka: offsets for ``since`` (``offsets_for_times``), read up to
``until`` or the end each partition had when the read began (a live topic does not keep the read going)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from shared.codec import loads

log = logging.getLogger(__name__)


class TooLittleData(ValueError):
    """The window holds too little to train or judge on; the message says what was found and what to do."""


async def read_topic(
    settings: Any,
    topic: str,
    since_ms: int | None,
    until_ms: int | None,
    *,
    progress: bool = False,
    decode: Callable[[bytes], Any] = loads,
) -> tuple[list[Any], int]:
    """Decoded values of ``topic`` (prefixed by the settings) whose record time is in ``[since_ms, until_ms)``.

    ``since_ms`` None reads from the beginning; ``until_ms`` None up to the current end. Returns the
    values in partition order and the number of records that could not be decoded (left out, counted).
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.errors import KafkaError

    name = settings.topic(topic)
    # the producer's metadata call is the public way to learn a topic's partitions without subscribing
    meta = AIOKafkaProducer(**settings.kafka_client_options())
    await meta.start()
    try:
        ids = await asyncio.wait_for(meta.partitions_for(name), 30)
    except (KafkaError, TimeoutError) as exc:
        raise TooLittleData(f"topic {name}: no partitions found on {settings.bootstrap_servers} ({exc!r})") from None
    finally:
        await meta.stop()
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    bad = 0
    try:
        tps = [TopicPartition(name, p) for p in sorted(ids)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            starts = {tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in tps}
        todo = {tp for tp in tps if starts[tp] < ends[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        total = sum(ends[tp] - starts[tp] for tp in todo)
        bar = _bar(total, f"reading {name}", progress)
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset >= ends[tp] or (until_ms is not None and rec.timestamp >= until_ms):
                        todo.discard(tp)
                        break
                    try:
                        out.append(decode(rec.value or b""))
                    except (ValueError, TypeError):
                        bad += 1
                bar.update(len(records))
                if tp in todo and await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        bar.close()
    finally:
        await consumer.stop()
    if bad:
        log.warning("%s: %d records could not be decoded and were left out", name, bad)
    return out, bad


def read_topics(settings: Any, wanted: dict[str, tuple[int | None, int | None]], progress: bool = False) -> dict:
    """Several topics by time at once: ``{topic: (since_ms, until_ms)}`` -> ``{topic: (values, undecodable)}``."""

    async def run() -> dict:
        # one progress bar: the first topic (the readings); the others are small
        results = await asyncio.gather(
            *(
                read_topic(settings, t, *span, progress=progress and i == 0)
                for i, (t, span) in enumerate(wanted.items())
            )
        )
        return dict(zip(wanted, results, strict=True))

    return asyncio.run(run())


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", disable=not enabled, file=sys.stderr, leave=False)
