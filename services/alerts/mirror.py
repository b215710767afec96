"""The Redis mirror of alert state, for the API (Faust tables stay the source of truth).

Alerts are stored under the shared cache's key naming (kind ``alert``), plus a
sorted-set index (score = last update) so the API can list them in one round trip
whichever worker owns their partition. Silences are mirrored as kind ``silence``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.cache import Cache

ALERT_TTL_S = 8 * 24 * 3600


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

    async def alert(self, fp: str) -> dict[str, Any] | None:
        return await self.cache.get("alert", fp)

    async def all_alerts(self) -> list[dict[str, Any]]:
        try:
            fps = [f.decode() if isinstance(f, bytes) else f for f in await self.cache.client.zrange(self.index, 0, -1)]
        except Exception as exc:  # noqa: BLE001
            self.cache._failed("zrange", exc)
            return []
        found = await self.cache.get_many("alert", fps)
        missing = [fp for fp in fps if fp not in found]
        if missing:  # expired entries: keep the index tidy
            try:
                await self.cache.client.zrem(self.index, *missing)
            except Exception as exc:  # noqa: BLE001
                self.cache._failed("zrem", exc)
        return [found[fp] for fp in fps if fp in found]
