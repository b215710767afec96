"""ADWIN (ADaptive WINdowing, Bifet & Gavaldà 2007): a window over a stream of numbers that drops its older
part whenever the two parts' means differ by more than chance allows — a change detector with no window length
to tune. The forecaster runs one per zone on its forecast error (one value per closed step).

The window is an exponential histogram (ADWIN2): at most ``max_buckets`` buckets of each size 1, 2, 4, ...,
so ``W`` values take O(log W) memory and a check costs O(log W). Every ``clock`` values each split between
buckets is tested: the older part ``n0, mean0`` and the newer ``n1, mean1`` differ when

    |mean0 - mean1| >= sqrt(2 / m * var * ln(2 / d)) + 2 / (3 m) * ln(2 / d),
    m = 1 / (1 / n0 + 1 / n1), d = delta / ln(W), var = the window's variance,

and then the oldest bucket is dropped (repeatedly, until no split differs). ``delta`` is the confidence:
0.002, the paper's and river's default, raises about one false change per several thousand values of a
stationary stream.

Written here rather than taken from ``river`` (an optional bench extra): river is a large compiled package
for the one class the workers need, and this one is small, pure Python and tested against the behaviour the
paper guarantees (tests/unit/test_mlops_adwin.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Change:
    """A detected change: the mean of the dropped (older) part and of what remains."""

    before: float
    after: float
    dropped: int

    @property
    def increase(self) -> bool:
        return self.after > self.before


class Adwin:
    def __init__(self, delta: float = 0.002, max_buckets: int = 5, clock: int = 32, min_side: int = 5) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta={delta} must be within (0, 1)")
        self.delta = delta
        self.max_buckets = max_buckets
        self.clock = clock
        self.min_side = min_side
        # oldest first; (count, sum, sum of squares); sizes never increase from oldest to newest
        self.buckets: list[list[float]] = []
        self.width = 0
        self.total = 0.0
        self.squares = 0.0
        self.seen = 0
        self.changes = 0

    @property
    def mean(self) -> float:
        return self.total / self.width if self.width else 0.0

    @property
    def variance(self) -> float:
        if not self.width:
            return 0.0
        m = self.total / self.width
        return max(self.squares / self.width - m * m, 0.0)

    def update(self, x: float) -> Change | None:
        """Add one value; returns the change when the window just dropped its older part."""
        x = float(x)
        if not math.isfinite(x):
            return None
        self.buckets.append([1.0, x, x * x])
        self.width += 1
        self.total += x
        self.squares += x * x
        self.seen += 1
        self._compress()
        if self.seen % self.clock or self.width < 2 * self.min_side:
            return None
        return self._detect()

    def _compress(self) -> None:
        size = 1.0
        while True:
            same = [i for i, b in enumerate(self.buckets) if b[0] == size]
            if len(same) <= self.max_buckets:
                return
            i, j = same[0], same[1]  # the two oldest of this size are neighbours
            a, b = self.buckets[i], self.buckets[j]
            self.buckets[i : j + 1] = [[a[0] + b[0], a[1] + b[1], a[2] + b[2]]]
            size *= 2

    def _cut(self) -> bool:
        n = self.width
        var = self.variance
        d = self.delta / math.log(n) if n > 2 else self.delta
        log_term = math.log(2.0 / d)
        n0, s0 = 0.0, 0.0
        for b in self.buckets[:-1]:
            n0 += b[0]
            s0 += b[1]
            n1 = n - n0
            if n0 < self.min_side or n1 < self.min_side:
                continue
            m = 1.0 / (1.0 / n0 + 1.0 / n1)
            eps = math.sqrt(2.0 / m * var * log_term) + 2.0 / (3.0 * m) * log_term
            if abs(s0 / n0 - (self.total - s0) / n1) >= eps:
                return True
        return False

    def _detect(self) -> Change | None:
        dropped, dropped_sum = 0, 0.0
        while self.width > 2 * self.min_side and self._cut():
            n, s, sq = self.buckets.pop(0)
            self.width -= int(n)
            self.total -= s
            self.squares -= sq
            dropped += int(n)
            dropped_sum += s
        if not dropped:
            return None
        self.changes += 1
        return Change(dropped_sum / dropped, self.mean, dropped)
