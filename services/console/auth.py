"""How the console knows its caller: the shared :class:`shared.auth.Guard` (bearer tokens) with the console's
sessions as a second principal source, and the role each API handler needs.

Roles are the API tokens' (viewer < operator < admin); ``public`` needs nothing. 401 without a session
or token, 403 for a role too low or a missing/wrong ``X-CSRF-Token`` with a session cookie on a
state-changing request. A bearer token needs no CSRF token: a browser never adds it to a request on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.console.users import Users
from shared.auth import PUBLIC, ROLES, AuthConfigError, AuthError, SessionInfo, SessionSource

COOKIE = "fw_session"
CSRF_HEADER = "X-CSRF-Token"
#: the 401 message of a request with neither a session cookie nor a bearer token
MISSING = "log in first (POST /api/login) or send a bearer token"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def needs(role: str) -> Callable[[F], F]:
    """Declare the role an API handler needs (``public``: none); the routes guard it with the shared guard.
    A handler without a declaration needs ``viewer``: closed by default."""
    if role != PUBLIC and role not in ROLES:
        raise AuthConfigError(f"unknown role {role!r}")

    def mark(fn: F) -> F:
        fn.role = role  # type: ignore[attr-defined]
        return fn

    return mark


def role_of(handler: Callable[..., Any]) -> str:
    return getattr(handler, "role", "viewer")


def session_source(users: Callable[[], Users | None]) -> SessionSource:
    """The console's sessions (PostgreSQL, :class:`Users`) as a principal source; 503 until its database is up."""

    async def lookup(session_id: str) -> SessionInfo | None:
        store = users()
        if store is None:
            raise AuthError(503, "the console is still connecting to its database", {"Retry-After": "5"})
        return await store.session(session_id)

    return SessionSource(COOKIE, lookup, CSRF_HEADER)
