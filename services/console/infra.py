"""Is Kafka, Redis, PostgreSQL up, as the console sees them (for the pipeline health view)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from services.console.live import Feed
from shared.cache import Cache
from shared.settings import Settings


class Infra:
    def __init__(self, settings: Settings, cache: Cache, feed: Feed):
        self.settings = settings
        self.cache = cache
        self.feed = feed
        self.pool: Callable[[], Any] = lambda: None

    async def _postgres(self) -> bool:
        pool = self.pool()
        if pool is None:
            return False
        try:
            return await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0) == 1
        except Exception:  # noqa: BLE001 - any failure is "down"
            return False

    async def status(self) -> dict[str, str]:
        redis, postgres = await asyncio.gather(self.cache.ping(), self._postgres())
        # The live feed's consumer reads from Kafka continuously: its state is the broker's, seen from here.
        kafka = self.feed.started.is_set()
        return {k: "up" if v else "down" for k, v in (("kafka", kafka), ("redis", redis), ("postgres", postgres))}
