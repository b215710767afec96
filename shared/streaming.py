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

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
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


async def take_ready(stream: Any, max_: int, idle_s: float) -> AsyncIterator[list[EventT]]:
    """Batches of at most ``max_`` events, each handed over as soon as nothing more is ready to read.

    Faust's ``stream.take_events(max_, within)`` hands a batch over only when it is full or every ``within``
    seconds, so at a steady trickle each event waits up to ``within`` in every stage it passes (a poll).
    Here the first event starts a batch, the events already delivered to the stream's channel join it, and
    it goes: a backlog gives full batches, a trickle batches of one, and nothing waits for more to arrive
    (``idle_s`` only bounds how long an idle stream sleeps between checks for a stop). Events are
    acknowledged after the batch is processed, as with ``take_events`` (whose code this is, with another
    hand-over condition; it uses the same Stream internals). A batch is cheap only if the work per batch
    is: the caller's fixed cost per batch is paid once per event at a trickle.
    """
    buffer: list[Any] = []
    events: list[EventT] = []
    ready = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = stream.enable_acks
    channel_it = aiter(stream.channel)
    queue = getattr(stream.channel, "queue", None)

    def pending() -> bool:
        """Whether events already delivered to the stream's channel are still on their way to the buffer."""
        return queue is not None and not queue.empty()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            waiting = consuming
            if waiting is not None:  # a batch is being processed: its buffer must not change meanwhile
                await waiting
                if consuming is waiting:
                    consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_ready found no current event")
            events.append(event)
            ready.set()
            if len(buffer) >= max_:
                consumed.clear()
                await stream.wait(consumed)  # strictly max_ per batch
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # as take_events: the stream crashes with the error
            log.exception("error adding to a take_ready buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked below, once the batch is processed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=idle_s)
            if not buffer:
                continue
            # Let what is already fetched reach the buffer: it goes once a few turns of the loop in a row add
            # nothing (more turns while the channel still holds events, each takes a few to arrive).
            idle = 0
            while len(buffer) < max_ and idle < (_IDLE_TURNS_PENDING if pending() else _IDLE_TURNS):
                before = len(buffer)
                await asyncio.sleep(0)
                idle = 0 if len(buffer) != before else idle + 1
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield list(events)
            finally:
                buffer.clear()
                for event in events:
                    await stream.ack(event)
                events.clear()
                if not consuming.done():
                    consuming.set_result(None)
                ready.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


#: Turns of the event loop without a new event after which take_ready hands its batch over (more while the
#: stream's channel is not empty).
_IDLE_TURNS = 3
_IDLE_TURNS_PENDING = 20


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
