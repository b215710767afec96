"""The Redis mirror of alert state, for the API (Faust tables stay the source of truth).

Alerts are stored under the shared cache's key naming (kind ``alert``), plus a
sorted-set index (score = last update) so the API can list them in one round trip
whichever worker owns their partition. Silences are mirrored as kind ``silence``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.cache import Cache
from shared.codec import loads

ALERT_TTL_S = 8 * 24 * 3600
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class Unavailable(Exception):
    """Redis cannot be reached: the API must say so (503), not answer as if there were no alerts."""

    def __init__(self, op: str, exc: Exception) -> None:
        super().__init__(f"the alert store (Redis) is unreachable ({op}: {type(exc).__name__}); retry shortly")


class Mirror:
    def __init__(self, cache: Cache):
        self.cache = cache
        self.index = cache.key("alert-index", "all")

    async def put_alerts(self, alerts: Mapping[str, Mapping[str, Any]]) -> None:
        if not alerts:
            return
        if await self.cache.set_many("alert", alerts, ttl_s=ALERT_TTL_S):
            try:
                await self.cache.client.zadd(self.index, {fp: a["updated_at"] for fp, a in alerts.items()})
            except Exception as exc:  # noqa: BLE001 - the mirror is best effort; tables are the truth
                self.cache._failed("zadd", exc)

    async def remove_alerts(self, fps: Iterable[str]) -> None:
        fps = list(fps)
        if not fps:
            return
        try:
            async with self.cache.client.pipeline(transaction=False) as pipe:
                for fp in fps:
                    pipe.delete(self.cache.key("alert", fp))
                pipe.zrem(self.index, *fps)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self.cache._failed("delete", exc)

    def _down(self, op: str, exc: Exception) -> Unavailable:
        self.cache._failed(op, exc)
        return Unavailable(op, exc)

    async def alert(self, fp: str) -> dict[str, Any] | None:
        """The alert with this fingerprint, None when there is none; :class:`Unavailable` when Redis is down."""
        if not fp.isascii():  # fingerprints are hex; anything else (even a lone surrogate) is simply unknown
            return None
        try:
            raw = await self.cache.client.get(self.cache.key("alert", fp))
        except DOWN as exc:
            raise self._down("get", exc) from None
        return None if raw is None else loads(raw)

    async def all_alerts(self) -> list[dict[str, Any]]:
        """Every mirrored alert; :class:`Unavailable` when Redis is down (never an empty list instead)."""
        try:
            fps = [f.decode() if isinstance(f, bytes) else f for f in await self.cache.client.zrange(self.index, 0, -1)]
            raws = await self.cache.client.mget([self.cache.key("alert", fp) for fp in fps]) if fps else []
        except DOWN as exc:
            raise self._down("read", exc) from None
        found = {fp: loads(r) for fp, r in zip(fps, raws, strict=True) if r is not None}
        missing = [fp for fp in fps if fp not in found]
        if missing:  # expired entries: keep the index tidy
            try:
                await self.cache.client.zrem(self.index, *missing)
            except Exception as exc:  # noqa: BLE001
                self.cache._failed("zrem", exc)
        return [found[fp] for fp in fps if fp in found]


class MirrorWriter:
    """Alert changes waiting for the mirror: written in one Redis round trip per tick, not one per event.

    ``pending`` maps a fingerprint to its latest alert, or None when the alert was forgotten;
    what is lost in a crash is only the mirror's lag, the tables stay the truth.
    """

    def __init__(self, mirror: Mirror, max_pending: int = 1000) -> None:
        self.mirror = mirror
        self.max_pending = max_pending
        self.pending: dict[str, dict[str, Any] | None] = {}
        self.closed = False

    def add(self, changes: Mapping[str, dict[str, Any] | None]) -> None:
        self.pending.update(changes)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.max_pending

    async def flush(self) -> None:
        if not self.pending or self.closed:
            return
        batch, self.pending = self.pending, {}
        await self.mirror.put_alerts({fp: a for fp, a in batch.items() if a is not None})
        await self.mirror.remove_alerts([fp for fp, a in batch.items() if a is None])

    async def close(self) -> int:
        """The last writes; after them nothing reaches Redis from here. Returns how many there were."""
        last = len(self.pending)
        await self.flush()
        self.closed = True
        return last
