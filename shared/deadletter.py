"""One way to set aside what cannot be processed: quarantine records and dead letters.

Every service builds its quarantine records (``readings.quarantine``: inputs that are not
valid readings) and its dead letters (``deadletter``: records of internal topics — silences,
model events, partials — that could not be used) here, so the rules are the same everywhere:

- **Always encodable, always small enough.** A payload that orjson cannot write again (nested
  deeper than orjson's writer allows, lone surrogates, huge integers, anything not JSON) or whose
  encoding exceeds ``payload_limit`` is kept as text — the raw bytes decoded with replacement
  characters — cut so that its *escaped* JSON fits the limit (a line of control characters
  escapes to six bytes a character). The record says so (``truncated``, ``payload_bytes``), and
  reasons are bounded too, so a quarantine record always fits well under the topic's
  ``max.message.bytes`` and can never be refused by the broker and retried forever.
- **One partition rule** (:func:`target_partition`). Keyed records go where their key hashes
  (``partition_of(key)``); unkeyed ones stay on the partition number of the message they came
  from, modulo the target's partition count, so a poison partition's quarantine stays ordered
  with it; with no such message, partition 0.
- **One key rule** (:func:`quarantined`). A quarantine record is keyed by the message's own key,
  else by the sensor id found in it; its ``sensor_id`` is the one found, else the key.

The functions are pure: callers add the returned ``(partition, key, value)`` to their own outbox
(:class:`shared.batching.Outbox`) or send it with their producer. Every quarantine record of a
service goes through :func:`quarantined` (a pump's job: :meth:`shared.pump.BatchJob.quarantine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from shared.codec import dumps
from shared.records import DeadLetter, QuarantinedReading

#: Largest encoded payload kept in a quarantine record or dead letter (bytes of JSON).
PAYLOAD_LIMIT = 64 * 1024
#: Most reasons kept per record, and the longest reason kept (characters).
MAX_REASONS = 16
MAX_REASON_CHARS = 500
#: Longest key or sensor id kept (characters).
MAX_KEY_CHARS = 256

Partitioner = Callable[[bytes], int]


def now_ms() -> int:
    return int(time.time() * 1000)


def encodable(value: Any) -> bool:
    """True when orjson can write ``value`` again (the test every decoded outside value must pass)."""
    try:
        dumps(value)
    except (TypeError, orjson.JSONEncodeError, RecursionError):
        return False
    return True


def as_text(raw: bytes | bytearray | memoryview | str | None) -> str:
    """Raw bytes as text with replacement characters; never raises, never holds a lone surrogate."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw.encode("utf-8", "replace").decode("utf-8", "replace")
    return bytes(raw).decode("utf-8", "replace")


