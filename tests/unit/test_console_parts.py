"""The console's pure parts: live fan-out with bounded queues, rate limits, public reports, localities,
the planners' CSV, pipeline metrics parsing, its OpenAPI document, and the delegate tokens it relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis

from services.console import public
from services.console.live import Hub, frame, normalise
from services.console.pipeline_health import parse, quantile
from services.console.ratelimit import RateLimit
from services.console.users import UserError, check_name, check_password, hash_password, verify_password
from services.history.report import to_csv
from shared.auth import USER_HEADER, AuthError, TokenStore, authorize
from shared.openapi import document

ROOT = Path(__file__).resolve().parents[2]
SITES = ["riverside", "hillcrest"]


def test_a_slow_client_loses_its_own_oldest_updates_and_nobody_else_s() -> None:
    hub = Hub(queue_size=3, max_clients=2)
    slow, fast = hub.join({"anomaly"}), hub.join({"anomaly", "risk"})
    assert slow is not None and fast is not None and hub.join({"risk"}) is None  # max_clients
    for i in range(5):
        hub.publish("anomaly", b'{"i":%d}' % i)
        if i % 2:
            assert [d for _, d in fast.take()]  # the fast client keeps up
    hub.publish("risk", b"{}")
    assert [d for _, d in slow.take()] == [frame("anomaly", b'{"i":%d}' % i) for i in (2, 3, 4)]
    assert slow.dropped == 2
    assert fast.dropped == 0 and fast.take() == [
        ("anomaly", frame("anomaly", b'{"i":4}')),
        ("risk", frame("risk", b"{}")),
    ]
    hub.leave(slow)
    hub.publish("anomaly", b"{}")
    assert slow.take() == []


def test_a_record_is_one_sse_message_whatever_it_holds() -> None:
    data = normalise(b'{\n "reason": "line\\nbreak\\r\\n\\nevent: evil"\n}')
    assert data is not None and b"\n" not in data and b"\r" not in data
    assert frame("anomaly", data).count(b"\n\n") == 1
    assert normalise(b"not json") is None and normalise(None) is None


def test_rate_limit_window_slides_and_memory_is_bounded() -> None:
    rl = RateLimit(limit=2, window_s=10, max_keys=3)
    rl.hit("a", now=0)
    assert rl.retry_after("a", now=1) == 0
    rl.hit("a", now=1)
    assert rl.retry_after("a", now=2) == pytest.approx(8)
    assert rl.retry_after("a", now=10.5) == 0  # the first hit left the window
    for key in "bcde":
        rl.hit(key, now=11)
    assert len(rl.hits) <= 3


def test_public_report_is_validated_field_by_field_and_shaped_for_history() -> None:
    for body, field in (
        ([], "body"),
        ({"locality": "riverside", "remark": "x"}, "name"),
        ({"name": "A", "locality": "mars", "remark": "x"}, "locality"),
        ({"name": "A", "locality": "riverside", "remark": "   "}, "remark"),
        ({"name": "A", "locality": "riverside", "remark": "x" * 2001}, "remark"),
        ({"name": "A", "locality": "riverside", "remark": "x", "contact": 5}, "contact"),
    ):
        with pytest.raises(public.ReportError) as info:
            public.report_record(body, SITES)
        assert info.value.field == field
    r = public.report_record({"name": " Ann\n", "locality": "hillcrest", "remark": "wet\r\nstreet"}, SITES, now_ms=7)
    assert r["id"].startswith("pr-") and r["ts"] == 7 and r["site"] == "hillcrest" and r["kind"] == "leak"
    assert (r["name"], r["text"], r["contact"]) == ("Ann", "wet street", "")


def test_localities_light_up_from_incidents_risk_and_pressure_only() -> None:
    zones = [
        {"site": "riverside", "status": "anomalous"},
        {"site": "hillcrest", "status": "normal"},
    ]
    assert [loc["status"] for loc in public.localities(SITES, zones, set(), set())] == ["green", "green"]
    assert [loc["status"] for loc in public.localities(SITES, zones, {"hillcrest"}, set())] == ["green", "amber"]
    assert public.localities(SITES, zones, set(), {"riverside"})[0]["status"] == "red"
    at_risk = [{"site": "hillcrest", "status": "at_risk"}]
    out = public.localities(SITES, at_risk, set(), set())
    assert out[1] == {"locality": "hillcrest", "status": "red", "message": public.MESSAGES["red"]}


def test_passwords_are_argon2id_and_names_are_checked() -> None:
    h = hash_password("a long enough password")
    assert h.startswith("$argon2id$") and verify_password(h, "a long enough password")
    assert not verify_password(h, "another password") and not verify_password(None, "x")
    with pytest.raises(UserError):
        check_password("short")
    with pytest.raises(UserError):
        check_name("spaces are not allowed")


def test_planners_csv_is_ranked_with_a_header() -> None:
    zone = {"site": "s", "zone": "z", "incidents": 2, "risk_max": 0.9, "risk_mean": 0.2, "loss_volume": 3.0}
    text = to_csv({"zones": [{**zone, "loss_cost": 4.0, "unit": "m3", "currency": "EUR"}]})
    assert text.splitlines() == [
        "rank,site,zone,incidents,risk_max,risk_mean,loss_volume,loss_cost,unit,currency",
        "1,s,z,2,0.9,0.2,3.0,4.0,m3,EUR",
    ]


def test_pipeline_metrics_are_read_from_the_exposition() -> None:
    text = "\n".join(
        [
            'flowwatch_events_in_total{service="ingest",topic="readings.raw"} 100',
            'flowwatch_events_in_total{service="ingest",topic="x"} 50',
            'flowwatch_consumer_lag{service="ingest",topic="readings.raw"} 7',
            'flowwatch_batch_seconds_bucket{service="ingest",stage="a",le="0.01"} 5',
            'flowwatch_batch_seconds_bucket{service="ingest",stage="a",le="0.1"} 9',
            'flowwatch_batch_seconds_bucket{service="ingest",stage="a",le="+Inf"} 10',
            'flowwatch_ingest_quarantine_reasons_total{reason="bad_unit"} 3',
            'flowwatch_forecaster_model_loaded{version="v7"} 1',
            'flowwatch_forecaster_model_loaded{version="v6"} 0',
        ]
    )
    s = parse(text, at=1.0)
    assert (s.events_in, s.lag, s.reasons, s.models) == (150, 7, {"bad_unit": 3}, {"forecaster": "v7"})
    assert quantile(s.buckets, 0.5) == 10.0 and quantile(s.buckets, 0.9) == 100.0
    assert quantile(s.buckets, 0.99) is None and quantile({}, 0.5) is None


def test_openapi_document_is_valid_and_every_non_public_api_path_is_guarded() -> None:
    doc = document(ROOT / "services/console/openapi.yaml")
    schemathesis.openapi.from_dict(doc).validate()
    public_paths = {"/api/login", "/api/public/localities", "/api/public/reports"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/api/") and path not in public_paths:
                assert op["security"] == [{"bearer": []}, {"session": []}], f"{method} {path}"
                assert {"401", "403"} <= set(op["responses"]), f"{method} {path}"
            elif path in public_paths:
                assert op["security"] == [], path


def test_routes_and_document_agree() -> None:
    import re

    routes = set(re.findall(r'page\("(/api/[^"]+)"', (ROOT / "services/console/routes.py").read_text()))
    assert routes == {p for p in document(ROOT / "services/console/openapi.yaml")["paths"] if p.startswith("/api/")}


def test_only_a_delegate_token_acts_for_the_user_it_names() -> None:
    tokens = TokenStore()
    tokens.add("operator", "console-token-0123456789", "console", "test")
    tokens.add("operator", "other-token-0123456789ab", "olga", "test")
    tokens.delegates = {"console"}
    assert authorize(tokens, "Bearer console-token-0123456789", "operator", acting_for="otto").name == "otto"
    assert authorize(tokens, "Bearer console-token-0123456789", "operator").name == "console"
    # any other token naming someone else is still itself: the header cannot impersonate
    assert authorize(tokens, "Bearer other-token-0123456789ab", "operator", acting_for="otto").name == "olga"
    # the delegate's own role still bounds what it may do
    with pytest.raises(AuthError):
        authorize(tokens, "Bearer console-token-0123456789", "admin", acting_for="ada")
    assert USER_HEADER == "X-Flowwatch-User"


class _Answers:
    """Stands in for an upstream API: records each request's URL and answers like the history / alerts APIs."""

    def __init__(self, alerts: list[dict] | None = None) -> None:
        self.alerts = alerts or []
        self.urls: list[str] = []

    async def json(self, method: str, path: str, params: object = None, user: str = "") -> dict:
        import httpx

        url = str(httpx.URL(f"http://h{path}", params=params))  # type: ignore[arg-type]
        self.urls.append(url)
        assert len(url) < 8190, "aiohttp refuses a request line over 8 KB"
        if path == "/v1/alerts":
            return {"alerts": self.alerts}
        fps = httpx.URL(url).params["fingerprints"].split(",")
        comment = {"by": "op", "at": 1_700_000_000_000, "text": "seen"}
        return {"items": [{"fingerprint": fp, "comments": [comment], "assignee": fp, "verdict": None} for fp in fps]}


def test_the_alarm_list_asks_for_its_annotations_in_requests_a_server_accepts() -> None:
    # 956 firing alerts in ten minutes of make demo made one annotations URL of 18 KB: history answered 400 and the
    # alarm list and overview failed
    import asyncio

    from services.console.api import ConsoleApi

    alerts = [
        {"fingerprint": f"{i:016x}", "status": "firing", "labels": {"alertname": "A", "severity": "warning"}}
        for i in range(956)
    ]
    history, upstream_alerts = _Answers(), _Answers(alerts)
    api = ConsoleApi.__new__(ConsoleApi)
    api.history, api.alerts = history, upstream_alerts  # type: ignore[assignment]
    listed = asyncio.run(api._alerts({}, "tester"))
    assert [a["fingerprint"] for a in listed] == [a["fingerprint"] for a in alerts]
    assert len(history.urls) == 5  # 200 a request
    assert all(a["assignee"] == a["fingerprint"] and len(a["comments"]) == 1 for a in listed)
