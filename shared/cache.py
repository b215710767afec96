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
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from shared.codec import dumps, loads
from shared.metrics import CACHE_ERRORS

log = logging.getLogger(__name__)

#: Entries per Redis pipeline: the caller's event loop runs between two (other work is not held up for long).
PIPELINE_CHUNK = 250


#: SET key value EX ttl for every key (the last argument is the TTL). Redis loads it once per connection
#: pool (EVALSHA; redis-py sends the script again when the server answers NOSCRIPT).
_SET_MANY = (
    "local ttl = ARGV[#ARGV] for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i], 'EX', ttl) end return #KEYS"
)


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
        self._set_script: AsyncScript | None = self.client.register_script(_SET_MANY)

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
        """Write many ``id -> value`` entries in one script call (pipelines if the server refuses scripts)."""
        if not items:
            return True
        ttl = ttl_s or self.ttl_s
        keys = [self.key(kind, ident) for ident in items]
        try:
            values = [dumps(v) for v in items.values()]
            if self._set_script is not None:
                # One script call for the lot: redis-py spends ~25 us of the caller's CPU on each command
                # of a pipeline (packing, and a timeout context per reply) and ~3 us a key this way, which
                # mattered for ingest and the detector, who write every sensor once a second.
                try:
                    await self._set_script(keys=keys, args=[*values, ttl])
                    return True
                except ResponseError as exc:
                    # A server that refuses scripts (an ACL without @scripting, a proxy): pipelines from now on.
                    log.warning("redis refused the set_many script, writing with pipelines from now on: %s", exc)
                    self._set_script = None
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in zip(keys, values, strict=True):
                    pipe.set(key, value, ex=ttl)
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
