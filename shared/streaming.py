"""Micro-batch helpers for Faust agents (design pitfalls 7 and 10).

Agents consume with ``stream.take_events(n, within)`` and get a list of events.
Two things then need care:

* Decoding: values arrive as raw bytes (see ``shared.topics.faust_topic``); a
  message that is not the record it should be is counted and skipped, never
  allowed to crash the agent.
* Table writes: Faust routes a table write to the changelog partition of the
  *current event*, which ``take_events`` does not set while the agent handles
  the batch ("Cannot modify table key from outside of stream iteration").
  :func:`event_context` makes a given event current for the duration of a block,
  so each key is written once per batch, in the partition of the last event that
  touched it — the same partition Faust itself would use, and the one recovery
  reads back.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from faust.streams import _current_event
from faust.types import EventT

from shared.codec import loads
from shared.deadletter import dead_letter, target_partition
from shared.metrics import DEAD_LETTERS, DECODE_ERRORS, EVENTS_IN
from shared.records import Record
from shared.topics import DEADLETTER

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)
K = TypeVar("K")


@contextlib.contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Make ``event`` the current event, so table writes go to its partition."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def decode_events(
    events: Sequence[EventT], cls: type[R], *, service: str, topic: str
) -> tuple[list[R], list[EventT], list[tuple[EventT, str]]]:
    """Decode a batch: ``(records, their events, [(bad event, reason)])``."""
    records: list[R] = []
    good: list[EventT] = []
    bad: list[tuple[EventT, str]] = []
    for event in events:
        try:
            raw = event.value
            data = raw if isinstance(raw, dict) else loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            records.append(cls.from_dict(data))
            good.append(event)
        except Exception as exc:  # noqa: BLE001 - one bad message must not stop the batch
            bad.append((event, f"{type(exc).__name__}: {exc}"))
    EVENTS_IN.labels(service, topic).inc(len(events))
    if bad:
        DECODE_ERRORS.labels(service, topic).inc(len(bad))
        log.warning("skipped %d undecodable %s messages in a batch of %d: %s", len(bad), topic, len(events), bad[0][1])
    return records, good, bad


def last_event_per_key(items: Iterable[tuple[K, EventT]]) -> dict[K, EventT]:
    """For each key, the last event of the batch that touched it (later wins)."""
    out: dict[K, EventT] = {}
    for key, event in items:
        out[key] = event
    return out


def write_once_per_key(table: Any, updates: dict[Any, Any], events: dict[Any, EventT]) -> None:
    """``table[key] = value`` once per key, each in the partition of its own last event."""
    for key, value in updates.items():
        with event_context(events[key]):
            table[key] = value


async def send_dead_letter(
    app: Any,
    settings: Any,
    service: str,
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: Any,
    raw: Any,
    reasons: list[str],
) -> None:
    """Put a record of an internal topic that cannot be used on ``deadletter`` (Faust's producer), with why."""
    from shared.batching import PartitionMap  # shared.batching imports this module

    key_bytes = key if isinstance(key, bytes) and key else None
    value = dead_letter(raw, reasons, service, topic, key=key_bytes, partition=partition, offset=offset)
    count = DEADLETTER.partitions_for(settings)
    target = target_partition(key_bytes, PartitionMap(count), count, partition)
    await app.producer.send(settings.topic(DEADLETTER.name), key_bytes, value, target, None, None)
    DEAD_LETTERS.labels(service, topic).inc()
    log.warning("%s: a record of %s went to the dead letters: %s", service, topic, "; ".join(reasons)[:300])


async def dead_letter_event(app: Any, settings: Any, service: str, event: EventT, reasons: list[str]) -> None:
    """:func:`send_dead_letter` for a Faust event."""
    msg = event.message
    await send_dead_letter(
        app,
        settings,
        service,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=event.key,
        raw=event.value if isinstance(event.value, (bytes, bytearray, str)) else None,
        reasons=reasons,
    )
