"""``GET /api/models`` (viewer): the model lifecycle for the console — the detector's serving versions, each
profile's newest registered versions with what their model cards say (decision, reasons, window, metrics,
drift at retrain), and the drift its workers see now. Read-only; it asks the detector's own API
(``/detector/models``, ``/detector/drift``) with the console's service token, so the console needs neither the
registry volume nor the detector's internals. Either answer missing is reported, not fatal.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.console.api import ConsoleApi
from services.console.upstream import Upstream, UpstreamError


class ModelsView:
    def __init__(self, api: ConsoleApi, token: str) -> None:
        self.api = api
        # the detector is found where the pipeline view reads its /metrics (FLOWWATCH_CONSOLE_METRICS_TARGETS)
        url = api.cs.targets().get("detector")
        self.detector = Upstream("detector", url, token, api.cs.upstream_timeout_s) if url else None

    async def _ask(self, path: str, user: str) -> dict[str, Any]:
        if self.detector is None:
            return {"ok": False, "error": "no detector in FLOWWATCH_CONSOLE_METRICS_TARGETS"}
        try:
            return {"ok": True, **await self.detector.json("GET", path, user=user)}
        except UpstreamError as exc:
            return {"ok": False, "error": str(exc)}

    async def get(self, request: Any) -> dict[str, Any]:
        who = await self.api.who(request, "viewer")
        models, drift = await asyncio.gather(
            self._ask("/detector/models", who.name), self._ask("/detector/drift", who.name)
        )
        return {"detector": {"models": models, "drift": drift}}
