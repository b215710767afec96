"""Mute time intervals, as in Alertmanager's ``time_intervals``: times, weekdays, days of month, months, years.

Every field present must match (AND); a field left out matches always; several
entries of one interval are alternatives (OR). ``end_time`` is exclusive; day
ranges may be negative (``-1`` is the last day of the month).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WEEKDAYS = {d: i for i, d in enumerate(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])}
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_TIME_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class IntervalError(ValueError):
    pass


def _minutes(text: Any) -> int:
    m = _TIME_RE.match(str(text))
    if not m:
        raise IntervalError(f"bad time {text!r} (use HH:MM, 00:00 to 24:00)")
    total = int(m.group(1)) * 60 + int(m.group(2))
    if total > 24 * 60:
        raise IntervalError(f"bad time {text!r}")
    return total


def _ranges(items: Any, names: dict[str, int] | None, lo: int, hi: int, what: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(items, list):
        raise IntervalError(f"{what} must be a list like ['1:5', '10']")
    out = []
    for item in items:
        parts = str(item).lower().split(":")
        if len(parts) > 2:
            raise IntervalError(f"bad {what} range {item!r}")
        vals = []
        for p in parts:
            p = p.strip()
            if names is not None and p in names:
                vals.append(names[p])
                continue
            try:
                v = int(p)
            except ValueError:
                raise IntervalError(f"bad {what} value {p!r}") from None
            if not (lo <= v <= hi) or (what == "days_of_month" and v == 0):
                raise IntervalError(f"{what} value {v} out of range {lo}..{hi}")
            vals.append(v)
        start, end = vals[0], vals[-1]
        out.append((start, end))
    return tuple(out)


@dataclass(frozen=True)
class TimeRange:
    times: tuple[tuple[int, int], ...] = ()
    weekdays: tuple[tuple[int, int], ...] = ()
    days_of_month: tuple[tuple[int, int], ...] = ()
    months: tuple[tuple[int, int], ...] = ()
    years: tuple[tuple[int, int], ...] = ()
    location: str = "UTC"

    def contains(self, ts_s: float) -> bool:
        t = datetime.fromtimestamp(ts_s, ZoneInfo(self.location))
        if self.times:
            minute = t.hour * 60 + t.minute
            if not any(a <= minute < b for a, b in self.times):
                return False
        if self.weekdays and not any(a <= t.weekday() <= b for a, b in self.weekdays):
            return False
        if self.days_of_month:
            last = calendar.monthrange(t.year, t.month)[1]

            def norm(d: int) -> int:
                return d if d > 0 else last + 1 + d

            if not any(norm(a) <= t.day <= norm(b) for a, b in self.days_of_month):
                return False
        if self.months and not any(a <= t.month <= b for a, b in self.months):
            return False
        return not (self.years and not any(a <= t.year <= b for a, b in self.years))


@dataclass(frozen=True)
class TimeInterval:
    name: str
    ranges: tuple[TimeRange, ...]

    def contains(self, ts_s: float) -> bool:
        return any(r.contains(ts_s) for r in self.ranges)


_KNOWN = {"times", "weekdays", "days_of_month", "months", "years", "location"}


def parse_time_range(spec: Any) -> TimeRange:
    if not isinstance(spec, dict):
        raise IntervalError("each time interval is a mapping (times, weekdays, days_of_month, months, years, location)")
    unknown = set(spec) - _KNOWN
    if unknown:
        raise IntervalError(f"unknown field(s) {sorted(unknown)} (known: {sorted(_KNOWN)})")
    times = []
    for t in spec.get("times") or []:
        if not isinstance(t, dict) or "start_time" not in t or "end_time" not in t:
            raise IntervalError("times entries need start_time and end_time")
        a, b = _minutes(t["start_time"]), _minutes(t["end_time"])
        if a >= b:
            raise IntervalError(f"start_time {t['start_time']} must be before end_time {t['end_time']}")
        times.append((a, b))
    location = str(spec.get("location", "UTC"))
    try:
        ZoneInfo(location)
    except (ZoneInfoNotFoundError, ValueError):
        raise IntervalError(f"unknown location {location!r}") from None
    return TimeRange(
        times=tuple(times),
        weekdays=_ranges(spec["weekdays"], _WEEKDAYS, 0, 6, "weekdays") if "weekdays" in spec else (),
        days_of_month=_ranges(spec["days_of_month"], None, -31, 31, "days_of_month") if "days_of_month" in spec else (),
        months=_ranges(spec["months"], _MONTHS, 1, 12, "months") if "months" in spec else (),
        years=_ranges(spec["years"], None, 1970, 9999, "years") if "years" in spec else (),
        location=location,
    )
