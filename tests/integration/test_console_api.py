"""The console API on the real stack: history, alerts and console workers on Kafka, Redis and PostgreSQL.

One set of workers for the module (starting three Faust workers is the slow part): every role on every
endpoint (401 without login, 403 for a role too low, 403 without the CSRF header), logins, sessions and
their rate limits, the CLI, the live feed (a record on ``anomalies`` reaches an SSE client), and a public
report travelling to the operators' list, the alerts (``PublicLeakReport``, acked as the operator) and,
confirmed, to ``feedback``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import ROOT, ServiceProcess, collect, delete_topics, produce
from tests.history_helpers import scratch_database, wait_for

pytestmark = pytest.mark.timeout(420)

VIEWER_TOKEN = "console-viewer-token-" + uuid.uuid4().hex[:8]
OPERATOR_TOKEN = "console-operator-token-" + uuid.uuid4().hex[:8]
ADMIN_TOKEN = "console-admin-token-" + uuid.uuid4().hex[:8]
SERVICE_TOKEN = "console-service-token-" + uuid.uuid4().hex[:8]
TOKENS = (
    f"viewer:{VIEWER_TOKEN}:vtoken,operator:{OPERATOR_TOKEN}:otoken,admin:{ADMIN_TOKEN}:atoken,"
    f"operator:{SERVICE_TOKEN}:console"
)
PASSWORD = "correct horse battery"
LOGIN_ATTEMPTS = 3


@dataclass
class Stack:
    settings: Settings
    db: str
    console: ServiceProcess
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.console.url


@pytest.fixture(scope="module")
async def cstack(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    s = stack.replace(
        api_tokens=TOKENS,
        api_delegates="console",
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=tmp / "data",
        model_dir=tmp / "models",
        partitions=2,
    )
    await create_all(s, out=open(os.devnull, "w"))
    procs: list[ServiceProcess] = []
    try:
        async with scratch_database() as db:
            history = ServiceProcess(
                "history",
                s,
                extra_env={
                    "FLOWWATCH_API_TOKENS": TOKENS,
                    "FLOWWATCH_HISTORY_DATABASE_URL": db,
                    "FLOWWATCH_HISTORY_BATCH_WITHIN_S": "0.1",
                },
            ).start()
            procs.append(history)
            alerts = ServiceProcess(
                "alerts",
                s,
                extra_env={
                    "FLOWWATCH_API_TOKENS": TOKENS,
                    "FLOWWATCH_ALERTS_TICK_INTERVAL_S": "0.2",
                    "FLOWWATCH_ALERTS_BATCH_WITHIN_S": "0.05",
                    "FLOWWATCH_ALERTS_SESSION_TIMEOUT_S": "8",
                },
            ).start()
            procs.append(alerts)
            # history first: its migrations create the console's tables (the console migrates too, under a lock)
            await asyncio.to_thread(history.wait_ready, 240)
            env = {
                "FLOWWATCH_API_TOKENS": TOKENS,
                "FLOWWATCH_CONSOLE_DATABASE_URL": db,
                "FLOWWATCH_CONSOLE_HISTORY_URL": history.url,
                "FLOWWATCH_CONSOLE_ALERTS_URL": alerts.url,
                "FLOWWATCH_CONSOLE_SERVICE_TOKEN": SERVICE_TOKEN,
                "FLOWWATCH_CONSOLE_METRICS_TARGETS": f"history={history.url},alerts={alerts.url}",
                "FLOWWATCH_CONSOLE_TRUST_FORWARDED_FOR": "true",
                "FLOWWATCH_CONSOLE_LOGIN_ATTEMPTS": str(LOGIN_ATTEMPTS),
                "FLOWWATCH_CONSOLE_REPORT_LIMIT": "3",
                "FLOWWATCH_CONSOLE_LIVE_HEARTBEAT_S": "1",
            }
            console = ServiceProcess("console", s, extra_env=env).start()
            procs.append(console)
            await asyncio.to_thread(console.wait_ready, 240)
            await asyncio.to_thread(alerts.wait_ready, 240)
            yield Stack(s, db, console, {**console.env})
    finally:
        for p in procs:
            p.stop()
        await delete_topics(s)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Browser:
    """A logged-in session: the cookie jar of an httpx client, and the CSRF token from the login."""

    def __init__(self, url: str, name: str, password: str = PASSWORD, address: str = "10.0.0.1"):
        self.client = httpx.Client(base_url=url, timeout=30, headers={"X-Forwarded-For": address})
        r = self.client.post("/api/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        self.csrf = r.json()["csrf"]
        self.user = r.json()["user"]

    def request(self, method: str, path: str, csrf: bool = True, **kw: Any) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return self.client.request(method, path, headers=headers, **kw)


def add_user(cstack: Stack, name: str, role: str) -> None:
    r = httpx.post(
        f"{cstack.url}/api/users",
        json={"username": name, "password": PASSWORD, "role": role},
        headers=bearer(ADMIN_TOKEN),
        timeout=30,
    )
    assert r.status_code in (201, 409), r.text


@pytest.fixture(scope="module")
def users(cstack: Stack) -> dict[str, Browser]:
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        add_user(cstack, name, role)
    return {
        role: Browser(cstack.url, name) for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin"))
    }


# (method, path, least role, body) — every endpoint of the contract; the path's ids need not exist: a role
# that may call it gets past auth (a 404 or 400 then is the endpoint's own answer, not a refusal).
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/me", "viewer", None),
    ("GET", "/api/network", "viewer", None),
    ("GET", "/api/overview", "viewer", None),
    ("GET", "/api/zones/riverside-plant", "viewer", None),
    ("GET", "/api/zones/riverside-plant/series?since=1h", "viewer", None),
    ("GET", "/api/zones/riverside-plant/risk?since=1h", "viewer", None),
    ("GET", "/api/zones/riverside-plant/losses?since=7d", "viewer", None),
    ("GET", "/api/sensors/riverside-plant-pump01", "viewer", None),
    ("GET", "/api/sensors/riverside-plant-pump01/series?metric=flow&since=1h", "viewer", None),
    ("GET", "/api/alerts?status=firing", "viewer", None),
    ("GET", "/api/alerts/export.csv", "viewer", None),
    ("POST", "/api/alerts/nope/ack", "operator", {"note": "x"}),
    ("POST", "/api/alerts/nope/comment", "operator", {"text": "x"}),
    ("POST", "/api/alerts/nope/assign", "operator", {"assignee": "x"}),
    ("POST", "/api/alerts/nope/verdict", "operator", {"verdict": "true_positive"}),
    ("GET", "/api/silences", "viewer", None),
    ("POST", "/api/silences", "operator", {"matchers": [], "duration": "2h"}),
    ("DELETE", "/api/silences/nope", "operator", None),
    ("GET", "/api/history/anomaly-rates?by=site", "viewer", None),
    ("GET", "/api/history/alerts?since=1h", "viewer", None),
    ("GET", "/api/history/episodes", "viewer", None),
    ("GET", "/api/history/episodes/1", "viewer", None),
    ("GET", "/api/history/playback?since=1h&step=5m", "viewer", None),
    ("GET", "/api/history/export.csv?what=episodes&since=1h", "viewer", None),
    ("GET", "/api/report", "viewer", None),
    ("GET", "/api/report.csv", "viewer", None),
    ("GET", "/api/pipeline", "viewer", None),
    ("GET", "/api/models", "viewer", None),
    ("GET", "/api/reports", "operator", None),
    ("POST", "/api/reports/nope/triage", "operator", {"status": "confirmed"}),
    ("GET", "/api/users", "admin", None),
    ("POST", "/api/users", "admin", {"username": "bad name!"}),
    ("PATCH", "/api/users/nobody", "admin", {"role": "viewer"}),
    ("GET", "/api/live?events=nonsense", "viewer", None),
]
ROLES = ("viewer", "operator", "admin")
TOKEN_OF = {"viewer": VIEWER_TOKEN, "operator": OPERATOR_TOKEN, "admin": ADMIN_TOKEN}


def test_every_role_on_every_endpoint(cstack: Stack, users: dict[str, Browser]) -> None:
    anonymous = httpx.Client(base_url=cstack.url, timeout=30)
    wrong = []
    for method, path, least, body in ENDPOINTS:
        kw = {"json": body} if body is not None else {}
        r = anonymous.request(method, path, **kw)
        if r.status_code != 401:
            wrong.append((method, path, "anonymous", r.status_code))
        for role in ROLES:
            allowed = ROLES.index(role) >= ROLES.index(least)
            got = users[role].request(method, path, **kw).status_code
            by_token = anonymous.request(method, path, headers=bearer(TOKEN_OF[role]), **kw).status_code
            for how, code in (("session", got), ("token", by_token)):
                if (allowed and code in (401, 403)) or (not allowed and code != 403) or code >= 500:
                    wrong.append((method, path, f"{role} by {how}", code))
        if method != "GET":
            # A session without the CSRF header is refused, even an admin's; a bearer token needs none.
            code = users["admin"].request(method, path, csrf=False, **kw).status_code
            if code != 403:
                wrong.append((method, path, "admin session without X-CSRF-Token", code))
            code = users["admin"].client.request(method, path, headers={"X-CSRF-Token": "forged"}, **kw).status_code
            if code != 403:
                wrong.append((method, path, "admin session with a wrong X-CSRF-Token", code))
    assert not wrong, wrong


def test_public_endpoints_and_probes_need_no_login(cstack: Stack) -> None:
    anonymous = httpx.Client(base_url=cstack.url, timeout=30)
    localities = anonymous.get("/api/public/localities")
    assert localities.status_code == 200
    body = localities.json()["localities"]
    assert {loc["locality"] for loc in body} == {"riverside", "hillcrest", "lakeside", "oldtown"}
    assert all(loc["status"] in ("green", "amber", "red") and loc["message"] for loc in body)
    assert "sensor" not in localities.text and "pump" not in localities.text
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path
    front = anonymous.get("/public")
    # the API tests run without a front-end build; with one, /public is the app
    assert front.status_code == 200 or (front.status_code == 503 and "make console-web" in front.text)
    assert anonymous.get("/api/nothing-here", headers=bearer(ADMIN_TOKEN)).status_code == 404


def test_login_session_logout_and_cookie_flags(cstack: Stack, users: dict[str, Browser]) -> None:
    client = httpx.Client(base_url=cstack.url, timeout=30, headers={"X-Forwarded-For": "10.1.0.1"})
    r = client.post("/api/login", json={"username": "vera", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["user"] == {"name": "vera", "role": "viewer"}
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("fw_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and "Secure" not in cookie  # FLOWWATCH_CONSOLE_SECURE_COOKIES is off locally
    me = client.get("/api/me").json()
    assert me == {"user": {"name": "vera", "role": "viewer"}, "csrf": r.json()["csrf"]}
    assert client.post("/api/logout").status_code == 403  # logout changes state: CSRF needed
    assert client.post("/api/logout", headers={"X-CSRF-Token": me["csrf"]}).status_code == 204
    assert client.get("/api/me").status_code == 401
    # a stolen cookie after logout is worthless
    stale = httpx.Client(base_url=cstack.url, timeout=30, cookies={"fw_session": cookie.split(";")[0].split("=", 1)[1]})
    assert stale.get("/api/me").status_code == 401


def test_wrong_password_is_401_then_rate_limited_per_address_and_per_username(cstack: Stack) -> None:
    add_user(cstack, "rita", "viewer")
    add_user(cstack, "sam", "viewer")

    def login(name: str, password: str, address: str) -> httpx.Response:
        return httpx.post(
            f"{cstack.url}/api/login",
            json={"username": name, "password": password},
            headers={"X-Forwarded-For": address},
            timeout=30,
        )

    # per address: failures for different names from one address
    for i in range(LOGIN_ATTEMPTS):
        assert login(f"ghost{i}", "wrong password", "10.2.0.1").status_code == 401
    limited = login("sam", PASSWORD, "10.2.0.1")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert login("sam", PASSWORD, "10.2.0.2").status_code == 200  # another address is not limited
    # per username: failures for one name from many addresses
    for i in range(LOGIN_ATTEMPTS):
        assert login("rita", "wrong password", f"10.3.0.{i}").status_code == 401
    assert login("rita", PASSWORD, "10.3.1.1").status_code == 429  # even the right password, while limited
    assert login("unknown-user", PASSWORD, "10.4.0.1").status_code == 401


def test_admin_manages_users_and_a_change_ends_sessions(cstack: Stack, users: dict[str, Browser]) -> None:
    admin = users["admin"]
    r = admin.request("POST", "/api/users", json={"username": "nina", "password": "short", "role": "viewer"})
    assert r.status_code == 400 and "password" in r.json()["error"]
    r = admin.request("POST", "/api/users", json={"username": "nina", "password": PASSWORD, "role": "boss"})
    assert r.status_code == 400 and "role" in r.json()["error"]
    assert (
        admin.request(
            "POST", "/api/users", json={"username": "nina", "password": PASSWORD, "role": "viewer"}
        ).status_code
        == 201
    )
    assert (
        admin.request(
            "POST", "/api/users", json={"username": "nina", "password": PASSWORD, "role": "viewer"}
        ).status_code
        == 409
    )
    nina = Browser(cstack.url, "nina", address="10.5.0.1")
    assert nina.request("GET", "/api/me").status_code == 200
    r = admin.request("PATCH", "/api/users/nina", json={"role": "operator"})
    assert r.status_code == 200 and r.json()["role"] == "operator"
    assert nina.request("GET", "/api/me").status_code == 401  # the role change ended her session
    nina = Browser(cstack.url, "nina", address="10.5.0.1")
    assert nina.user["role"] == "operator"
    assert admin.request("PATCH", "/api/users/nina", json={"disabled": True}).json()["disabled"] is True
    assert nina.request("GET", "/api/me").status_code == 401
    r = httpx.post(
        f"{cstack.url}/api/login",
        json={"username": "nina", "password": PASSWORD},
        headers={"X-Forwarded-For": "10.5.0.2"},
    )
    assert r.status_code == 401
    listed = {u["name"]: u for u in admin.request("GET", "/api/users").json()["items"]}
    assert listed["nina"]["disabled"] and listed["ada"]["role"] == "admin"
    assert "password_hash" not in str(listed)


def test_cli_adds_a_user_with_the_password_from_stdin_and_lists_it(cstack: Stack) -> None:
    env = {**cstack.env, "PYTHONPATH": str(ROOT)}
    env.pop("FLOWWATCH_CONSOLE_PASSWORD", None)
    cli = [sys.executable, "-m", "services.console", "users"]
    added = subprocess.run(
        [*cli, "add", "carl", "--role", "operator"],
        input=f"{PASSWORD}\n",
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    listed = subprocess.run([*cli, "list"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "carl\toperator\tenabled" in listed.stdout
    assert Browser(cstack.url, "carl", address="10.6.0.1").user == {"name": "carl", "role": "operator"}
    disabled = subprocess.run([*cli, "disable", "carl"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert disabled.returncode == 0 and "disabled" in disabled.stdout


async def test_a_record_on_anomalies_reaches_a_live_client(cstack: Stack, users: dict[str, Browser]) -> None:
    marker = f"live-{uuid.uuid4().hex[:8]}"
    cookies = dict(users["viewer"].client.cookies)
    async with httpx.AsyncClient(base_url=cstack.url, timeout=httpx.Timeout(60, read=60), cookies=cookies) as client:
        async with client.stream("GET", "/api/live?events=anomaly,risk") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert await anext(lines) == "event: hello"
            record = {"sensor_id": marker, "ts": 1, "site": "s1", "zone": "z1", "score": 0.9, "reason": "a\nb"}
            await produce(cstack.settings, "anomalies", [(marker.encode(), record)])
            event = ""

            async def until_marker() -> dict[str, Any]:
                nonlocal event
                async for line in lines:
                    if line.startswith("event: "):
                        event = line[len("event: ") :]
                    elif line.startswith("data: ") and marker in line:
                        import orjson

                        return orjson.loads(line[len("data: ") :])
                raise AssertionError("the stream ended")

            got = await asyncio.wait_for(until_marker(), 60)
            assert event == "anomaly" and got == record  # the newline in a value cannot break the framing


async def test_a_public_report_reaches_operators_alerts_and_feedback(cstack: Stack, users: dict[str, Browser]) -> None:
    anonymous = httpx.Client(base_url=cstack.url, timeout=30, headers={"X-Forwarded-For": "10.9.0.1"})
    bad = anonymous.post("/api/public/reports", json={"name": "Ann", "locality": "atlantis", "remark": "wet"})
    assert bad.status_code == 400 and "locality" in bad.json()["error"]
    bad = anonymous.post("/api/public/reports", json={"name": "Ann", "locality": "lakeside"})
    assert bad.status_code == 400 and "remark" in bad.json()["error"]
    remark = f"water running down the street {uuid.uuid4().hex[:6]}"
    r = anonymous.post(
        "/api/public/reports",
        json={"name": "Ann Example", "locality": "lakeside", "remark": remark, "contact": "ann@example.org"},
    )
    assert r.status_code == 202 and r.json()["message"]
    report_id = r.json()["id"]
    operator = users["operator"]

    async def listed() -> Any:
        items = operator.request("GET", "/api/reports?status=new").json()["items"]
        return next((i for i in items if i["id"] == report_id), None)

    item = await wait_for(listed, 90, "the report in the operators' list")
    assert (item["locality"], item["remark"], item["name"], item["contact"]) == (
        "lakeside",
        remark,
        "Ann Example",
        "ann@example.org",
    )
    assert users["viewer"].request("GET", "/api/reports").status_code == 403

    async def alert() -> Any:
        items = operator.request("GET", "/api/alerts?status=firing&site=lakeside").json()["items"]
        return next((a for a in items if a["labels"].get("report") == report_id), None)

    fired = await wait_for(alert, 90, "the PublicLeakReport alert")
    assert fired["alertname"] == "PublicLeakReport" and "Ann" not in str(fired) and fired["ack"] is None
    fp = fired["fingerprint"]
    acked = operator.request("POST", f"/api/alerts/{fp}/ack", json={"note": "crew on the way"}).json()
    assert acked["ack"]["by"] == "otto" and acked["ack"]["note"] == "crew on the way"  # the operator, not the token
    commented = operator.request("POST", f"/api/alerts/{fp}/comment", json={"text": "valve closed"}).json()
    assert [(c["by"], c["text"]) for c in commented["comments"]] == [("otto", "valve closed")]
    assert (
        operator.request("POST", f"/api/alerts/{fp}/assign", json={"assignee": "crew 7"}).json()["assignee"] == "crew 7"
    )
    logged = users["viewer"].request("GET", f"/api/history/alerts?since=1h&fingerprint={fp}").json()["items"]
    assert {(e["kind"], e["author"], e["note"]) for e in logged} >= {
        ("ack", "otto", "crew on the way"),
        ("comment", "otto", "valve closed"),
        ("assign", "otto", "crew 7"),
    }  # the operator's actions are in the history store's alert log
    csv_text = operator.request("GET", "/api/alerts/export.csv?site=lakeside").text
    assert csv_text.splitlines()[0].startswith("fingerprint,alertname") and fp in csv_text and "crew 7" in csv_text

    triaged = operator.request(
        "POST", f"/api/reports/{report_id}/triage", json={"status": "confirmed", "note": "leak found"}
    )
    assert triaged.status_code == 200, triaged.text
    assert triaged.json()["status"] == "confirmed" and triaged.json()["triage"]["by"] == "otto"
    feedback = await collect(
        cstack.settings, "feedback", lambda got: any(f["fingerprint"] == f"report-{report_id}" for f in got), 60
    )
    [verdict] = [f for f in feedback if f["fingerprint"] == f"report-{report_id}"]
    assert verdict["verdict"] == "true_positive" and verdict["author"] == "otto"
    assert not [i for i in operator.request("GET", "/api/reports?status=new").json()["items"] if i["id"] == report_id]
    # the public side is rate-limited per client address
    for _ in range(3):
        anonymous.post("/api/public/reports", json={"name": "B", "locality": "lakeside", "remark": "x"})
    assert (
        anonymous.post("/api/public/reports", json={"name": "B", "locality": "lakeside", "remark": "x"}).status_code
        == 429
    )


def test_pipeline_health_names_the_services_and_the_infrastructure(cstack: Stack, users: dict[str, Browser]) -> None:
    body = users["viewer"].request("GET", "/api/pipeline").json()
    assert {s["name"]: s["up"] for s in body["services"]} == {"history": True, "alerts": True}
    assert body["infra"] == {"kafka": "up", "redis": "up", "postgres": "up"}
    overview = users["viewer"].request("GET", "/api/overview").json()
    assert len(overview["zones"]) == sum(
        len(s["zones"]) for s in users["viewer"].request("GET", "/api/network").json()["sites"]
    )
    assert set(overview["kpis"]["firing"]) == {"critical", "warning", "info"}


def test_models_say_why_the_detector_cannot_be_asked(cstack: Stack, users: dict[str, Browser]) -> None:
    answer = users["viewer"].request("GET", "/api/models").json()["detector"]
    for part in ("models", "drift"):  # this stack runs no detector: each part says so, the view still answers
        assert answer[part] == {"ok": False, "error": "no detector in FLOWWATCH_CONSOLE_METRICS_TARGETS"}


def test_path_outside_the_front_end_is_not_served(cstack: Stack, tmp_path: Path) -> None:
    r = httpx.get(f"{cstack.url}/../../etc/passwd", timeout=10)
    assert "root:" not in r.text