def cut_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut so that its JSON encoding is at most ``limit`` bytes; ``(text, was_cut)``."""
    size = len(dumps(text))
    if size <= limit:
        return text, False
    n = len(text)
    while size > limit and n > 0:
        # Shrink in proportion to the overshoot; escapes make bytes per character uneven, so repeat.
        n = min(n - 1, int(n * limit / size * 0.98))
        size = len(dumps(text[:n]))
    return text[: max(n, 0)], True


def bounded_payload(
    raw: bytes | bytearray | memoryview | str | None,
    decoded: Any = None,
    decoded_ok: bool = False,
    limit: int = PAYLOAD_LIMIT,
) -> tuple[Any, bool, int]:
    """The payload to keep: ``(payload, truncated, original_bytes)``.

    The decoded value when there is one, it can be written again and it fits; otherwise the raw
    input as text, cut to fit. ``original_bytes`` is the size of the input as received.
    """
    original = len(raw) if raw is not None else 0
    if decoded_ok:
        try:
            encoded = dumps(decoded)
        except (TypeError, orjson.JSONEncodeError, RecursionError):
            encoded = None
        if encoded is not None and len(encoded) <= limit:
            return decoded, False, original or len(encoded)
    text = as_text(raw) if raw is not None else as_text(repr(decoded))
    kept, cut = cut_text(text, limit)
    return kept, cut, original or len(text.encode("utf-8", "replace"))


def bounded_reasons(reasons: list[str]) -> list[str]:
    out = [as_text(r)[:MAX_REASON_CHARS] for r in reasons[:MAX_REASONS]]
    if len(reasons) > MAX_REASONS:
        out.append(f"... and {len(reasons) - MAX_REASONS} more reasons")
    return out


def target_partition(
    key: bytes | None, partition_of: Partitioner, partitions: int, source_partition: int | None
) -> int:
    """The one partition rule: by key when keyed, else the source partition (mod the target's count), else 0."""
    if key:
        return partition_of(key)
    if source_partition is not None and partitions > 0:
        return source_partition % partitions
    return 0


def quarantine(
    raw: bytes | bytearray | memoryview | str | None,
    reasons: list[str],
    source: str,
    *,
    decoded: Any = None,
    decoded_ok: bool = False,
    sensor_id: str | None = None,
    received_ms: int | None = None,
    limit: int = PAYLOAD_LIMIT,
) -> bytes:
    """A ``readings.quarantine`` record, encoded: always writable, always bounded."""
    payload, truncated, size = bounded_payload(raw, decoded, decoded_ok, limit)
    record = QuarantinedReading(
        payload=payload,
        source=as_text(source)[:MAX_KEY_CHARS],
        reasons=bounded_reasons(reasons),
        received_ms=now_ms() if received_ms is None else received_ms,
        sensor_id=as_text(sensor_id)[:MAX_KEY_CHARS] if sensor_id is not None else None,
        truncated=truncated,
        payload_bytes=size,
    )
    return dumps(record)


def quarantined(
    raw: bytes | bytearray | memoryview | str | None,
    reasons: list[str],
    source: str,
    partition_of: Partitioner,
    partitions: int,
    *,
    key: bytes | None = None,
    sensor_id: str | None = None,
    source_partition: int | None = None,
    decoded: Any = None,
    decoded_ok: bool = False,
    received_ms: int | None = None,
) -> tuple[int, bytes | None, bytes]:
    """A quarantine record and where it goes: ``(partition, key, value)`` on a topic of ``partitions`` partitions.

    ``key`` is the message's own key; ``source_partition`` the partition it was read from (None when it
    was never on a topic); ``sensor_id`` the sensor it names, when that is known (one that cannot be
    written as a key is not kept).
    """
    if not key:
        key = None
        if sensor_id:
            try:
                key = sensor_id.encode()
            except UnicodeEncodeError:
                sensor_id = None
    elif sensor_id is None:
        sensor_id = key.decode("utf-8", "replace")
    value = quarantine(
        raw, reasons, source, decoded=decoded, decoded_ok=decoded_ok, sensor_id=sensor_id, received_ms=received_ms
    )
    return target_partition(key, partition_of, partitions, source_partition), key, value


def dead_letter(
    raw: bytes | bytearray | memoryview | str | None,
    reasons: list[str],
    service: str,
    topic: str,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    decoded: Any = None,
    decoded_ok: bool = False,
    received_ms: int | None = None,
    limit: int = PAYLOAD_LIMIT,
) -> bytes:
    """A ``deadletter`` record, encoded: where the message came from, why it was set aside, what it held."""
    payload, truncated, size = bounded_payload(raw, decoded, decoded_ok, limit)
    record = DeadLetter(
        service=service,
        topic=topic,
        partition=partition,
        offset=offset,
        key=as_text(key)[:MAX_KEY_CHARS] if key is not None else None,
        payload=payload,
        reasons=bounded_reasons(reasons),
        received_ms=now_ms() if received_ms is None else received_ms,
        truncated=truncated,
        payload_bytes=size,
    )
    return dumps(record)
