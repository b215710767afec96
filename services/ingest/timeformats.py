"""Timestamps as other systems write them, for payload mappings: one parser per declared format.

Formats: ``iso`` (ISO 8601 / RFC 3339; an offset in the text wins over the mapping's zone),
``epoch`` (seconds or milliseconds, told apart as in the native format), ``epoch_s``,
``epoch_ms``, or a ``strptime`` pattern with ``%`` codes (``"%d/%m/%y %H"`` is the
``dd/mm/yy HH`` of SCADA historians). A time without an offset is in the mapping's ``tz``
(an IANA zone such as ``Asia/Baku``, or ``UTC``, or a fixed ``+04:00``). The standard library
does all of it (``datetime.fromisoformat``/``strptime``, ``zoneinfo``): no dependency needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NAMED_FORMATS = ("iso", "epoch", "epoch_s", "epoch_ms")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_MS_THRESHOLD = 1e11  # as services.ingest.validation: epoch numbers at or above this are milliseconds


class TimeFormatError(ValueError):
    """The value does not fit the declared format; the message says why (without the mapping's name)."""


def zone(spec: str) -> tzinfo:
    """``UTC``, an IANA zone name or a fixed ``+hh:mm`` offset; ValueError when none of these."""
    text = spec.strip()
    if text.upper() in ("UTC", "Z"):
        return UTC
    match = _OFFSET.match(text)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        try:
            return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
        except ValueError:
            raise ValueError(f"time zone offset {spec!r} is not within ±24 hours") from None
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {spec!r} (an IANA name such as Europe/Berlin, UTC, or +hh:mm)") from exc


def check_format(fmt: str) -> None:
    """ValueError when ``fmt`` is neither a named format nor a strptime pattern."""
    if fmt in NAMED_FORMATS:
        return
    if "%" not in fmt:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(NAMED_FORMATS)} nor a strptime pattern with %")
    try:
        datetime.strptime("", fmt)
    except ValueError as exc:
        if "directive" in str(exc) or "stray %" in str(exc):
            raise ValueError(f"format {fmt!r} is not a valid strptime pattern: {exc}") from None


def to_epoch_ms(value: Any, fmt: str, tz: tzinfo) -> int:
    """UTC epoch milliseconds of ``value`` read with ``fmt``; :class:`TimeFormatError` when it does not fit."""
    if fmt in ("epoch", "epoch_s", "epoch_ms"):
        number = _number(value)
        if fmt == "epoch_ms" or (fmt == "epoch" and abs(number) >= _MS_THRESHOLD):
            return round(number)
        return round(number * 1000.0)
    if not isinstance(value, str):
        raise TimeFormatError(f"expected text in format {fmt!r}, got {type(value).__name__}")
    text = value.strip()
    try:
        dt = datetime.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt)
    except ValueError:
        raise TimeFormatError(f"{text[:40]!r} is not in format {fmt!r}") from None
    if dt.tzinfo is not None:
        return round(dt.timestamp() * 1000)
    return round(((dt - _EPOCH).total_seconds() - _offset_s(dt, tz)) * 1000)


def parser(fmt: str, tz: tzinfo) -> Callable[[Any], int]:
    """:func:`to_epoch_ms` with ``fmt`` and ``tz`` bound, the ISO 8601 case (the usual one) inlined."""
    if fmt != "iso":
        return lambda value: to_epoch_ms(value, fmt, tz)
    fromisoformat = datetime.fromisoformat
    offsets = _OFFSETS

    def iso(value: Any) -> int:
        if type(value) is not str:
            return to_epoch_ms(value, fmt, tz)  # says why
        text = value.strip()
        try:
            dt = fromisoformat(text)
        except ValueError:
            raise TimeFormatError(f"{text[:40]!r} is not in format {fmt!r}") from None
        if dt.tzinfo is not None:
            return round(dt.timestamp() * 1000)
        # _offset_s's memo read here (its key), the call only on a miss
        offset = offsets.get((tz, dt.year, dt.month, dt.day, dt.hour))
        if offset is None:
            offset = _offset_s(dt, tz)
        return round(((dt - _EPOCH).total_seconds() - offset) * 1000)

    return iso


_EPOCH = datetime(1970, 1, 1)
_HOUR = timedelta(hours=1) - timedelta(microseconds=1)
_OFFSETS: dict[tuple[Any, ...], float] = {}
_OFFSETS_LIMIT = 65_536


def _offset_s(local: datetime, tz: tzinfo) -> float:
    """UTC offset (seconds) of the naive ``local`` in ``tz``, as ``local.replace(tzinfo=tz)`` has it.

    Memoised per zone and local hour: a zone's offset (zoneinfo's is a few µs to look up) is the same
    through an hour unless a transition falls inside it, and such an hour is never memoised.
    """
    key = (tz, local.year, local.month, local.day, local.hour)
    offset = _OFFSETS.get(key)
    if offset is None:
        start = local.replace(minute=0, second=0, microsecond=0, tzinfo=tz)
        delta = start.utcoffset()
        offset = delta.total_seconds() if delta is not None else 0.0
        end = (start.replace(tzinfo=None) + _HOUR).replace(tzinfo=tz).utcoffset()
        if end != delta:  # a transition inside this hour: exact, not memoised
            exact = local.replace(tzinfo=tz).utcoffset()
            return exact.total_seconds() if exact is not None else 0.0
        if len(_OFFSETS) >= _OFFSETS_LIMIT:
            _OFFSETS.clear()
        _OFFSETS[key] = offset
    return offset


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TimeFormatError("expected an epoch number, got a boolean")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TimeFormatError(f"{value[:40]!r} is not an epoch number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TimeFormatError(f"expected an epoch number, got {type(value).__name__}")
    return float(value)
