"""Window statistics that merge by addition: per key, ``[count, sum, min, max]`` or, with squares,
``[count, sum, sum of squares, min, max]``.

The detector's aggregate windows and the forecaster's step partials accumulate readings this way, map-side
per micro-batch, then merge partials from any number of batches in any order. The lists are the wire format
of both internal topics and their tables (JSON), so the layout is fixed: count and sum first, min and max
last in both shapes. One function per shape: the forecaster adds every reading's every metric to both.
"""

from __future__ import annotations

Stats = list  # [count, sum, min, max] or [count, sum, sumsq, min, max]; numbers as given (ints stay ints)
StatsMap = dict  # key -> Stats


def add(stats: StatsMap, key: str, x: float) -> bool:
    """Count ``x`` under ``key`` in ``[count, sum, min, max]`` (the caller has left out what is not a number);
    True for a new key."""
    s = stats.get(key)
    if s is None:
        stats[key] = [1, x, x, x]
        return True
    s[0] += 1
    s[1] += x
    if x < s[2]:
        s[2] = x
    if x > s[3]:
        s[3] = x
    return False


def add_squared(stats: StatsMap, key: str, x: float) -> bool:
    """:func:`add` for ``[count, sum, sum of squares, min, max]``."""
    s = stats.get(key)
    if s is None:
        stats[key] = [1, x, x * x, x, x]
        return True
    s[0] += 1
    s[1] += x
    s[2] += x * x
    if x < s[3]:
        s[3] = x
    if x > s[4]:
        s[4] = x
    return False


def combine(a: Stats, b: Stats) -> Stats:
    """One key's statistics of two partials, as a new list (both of the same shape)."""
    if len(a) == 5:
        return [a[0] + b[0], a[1] + b[1], a[2] + b[2], min(a[3], b[3]), max(a[4], b[4])]
    return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])]


def merge_into(into: StatsMap, other: StatsMap) -> None:
    """Add ``other``'s statistics into ``into`` (new keys are copied, never shared)."""
    for key, s in other.items():
        mine = into.get(key)
        into[key] = list(s) if mine is None else combine(mine, s)


def merged(a: StatsMap, b: StatsMap) -> StatsMap:
    """``a`` and ``b`` merged into a new map; neither is changed."""
    out = {k: list(v) for k, v in a.items()}
    merge_into(out, b)
    return out


def mean(s: Stats) -> float:
    return s[1] / s[0]
