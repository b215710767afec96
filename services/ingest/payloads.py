"""Splitting what a door received into the messages it puts on readings.raw.

An HTTP body or an MQTT payload holds one reading (a JSON object), a JSON array of
them, or NDJSON (one JSON value per line). :func:`split_items` returns one wire
message per item — the item's bytes as sent whenever possible, so the quarantine
keeps what the device actually said — plus the sensor_id to key it by.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from services.ingest.validation import decode

# A JSON string (escapes included) or one structural character: enough to find the items of an array.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


class PayloadError(ValueError):
    """The body cannot be read as JSON, a JSON array or NDJSON."""


@dataclass(slots=True)
class Item:
    # None: a mapped reading not written yet (``decoded`` holds it; see mappings.expand's ``lazy``)
    value: bytes | None
    sensor_id: str | None
    reasons: list[str] | None = None  # decided at the door (a mapped message that makes no reading)
    message: int = 0  # index of the message it came from (a mapped message may make many items)
    # an item decided at the door: the message as decoded, kept in its quarantine record; a mapped reading: the
    # reading itself (``value`` is its JSON), so the Kafka source door can hand it on without decoding it again
    decoded: Any = None


def written(items: list[Item]) -> list[Item]:
    """``items`` with every mapped reading that was left unwritten (``value`` None) written as its native JSON."""
    for item in items:
        if item.value is None:
            # the bytes expand writes when not lazy: the same dict through the same encoder
            item.value = orjson.dumps(item.decoded)
    return items


def key_of(obj: Any, max_chars: int = 200) -> str | None:
    """The sensor id to key an item by: only one that can be a Kafka key (valid UTF-8, not too long)."""
    if isinstance(obj, dict):
        sid = obj.get("sensor_id")
        if isinstance(sid, str) and sid and len(sid) <= max_chars and (sid.isascii() or _utf8(sid)):
            return sid
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def array_items(body: bytes) -> list[bytes]:
    """The items of a JSON array body as sent, found without parsing them (the body is known to be valid JSON).

    Used when an item cannot be written again (nested deeper than orjson writes, or NaN beside
    something else the standard library cannot write): the device's own bytes then go to
    readings.raw, where the pipeline gives the precise reason.
    """
    start = body.index(b"[") + 1
    items: list[bytes] = []
    depth = 0
    for match in _TOKENS.finditer(body, start):
        token = match.group()
        if token[0] == 0x22:  # a string: skipped whole
            continue
        if token in (b"[", b"{"):
            depth += 1
        elif depth == 0:  # "," or the closing "]" of the body
            item = body[start : match.start()].strip()
            if item:
                items.append(item)
            start = match.end()
            if token == b"]":
                break
        elif token in (b"]", b"}"):
            depth -= 1
    return items


def _encode_items(values: list[Any], strict: bool, body: bytes) -> list[bytes]:
    """Each item's JSON, compact; the items as sent when one of them cannot be written again."""
    try:
        if strict:
            return [orjson.dumps(v) for v in values]
        # Only the permissive decoder's NaN/Infinity get here; orjson would write them as null and turn
        # a refused value into a missing one, so keep them as the device sent them.
        return [json.dumps(v, allow_nan=True, separators=(",", ":")).encode() for v in values]
    except (TypeError, ValueError, RecursionError):
        return array_items(body)


def split_items(body: bytes, max_items: int, max_field_chars: int = 200) -> list[Item]:
    """The items of a body; raises :class:`PayloadError` when it is not JSON/array/NDJSON."""
    if not body.strip():
        raise PayloadError("empty body: send a JSON object, a JSON array of objects, or NDJSON")
    try:
        value, error, strict = orjson.loads(body), None, True
    except orjson.JSONDecodeError:
        (value, error), strict = decode(body), False  # NaN/Infinity, or the reason it is not JSON
    if error is None:
        if isinstance(value, list):
            if len(value) > max_items:
                raise TooManyItems(len(value), max_items)
            encoded = _encode_items(value, strict, body)
            return [Item(e, key_of(v, max_field_chars)) for e, v in zip(encoded, value, strict=True)]
        # One reading (or one JSON value that is not a reading: still an item, quarantined with its reason).
        return [Item(body.strip(), key_of(value, max_field_chars))]
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
        items.append(Item(line, key_of(obj, max_field_chars) if line_error is None else None))
    if parsed == 0:
        raise PayloadError(f"body is neither JSON nor NDJSON: no line parses ({error.split(': ', 1)[-1]})")
    return items


class TooManyItems(PayloadError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} readings in one request; the limit is {limit}")
        self.count = count
        self.limit = limit


def csv_items(body: bytes, max_items: int) -> list[Item]:
    """The rows of a CSV body (a header line, then one row per line) as JSON objects of text cells.

    For mappings only: a row is a message like any other, so it meets the same decode limits and
    the mapping reads numbers from its cells. Raises :class:`PayloadError` when it is not CSV.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"CSV body is not UTF-8: {exc}") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise PayloadError("CSV body has no header line")
        header = [h.strip() for h in header]
        items: list[Item] = []
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(items) >= max_items:
                raise TooManyItems(len(items) + 1 + sum(1 for _ in reader), max_items)
            if len(row) != len(header):
                reason = f"malformed_csv: row {reader.line_num} has {len(row)} cells, the header {len(header)}"
                items.append(Item(",".join(row).encode(), None, [reason]))
                continue
            items.append(Item(orjson.dumps(dict(zip(header, row, strict=True))), None))
    except csv.Error as exc:
        raise PayloadError(f"body is not CSV: {exc}") from None
    if not items:
        raise PayloadError("CSV body has a header but no rows")
    return items
