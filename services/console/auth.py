"""Who is calling: a session cookie (with its CSRF token on state-changing requests) or a bearer token.

Roles are the API tokens' (viewer < operator < admin); ``public`` needs nothing. 401 without a
session or token, 403 for a role too low or a missing/wrong ``X-CSRF-Token`` with a session cookie.
A bearer token needs no CSRF token: a browser never adds it to a request on its own.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from services.console.users import Users
from shared.auth import ROLES, AuthError, TokenStore, authorize

COOKIE = "fw_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    csrf: str = ""
    session_id: str = ""


async def caller(request: Any, role: str, tokens: TokenStore, users: Users) -> Caller:
    """The caller allowed ``role``, else :class:`ApiError` (401/403)."""
    header = request.headers.get("Authorization")
    if header:
        try:
            p = authorize(tokens, header, role)
        except AuthError as exc:
            raise ApiError(exc.status, str(exc), exc.headers) from None
        return Caller(p.name, p.role)
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        raise ApiError(401, "log in first (POST /api/login) or send a bearer token")
    session = await users.session(session_id)
    if session is None:
        raise ApiError(401, "the session has ended or is unknown; log in again")
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(errors="surrogatepass"), session.csrf.encode()):
            raise ApiError(403, f"missing or wrong {CSRF_HEADER} header (the csrf value of /api/me)")
    if ROLES[session.role] < ROLES[role]:
        raise ApiError(403, f"role {session.role!r} may not do this; needs {role!r} or above")
    return Caller(session.username, session.role, session.csrf, session_id)
