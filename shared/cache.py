"""The Redis read cache: latest state per sensor, zone and alert for APIs and dashboards.

Redis is a cache, never the source of truth (Faust tables are). So every write
here is best-effort: when Redis is down the pipeline keeps running, the failure
is counted in ``flowwatch_cache_errors_total`` and logged at most once per
``log_every_s`` seconds, and reads return ``None``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from shared.codec import dumps, loads
from shared.metrics import CACHE_ERRORS

log = logging.getLogger(__name__)

#: Entries per Redis pipeline: the caller's event loop runs between two (other work is not held up for long).
PIPELINE_CHUNK = 250


class Cache:
    """One pooled asyncio Redis client with flowwatch's key naming and TTLs."""

    def __init__(self, url: str, *, prefix: str = "", ttl_s: int = 3600, service: str = "", log_every_s: float = 30.0):
        self.url = url
        self.prefix = f"flowwatch:{prefix}"
        self.ttl_s = ttl_s
        self.service = service
        self.log_every_s = log_every_s
        self._last_log = 0.0
        self.misses = 0
        # Short timeouts: a cache that hangs would stall the stream it serves.
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_on_timeout=False, health_check_interval=30
        )

    def key(self, kind: str, ident: str) -> str:
        """``flowwatch:<prefix><kind>:<id>``, e.g. ``flowwatch:sensor:s-001``."""
        return f"{self.prefix}{kind}:{ident}"

    def _failed(self, op: str, exc: Exception) -> None:
        self.misses += 1
        CACHE_ERRORS.labels(self.service, op).inc()
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log = now
            log.warning("redis %s failed (pipeline continues without cache): %s", op, exc)

    async def set_many(self, kind: str, items: Mapping[str, Any], ttl_s: int | None = None) -> bool:
        """Write many ``id -> value`` entries, a pipeline (one round trip) per :data:`PIPELINE_CHUNK` of them.

        Building a pipeline is Python on the caller's event loop (~50-100 µs an entry): one pipeline of a
        thousand sensors held the detector's loop, and every reading waiting on it, for tens of ms at each flush.
        """
        if not items:
            return True
        ttl = ttl_s or self.ttl_s
        entries = list(items.items())
        try:
            for start in range(0, len(entries), PIPELINE_CHUNK):
                async with self.client.pipeline(transaction=False) as pipe:
                    for ident, value in entries[start : start + PIPELINE_CHUNK]:
                        pipe.set(self.key(kind, ident), dumps(value), ex=ttl)
                    await pipe.execute()
            return True
        except Exception as exc:  # noqa: BLE001 - any Redis failure degrades to "no cache"
            self._failed("set", exc)
            return False

    async def set(self, kind: str, ident: str, value: Any, ttl_s: int | None = None) -> bool:
        return await self.set_many(kind, {ident: value}, ttl_s)

    async def get(self, kind: str, ident: str) -> Any | None:
        try:
            raw = await self.client.get(self.key(kind, ident))
        except Exception as exc:  # noqa: BLE001
            self._failed("get", exc)
            return None
        return None if raw is None else loads(raw)

    async def get_many(self, kind: str, idents: list[str]) -> dict[str, Any]:
        if not idents:
            return {}
        try:
            raws = await self.client.mget([self.key(kind, i) for i in idents])
        except Exception as exc:  # noqa: BLE001
            self._failed("mget", exc)
            return {}
        return {i: loads(r) for i, r in zip(idents, raws, strict=True) if r is not None}

    async def incr_many(self, kind: str, counts: Mapping[str, int], ttl_s: int | None = None) -> bool:
        """Add to counters (e.g. anomaly counts per zone), a pipeline per :data:`PIPELINE_CHUNK` of them."""
        if not counts:
            return True
        ttl = ttl_s or self.ttl_s
        entries = list(counts.items())
        try:
            for start in range(0, len(entries), PIPELINE_CHUNK):
                async with self.client.pipeline(transaction=False) as pipe:
                    for ident, n in entries[start : start + PIPELINE_CHUNK]:
                        k = self.key(kind, ident)
                        pipe.incrby(k, n)
                        pipe.expire(k, ttl)
                    await pipe.execute()
            return True
        except Exception as exc:  # noqa: BLE001
            self._failed("incr", exc)
            return False

    async def delete(self, kind: str, ident: str) -> bool:
        try:
            await self.client.delete(self.key(kind, ident))
            return True
        except Exception as exc:  # noqa: BLE001
            self._failed("delete", exc)
            return False

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception as exc:  # noqa: BLE001
            self._failed("ping", exc)
            return False

    async def close(self) -> None:
        await self.client.aclose()
