"""Splitting what a door received into the messages it puts on readings.raw.

An HTTP body or an MQTT payload holds one reading (a JSON object), a JSON array of
them, or NDJSON (one JSON value per line). :func:`split_items` returns one wire
message per item — the item's bytes as sent whenever possible, so the quarantine
keeps what the device actually said — plus the sensor_id to key it by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from services.ingest.validation import decode


class PayloadError(ValueError):
    """The body cannot be read as JSON, a JSON array or NDJSON."""


@dataclass(slots=True)
class Item:
    value: bytes
    sensor_id: str | None


def _sensor_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        sid = obj.get("sensor_id")
        if isinstance(sid, str) and sid:
            return sid
    return None


def _encode(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        pass
    # Only the permissive decoder's NaN/Infinity floats get here; orjson would write them as
    # null and turn a refused value into a missing one, so keep them as the device sent them.
    return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode()


def _has_non_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return obj != obj or obj in (float("inf"), float("-inf"))
    if isinstance(obj, dict):
        return any(_has_non_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_non_finite(v) for v in obj)
    return False


def _encode_item(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode() if _has_non_finite(obj) else _encode(obj)


def split_items(body: bytes, max_items: int) -> list[Item]:
    """The items of a body; raises :class:`PayloadError` when it is not JSON/array/NDJSON."""
    if not body.strip():
        raise PayloadError("empty body: send a JSON object, a JSON array of objects, or NDJSON")
    value, error = decode(body)
    if error is None:
        if isinstance(value, list):
            if len(value) > max_items:
                raise TooManyItems(len(value), max_items)
            return [Item(_encode_item(v), _sensor_id(v)) for v in value]
        # One reading (or one JSON value that is not a reading: still an item, quarantined with its reason).
        return [Item(body.strip(), _sensor_id(value))]
    lines = [line.strip() for line in body.split(b"\n")]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise PayloadError(f"body is not JSON ({error.split(': ', 1)[-1]})")
    if len(lines) > max_items:
        raise TooManyItems(len(lines), max_items)
    items: list[Item] = []
    parsed = 0
    for line in lines:
        obj, line_error = decode(line)
        if line_error is None:
            parsed += 1
        # A broken line is still an item: it goes to quarantine as malformed_json with its text.
        items.append(Item(line, _sensor_id(obj) if line_error is None else None))
    if parsed == 0:
        raise PayloadError(f"body is neither JSON nor NDJSON: no line parses ({error.split(': ', 1)[-1]})")
    return items


class TooManyItems(PayloadError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} readings in one request; the limit is {limit}")
        self.count = count
        self.limit = limit
