"""Calls to the history and alerts APIs with the console's token, on behalf of the session's user.

The console's token is a delegate (``FLOWWATCH_API_DELEGATES``): with ``X-Flowwatch-User`` the other
services record the operator's name, not the console's, as the author of an ack, silence or verdict.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.auth import USER_HEADER, TokenStore


class UpstreamError(Exception):
    """The other API refused (its status and error are passed on) or did not answer (502)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def service_token(configured: str, tokens: TokenStore) -> str:
    """The configured token, else the first admin (then operator) token the console itself accepts."""
    if configured:
        return configured
    for role in ("admin", "operator"):
        for token, principal in tokens.tokens:
            if principal.role == role:
                return token.decode()
    return ""


class Upstream:
    def __init__(self, name: str, base_url: str, token: str, timeout_s: float):
        self.name = name
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    async def call(
        self, method: str, path: str, *, user: str = "", params: Any = None, json: Any = None
    ) -> httpx.Response:
        headers = {USER_HEADER: user} if user else {}
        try:
            return await self.client.request(method, path, params=params, json=json, headers=headers)
        except httpx.InvalidURL:
            raise UpstreamError(400, "a path or query value cannot be passed on (control characters)") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"the {self.name} API did not answer: {type(exc).__name__}") from None

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON answer of a 2xx; a 4xx is passed on with its error, anything else is a 502."""
        r = await self.call(method, path, **kw)
        if r.status_code < 300:
            return r.json()
        try:
            message = str(r.json().get("error", r.text[:200]))
        except ValueError:
            message = r.text[:200]
        status = r.status_code if 400 <= r.status_code < 500 and r.status_code not in (401, 403) else 502
        if r.status_code in (401, 403):
            message = f"the console's token was refused by the {self.name} API ({r.status_code}): {message}"
        raise UpstreamError(status, message)

    async def close(self) -> None:
        await self.client.aclose()
