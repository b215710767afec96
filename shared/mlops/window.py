"""The time window a retrain reads (``--since 7d --until now``) and its split into training and held-out parts."""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.timeutil import iso_ms, parse_duration_ms, parse_time_ms


@dataclass(frozen=True)
class Window:
    """``[since_ms, until_ms)``; the most recent ``holdout`` share is never trained on."""

    since_ms: int
    until_ms: int
    holdout: float = 0.3

    @classmethod
    def parse(cls, since: str, until: str | None = None, holdout: float = 0.3, now_ms: int | None = None) -> Window:
        """``since`` is a duration back from ``until`` (``7d``, ``20m``) or a time (ISO 8601, or a bare number:
        epoch ms, as ``until`` takes it); ``until`` a time (default now)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        end = now if until in (None, "", "now") else parse_time_ms(until)
        try:
            if since.strip().isdigit():
                raise ValueError("a bare number is a time")
            start = end - parse_duration_ms(since)
        except ValueError:
            start = parse_time_ms(since)
        if start >= end:
            raise ValueError(f"--since {since!r} is not before --until ({iso_ms(end)})")
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"the held-out share must be between 0 and 1, got {holdout}")
        return cls(start, end, holdout)

    def split_ms(self, first_ms: int, last_ms: int) -> int:
        """Start of the held-out part of data that spans ``[first_ms, last_ms]`` (the window may be longer
        than the stream's history): everything before it trains, everything from it on judges."""
        first, last = max(first_ms, self.since_ms), min(last_ms, self.until_ms)
        return last - int((last - first) * self.holdout)

    def describe(self, split_ms: int | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "since": iso_ms(self.since_ms),
            "until": iso_ms(self.until_ms),
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "holdout_share": self.holdout,
        }
        if split_ms is not None:
            out.update(holdout_from=iso_ms(split_ms), split_ms=split_ms)
        return out
