r"""Who is calling, with roles viewer < operator < admin, the same for every service's API.

Tokens come from an environment variable (``role:token[:name]`` entries, comma
separated) and/or a file (``role token [name]`` per line). Every request's token is
compared with *every* known token in constant time, so timing tells nothing about
which prefix was right. Tokens never reach a log line.

A :class:`Guard` resolves a request's principal: the bearer token when the request has an
``Authorization`` header, else the first of its other :data:`PrincipalSource`\ s that knows the
caller (the console adds a :class:`SessionSource`: a session cookie, with its CSRF token on every
state-changing request). Every service guards its views with it (:func:`require_role`).
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROLES = {"viewer": 1, "operator": 2, "admin": 3}
#: the role of a view anybody may call (the console's public page): no caller needed
PUBLIC = "public"
#: The header in which a delegate token (the console's) names the user it acts for.
USER_HEADER = "X-Flowwatch-User"


class AuthConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    role: str
    name: str
    #: set by a :class:`SessionSource`: the session's id and its CSRF token (empty for a bearer token)
    session_id: str = field(default="", repr=False)
    csrf: str = field(default="", repr=False)

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

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self._headers = headers

    @property
    def headers(self) -> dict[str, str] | None:
        if self._headers is not None:
            return self._headers
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


class PrincipalSource(Protocol):
    """Another way than a bearer token to know the caller: its principal, ``None`` when the request carries
    nothing this source reads, or :class:`AuthError` when it carries something refused."""

    async def __call__(self, request: Any) -> Principal | None: ...


#: methods that change nothing: no CSRF token needed
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class SessionInfo:
    """What a session store knows of a live session."""

    username: str
    role: str
    csrf: str


@dataclass(frozen=True)
class SessionSource:
    """A session cookie as a principal source; state-changing requests must echo its CSRF token in a header.

    A bearer token needs no CSRF token (a browser never adds one on its own); a cookie it does add, so a
    POST with a session cookie but without the session's CSRF token is refused (403) whatever its role.
    ``lookup`` returns the live session of an id, ``None`` when unknown or ended.
    """

    cookie: str
    lookup: Callable[[str], Awaitable[SessionInfo | None]]
    csrf_header: str = "X-CSRF-Token"

    async def __call__(self, request: Any) -> Principal | None:
        session_id = request.cookies.get(self.cookie, "")
        if not session_id:
            return None
        session = await self.lookup(session_id)
        if session is None:
            raise AuthError(401, "the session has ended or is unknown; log in again")
        if request.method not in SAFE_METHODS:
            given = request.headers.get(self.csrf_header, "")
            if not hmac.compare_digest(given.encode(errors="surrogatepass"), session.csrf.encode()):
                raise AuthError(403, f"missing or wrong {self.csrf_header} header (the session's csrf value)")
        return Principal(session.role, session.username, session_id=session_id, csrf=session.csrf)


#: where :func:`require_role` leaves the request's principal for the view (:func:`principal_of`)
PRINCIPAL_KEY = "flowwatch.principal"


@dataclass
class Guard:
    """The one way a service knows its caller: a bearer token (:func:`authorize`), else its other sources."""

    tokens: TokenStore
    sources: Sequence[PrincipalSource] = ()
    #: the 401 message when a request has neither a token nor anything a source reads
    missing: str = "missing or invalid bearer token (Authorization: Bearer <token>)"

    async def authorize(self, request: Any, role: str) -> Principal:
        """The caller allowed ``role``, else :class:`AuthError` (401 unknown, 403 role too low)."""
        header = request.headers.get("Authorization")
        if header or not self.sources:
            return authorize(self.tokens, header, role, acting_for=request.headers.get(USER_HEADER))
        for source in self.sources:
            principal = await source(request)
            if principal is not None:
                if not principal.can(role):
                    raise AuthError(403, f"role {principal.role!r} may not do this; needs {role!r} or above")
                return principal
        raise AuthError(401, self.missing)


def principal_of(request: Any) -> Principal:
    """The principal :func:`require_role` admitted this request with."""
    return request[PRINCIPAL_KEY]


ViewFn = Callable[..., Awaitable[Any]]


def require_role(guard: Guard | TokenStore, role: str) -> Callable[[ViewFn], ViewFn]:
    """Decorate a Faust function view ``async def view(web, request, **kw)`` to answer 401/403 without a
    caller of ``role`` or above (the same JSON ``{"error": ...}`` shape as every API refusal); the view
    finds the caller with :func:`principal_of`."""
    if role not in ROLES:
        raise AuthConfigError(f"unknown role {role!r}")
    checker = Guard(guard) if isinstance(guard, TokenStore) else guard

    def decorate(fn: ViewFn) -> ViewFn:
        @functools.wraps(fn)
        async def guarded(web: Any, request: Any, **kw: Any) -> Any:
            try:
                principal = await checker.authorize(request, role)
            except AuthError as exc:
                return web.json({"error": str(exc)}, status=exc.status, headers=exc.headers)
            try:
                request[PRINCIPAL_KEY] = principal
            except TypeError:  # a request that holds no per-request values (a test double)
                pass
            return await fn(web, request, **kw)

        return guarded

    return decorate
