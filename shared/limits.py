"""Budgets that keep attacker-chosen ids from growing state without bound.

A reading with a sensor or zone id never seen before creates state (a row in a table, an entry
in memory). :class:`NewIdBudget` lets each source create at most ``per_minute`` new ids a
minute; what is beyond it is quarantined with the reason by the caller. Sources themselves
come from input, so at most ``max_sources`` are tracked; the rest share one budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

OTHER = "(other sources)"
#: An id that may be a metric label: short, plain characters (never free text).
LABEL_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class NewIdBudget:
    def __init__(self, per_minute: int, max_sources: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.max_sources = max_sources
        self.clock = clock
        self.windows: dict[str, tuple[float, int]] = {}  # source -> (window start, ids created in it)

    def allow(self, source: str) -> bool:
        """Count one new id for ``source``; False when its budget for the current minute is spent."""
        if self.per_minute <= 0:
            return True
        if source not in self.windows and len(self.windows) >= self.max_sources:
            source = OTHER
        now = self.clock()
        start, used = self.windows.get(source, (now, 0))
        if now - start >= 60.0:
            start, used = now, 0
        if used >= self.per_minute:
            self.windows[source] = (start, used)
            return False
        self.windows[source] = (start, used + 1)
        return True

    def reason(self, source: str) -> str:
        return f"limited: too many new ids from source {source[:64]!r}: more than {self.per_minute} a minute"


class LabelSet:
    """Metric label values taken from ids: plain ids only, and at most ``limit`` distinct ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def admit(self, value: str) -> bool:
        if value in self.seen:
            return True
        if len(self.seen) >= self.limit or not LABEL_SAFE.fullmatch(value):
            return False
        self.seen.add(value)
        return True
