"""What every service's API shares: the guard (bearer tokens, other principal sources such as the console's
sessions; closed by default, roles) and the OpenAPI documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis

from shared.auth import (
    AuthError,
    Guard,
    SessionInfo,
    SessionSource,
    TokenStore,
    authorize,
    principal_of,
    require_role,
)
from shared.openapi import document

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "detector", "forecaster", "alerts", "history")
VIEWER, OPERATOR, ADMIN = "viewer-token-0123456789", "operator-token-0123456789", "admin-token-0123456789"
TOKENS = TokenStore.load("T", env={"T": f"viewer:{VIEWER}:vic,operator:{OPERATOR}:olga,admin:{ADMIN}:ada"})


class Web:
    """The part of a Faust view a guarded function uses: ``json``."""

    def json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        return status, body, headers


class Request:
    def __init__(self, token: str | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}


async def view(web: Web, request: Request, zone: str) -> tuple[int, Any, Any]:
    return web.json({"zone": zone})


@pytest.mark.parametrize(
    ("tokens", "token", "role", "status"),
    [
        (TokenStore(), ADMIN, "viewer", 401),  # nothing configured: closed, not open
        (TOKENS, None, "viewer", 401),
        (TOKENS, "wrong-token-0123456789", "viewer", 401),
        (TOKENS, VIEWER, "operator", 403),
        (TOKENS, OPERATOR, "admin", 403),
        (TOKENS, VIEWER, "viewer", 200),
        (TOKENS, ADMIN, "operator", 200),
    ],
)
async def test_require_role_guards_a_view(tokens, token, role, status) -> None:
    got, body, headers = await require_role(tokens, role)(view)(Web(), Request(token), zone="z1")
    assert got == status
    if status == 200:
        assert body == {"zone": "z1"}
    else:
        assert "error" in body
    if status == 401:
        assert headers == {"WWW-Authenticate": "Bearer"}


class CookieRequest(dict):
    """A request with cookies and a method, holding per-request values like aiohttp's."""

    def __init__(self, method: str = "GET", cookie: str = "", csrf: str = "", token: str = "") -> None:
        super().__init__()
        self.method = method
        self.cookies = {"sid": cookie} if cookie else {}
        self.headers = {"X-CSRF-Token": csrf} if csrf else {}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"


SESSIONS = {"s-olga": SessionInfo("olga", "operator", "csrf-olga"), "s-vic": SessionInfo("vic", "viewer", "csrf-vic")}


async def lookup(session_id: str) -> SessionInfo | None:
    return SESSIONS.get(session_id)


GUARD = Guard(TOKENS, [SessionSource("sid", lookup)], missing="log in first")


@pytest.mark.parametrize(
    ("request_", "role", "status", "name"),
    [
        (CookieRequest(), "viewer", 401, None),  # neither token nor cookie: the source's 401 message
        (CookieRequest(cookie="s-gone"), "viewer", 401, None),  # an ended session
        (CookieRequest(cookie="s-vic"), "viewer", 200, "vic"),
        (CookieRequest(cookie="s-vic"), "operator", 403, None),
        (CookieRequest("POST", cookie="s-olga"), "operator", 403, None),  # no CSRF token
        (CookieRequest("POST", cookie="s-olga", csrf="csrf-vic"), "operator", 403, None),  # another session's
        (CookieRequest("POST", cookie="s-olga", csrf="csrf-olga"), "operator", 200, "olga"),
        (CookieRequest("DELETE", cookie="s-vic", csrf="csrf-vic"), "operator", 403, None),
        (CookieRequest("POST", token=OPERATOR), "operator", 200, "olga"),  # a token needs no CSRF
        (CookieRequest(cookie="s-olga", token="wrong-token-0123456789"), "viewer", 401, None),  # the token decides
        (CookieRequest(cookie="s-vic", token=ADMIN), "admin", 200, "ada"),
    ],
)
async def test_guard_knows_callers_by_token_or_session_cookie(request_, role, status, name) -> None:
    async def whoami(web: Web, request: CookieRequest) -> tuple[int, Any, Any]:
        return web.json({"name": principal_of(request).name})

    got, body, _ = await require_role(GUARD, role)(whoami)(Web(), request_)
    assert got == status
    assert body == ({"name": name} if status == 200 else {"error": body["error"]})
    if not request_.cookies and not request_.headers:
        assert body["error"] == "log in first"


async def test_a_session_principal_carries_its_session_and_csrf() -> None:
    p = await GUARD.authorize(CookieRequest(cookie="s-olga"), "viewer")
    assert (p.name, p.role, p.session_id, p.csrf) == ("olga", "operator", "s-olga", "csrf-olga")
    assert (await GUARD.authorize(CookieRequest(token=VIEWER), "viewer")).session_id == ""


def test_closed_by_default_says_what_to_configure() -> None:
    with pytest.raises(AuthError) as info:
        authorize(TokenStore(), f"Bearer {ADMIN}", "viewer")
    assert info.value.status == 401 and "FLOWWATCH_API_TOKENS" in str(info.value)
    assert authorize(TOKENS, f"Bearer {OPERATOR}", "viewer").name == "olga"
    assert TOKENS.authenticate("Bearer \udcff\udcfe") is None  # undecodable header bytes: unknown, not a crash


@pytest.mark.parametrize("service", SERVICES)
def test_each_openapi_document_is_valid_and_guards_its_api(service) -> None:
    doc = document(ROOT / "services" / service / "openapi.yaml")
    schemathesis.openapi.from_dict(doc).validate()  # raises on an invalid OpenAPI 3.0 document
    assert doc["openapi"].startswith("3.") and doc["security"] == [{"bearer": []}]
    open_paths = {"/health", "/ready", "/metrics", "/openapi.json"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in open_paths:
                assert op["security"] == [], path
            else:
                assert "security" not in op and {"401", "403"} <= set(op["responses"]), f"{method} {path}"
    assert set(doc["paths"]) > open_paths
