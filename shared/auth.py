"""API tokens with roles: viewer < operator < admin, the same for every service's API.

Tokens come from an environment variable (``role:token[:name]`` entries, comma
separated) and/or a file (``role token [name]`` per line). Every request's token is
compared with *every* known token in constant time, so timing tells nothing about
which prefix was right. Tokens never reach a log line.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = {"viewer": 1, "operator": 2, "admin": 3}
#: The header in which a delegate token (the console's) names the user it acts for.
USER_HEADER = "X-Flowwatch-User"


class AuthConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    role: str
    name: str

    def can(self, role: str) -> bool:
        return ROLES[self.role] >= ROLES[role]


@dataclass
class TokenStore:
    tokens: list[tuple[bytes, Principal]] = field(default_factory=list, repr=False)
    #: names of tokens allowed to act for the user named in :data:`USER_HEADER` (with their own role at most)
    delegates: set[str] = field(default_factory=set)

    def add(self, role: str, token: str, name: str, where: str) -> None:
        if role not in ROLES:
            raise AuthConfigError(f"{where}: unknown role {role!r} (use viewer, operator or admin)")
        if len(token) < 16:
            raise AuthConfigError(f"{where}: token for {name or role!r} is shorter than 16 characters")
        self.tokens.append((token.encode(), Principal(role, name or role)))

    @classmethod
    def load(cls, env_var: str, file: str = "", env: dict[str, str] | None = None) -> TokenStore:
        env = dict(os.environ if env is None else env)
        store = cls()
        for i, entry in enumerate(p for p in env.get(env_var, "").split(",") if p.strip()):
            parts = entry.strip().split(":")
            if len(parts) not in (2, 3):
                raise AuthConfigError(f"{env_var} entry {i + 1}: expected role:token[:name]")
            store.add(parts[0], parts[1], parts[2] if len(parts) == 3 else "", f"{env_var} entry {i + 1}")
        if file:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError as exc:
                raise AuthConfigError(f"{file}: cannot read: {exc.strerror}") from None
            for n, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) not in (2, 3):
                    raise AuthConfigError(f"{file}:{n}: expected 'role token [name]'")
                store.add(parts[0], parts[1], parts[2] if len(parts) == 3 else "", f"{file}:{n}")
        return store

    @classmethod
    def from_settings(cls, settings: Any, *extra_env_vars: str, env: dict[str, str] | None = None) -> TokenStore:
        """The tokens of ``FLOWWATCH_API_TOKENS`` / ``FLOWWATCH_API_TOKENS_FILE``, plus any service-specific
        variables (``role:token[:name]`` entries) named in ``extra_env_vars``."""
        store = cls()
        if settings.api_tokens:
            store.extend(cls.load("FLOWWATCH_API_TOKENS", env={"FLOWWATCH_API_TOKENS": settings.api_tokens}))
        if settings.api_tokens_file:
            store.extend(cls.load("FLOWWATCH_API_TOKENS_FILE", settings.api_tokens_file, env={}))
        for var in extra_env_vars:
            store.extend(cls.load(var, env=env))
        store.delegates = {n.strip() for n in getattr(settings, "api_delegates", "").split(",") if n.strip()}
        return store

    def extend(self, other: TokenStore) -> None:
        self.tokens.extend(other.tokens)
        self.delegates |= other.delegates

    def authenticate(self, header: str | None) -> Principal | None:
        if not header or not header.startswith("Bearer "):
            return None
        given = header[len("Bearer ") :].strip().encode(errors="surrogatepass")
        found = None
        for token, principal in self.tokens:
            if hmac.compare_digest(token, given) and found is None:
                found = principal
        return found


#: What to tell a client when the service has no token at all: closed by default, and how to open it.
NOT_CONFIGURED = (
    "no API tokens are configured, so this endpoint is closed: set FLOWWATCH_API_TOKENS "
    "(role:token[:name], comma separated) or FLOWWATCH_API_TOKENS_FILE"
)


class AuthError(Exception):
    """A refused request: 401 (no or unknown token) or 403 (a token whose role is too low)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else None


def authorize(
    tokens: TokenStore,
    authorization: str | None,
    role: str,
    unconfigured: str = NOT_CONFIGURED,
    acting_for: str | None = None,
) -> Principal:
    """The principal of an ``Authorization: Bearer`` header allowed ``role``, else :class:`AuthError`.

    With no token configured at all every request is refused: closed by default, never open. A delegate
    token (``FLOWWATCH_API_DELEGATES``) that names a user in ``acting_for`` (the ``X-Flowwatch-User``
    header) acts as that user, with the token's role: the console checked the user's own role already.
    Any other token's ``acting_for`` is ignored, so the header cannot be used to impersonate anyone.
    """
    if not tokens.tokens:
        raise AuthError(401, unconfigured)
    principal = tokens.authenticate(authorization)
    if principal is None:
        raise AuthError(401, "missing or invalid bearer token (Authorization: Bearer <token>)")
    if not principal.can(role):
        raise AuthError(403, f"role {principal.role!r} may not do this; needs {role!r} or above")
    user = (acting_for or "").strip()
    if user and principal.name in tokens.delegates and len(user) <= 200 and user.isprintable():
        return Principal(principal.role, user)
    return principal


ViewFn = Callable[..., Awaitable[Any]]


def require_role(tokens: TokenStore, role: str) -> Callable[[ViewFn], ViewFn]:
    """Decorate a Faust function view ``async def view(web, request, **kw)`` to answer 401/403 without a
    token of ``role`` or above (the same JSON ``{"error": ...}`` shape as every API refusal)."""
    if role not in ROLES:
        raise AuthConfigError(f"unknown role {role!r}")

    def decorate(fn: ViewFn) -> ViewFn:
        @functools.wraps(fn)
        async def guarded(web: Any, request: Any, **kw: Any) -> Any:
            try:
                authorize(
                    tokens, request.headers.get("Authorization"), role, acting_for=request.headers.get(USER_HEADER)
                )
            except AuthError as exc:
                return web.json({"error": str(exc)}, status=exc.status, headers=exc.headers)
            return await fn(web, request, **kw)

        return guarded

    return decorate
