"""Fixed-capacity sliding-window rate limits kept in memory (per replica), bounded in the keys they hold.

Used for logins (per client address and per username) and public reports (per client address).
Each replica counts on its own: behind N replicas a client gets at most N times the limit, which
still stops guessing at any useful speed; the limits are small on purpose.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class RateLimit:
    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000):
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self.hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self.hits.get(key)
        if q is None:
            q = self.hits[key] = deque()
            while len(self.hits) > self.max_keys:  # the oldest keys go first: memory stays bounded
                self.hits.popitem(last=False)
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        return 0.0 if len(q) < self.limit else max(0.0, q[0] + self.window_s - now)

    def hit(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        q.append(now)
        self.hits.move_to_end(key)
        while len(q) > self.limit:
            q.popleft()

    def reset(self, key: str) -> None:
        self.hits.pop(key, None)
