"""Parsing of the times and durations the CLIs, the APIs and the config files accept."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta

import numpy as np

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")

Moment = str | int | float | datetime | np.datetime64
Span = str | int | float | timedelta


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration_s(value: Span) -> float:
    """``"90s"``, ``"1h30m"``, ``"7d"``, ``"500ms"``, ``"15 min"``, a bare number or a number of seconds, or a
    timedelta -> seconds. The one parser of durations in the project (CLIs, the alerts config, the APIs): negative,
    infinite, empty or unitless-after-a-unit values are refused with ValueError."""
    seconds: float
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _text_duration_s(value)
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 2h, 7d, 1h30m)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r} (a duration is finite and not negative)")
    return seconds


def parse_duration_ms(value: Span) -> int:
    """:func:`parse_duration_s` in whole milliseconds."""
    return round(parse_duration_s(value) * 1000)


def _text_duration_s(value: str) -> float:
    text = value.strip().lower().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 90s, 15m, 2h, 7d, 1h30m)")
    return total


def parse_time_ms(value: Moment) -> int:
    """An ISO 8601 string, ``"now"``, a datetime, or epoch ms (numbers above 1e11) / s -> UTC epoch ms."""
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ms]").astype(np.int64))
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value if abs(value) > 1e11 else value * 1000)
    text = value.strip()
    if text.lower() == "now":
        return now_ms()
    try:
        return parse_time_ms(float(text))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use ISO 8601, e.g. 2024-03-04T00:00:00Z, or epoch ms)") from None
    return parse_time_ms(dt)


def iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
