"""Parsing of the times and durations the CLIs and APIs accept (the simulator's start and duration, retrain's window)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import numpy as np

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")

Moment = str | int | float | datetime | np.datetime64
Span = str | int | float | timedelta


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_duration_ms(value: Span) -> int:
    """``"90s"``, ``"1h30m"``, ``"7d"``, ``"250ms"``, a timedelta, or a number of seconds -> milliseconds."""
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, int | float):
        return round(value * 1000)
    text = value.strip().lower().replace(" ", "")
    try:
        return round(float(text) * 1000)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 2h, 7d, 1h30m)")
    return round(total)


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
