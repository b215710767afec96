"""Receivers without a network: webhook payload, HMAC, retry classification, backoff, email, outbox, auth."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import socket

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from services.alerts import delivery
from services.alerts.config import EmailConfig, WebhookConfig, parse_config
from services.alerts.delivery import (
    DeliveryError,
    WebhookClient,
    backoff_delay,
    client_error,
    email_message,
    send_webhook,
    with_retries,
)
from services.alerts.pipeline import Processor
from services.alerts.settings import AlertsSettings
from shared.auth import AuthConfigError, TokenStore
from shared.codec import loads

NOTIFICATION = {
    "id": "n-1",
    "version": "4",
    "groupKey": 'root:{zone="z1"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "hook",
    "groupLabels": {"zone": "z1"},
    "commonLabels": {"zone": "z1"},
    "commonAnnotations": {},
    "externalURL": "http://alerts.example",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "A", "zone": "z1", "sensor": f"s{i}"},
            "annotations": {"summary": f"<b>s{i}</b> & co", "runbook_url": "https://rb/x"},
            "startsAt": "2026-01-01T00:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": f"f{i}",
        }
        for i in range(3)
    ],
}


@contextlib.asynccontextmanager
async def receiver(handler):
    """A real HTTP server on 127.0.0.1 answering every POST with ``handler(request)``, and a client for it."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    http = WebhookClient()
    try:
        yield f"http://127.0.0.1:{port}", http
    finally:
        await http.aclose()
        await runner.cleanup()


async def test_webhook_is_signed_and_keyed_and_truncated():
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    async with receiver(handler) as (url, http):
        cfg = WebhookConfig(url=f"{url}/hook", secret=b"k3y", max_alerts=2)
        assert await send_webhook(http, cfg, NOTIFICATION) == 200
    [(headers, body)] = seen
    payload = loads(body)
    assert payload["truncatedAlerts"] == 1 and len(payload["alerts"]) == 2 and "id" not in payload
    assert headers["Idempotency-Key"] == "n-1" and headers["Content-Type"] == "application/json"
    ts = headers[delivery.TIMESTAMP_HEADER]
    assert delivery.verify(b"k3y", ts, body, headers[delivery.SIGNATURE_HEADER])
    assert not delivery.verify(b"other", ts, body, headers[delivery.SIGNATURE_HEADER])


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (404, False), (401, False), (302, False)],
)
async def test_http_status_classification(status, retryable):
    async def handler(request: web.Request) -> web.Response:
        # a redirect is an answer, not followed: the hook named in the config is where notifications go
        return web.Response(status=status, text="why\nnot", headers={"Location": "/elsewhere"})

    async with receiver(handler) as (url, http):
        with pytest.raises(DeliveryError) as info:
            await send_webhook(http, WebhookConfig(url=f"{url}/x"), NOTIFICATION)
    assert info.value.retryable is retryable and str(info.value) == f"HTTP {status}: why not"


async def test_timeouts_and_connection_errors_are_retryable():
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async with receiver(slow) as (url, http):
        with pytest.raises(DeliveryError, match=r"timeout after 0\.2s") as info:
            await send_webhook(http, WebhookConfig(url=f"{url}/x", timeout_s=0.2), NOTIFICATION)
        assert info.value.retryable
        with socket.socket() as sock:  # a port nothing listens on once this is closed
            sock.bind(("127.0.0.1", 0))
            closed = sock.getsockname()[1]
        with pytest.raises(DeliveryError, match="ClientConnectorError") as info:
            await send_webhook(http, WebhookConfig(url=f"http://127.0.0.1:{closed}/x"), NOTIFICATION)
        assert info.value.retryable


async def test_one_connection_carries_deliveries_one_after_another():
    peers = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    async with receiver(handler) as (url, http):
        for _ in range(5):
            assert await send_webhook(http, WebhookConfig(url=f"{url}/hook"), NOTIFICATION) == 200
    assert len(peers) == 5 and len(set(peers)) == 1  # kept alive: no new connection per notification


def test_a_proxy_named_in_the_environment_is_used_except_where_no_proxy_says(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,internal.example")
    http = WebhookClient()
    proxy, auth = http.proxy("http://hooks.example/x")
    assert str(proxy) == "http://proxy.example:3128" and auth is not None and auth.login == "user"
    assert http.proxy("http://127.0.0.1:9/x") == (None, None) and http.proxy("http://internal.example/y") == (
        None,
        None,
    )
    assert http.proxy("https://hooks.example/x") == (None, None)  # no HTTPS_PROXY


async def test_with_retries_backs_off_and_stops_on_permanent_errors():
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    calls = []

    async def flaky(n: int) -> None:
        calls.append(n)
        if n < 3:
            raise DeliveryError("503", True)

    assert await with_retries(flaky, max_attempts=5, base_s=1, cap_s=10, sleep=sleep) == 3
    assert calls == [1, 2, 3] and len(sleeps) == 2 and sleeps[0] <= 1 and sleeps[1] <= 2

    async def never(n: int) -> None:
        raise DeliveryError("500", True)

    with pytest.raises(DeliveryError) as info:
        await with_retries(never, max_attempts=4, base_s=0.01, cap_s=0.01, sleep=sleep)
    assert info.value.attempts == 4

    async def refused(n: int) -> None:
        raise DeliveryError("400", False)

    with pytest.raises(DeliveryError) as info:
        await with_retries(refused, max_attempts=4, base_s=0.01, cap_s=0.01, sleep=sleep)
    assert info.value.attempts == 1


def test_backoff_is_jittered_and_capped():
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.5, 4.0, rng) for n in range(1, 10) for _ in range(50)]
    assert max(delays) <= 4.0 and min(delays) >= 0
    assert len({round(d, 6) for d in delays}) > 100  # jitter, not a fixed schedule


def test_email_has_plain_text_and_escaped_html():
    cfg = EmailConfig(to=("ops@x",), sender="fw@x", host="h", port=25)
    msg = email_message(cfg, NOTIFICATION)
    assert msg["Subject"] == "[flowwatch] [FIRING:3] zone=z1"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "<b>s0</b> & co" in text and "runbook: https://rb/x" in text
    assert "&lt;b&gt;s0&lt;/b&gt; &amp; co" in html and "<b>s0</b>" not in html
    assert msg["X-Flowwatch-Notification-Id"] == "n-1"


def test_email_smtp_errors_are_classified(monkeypatch):
    import smtplib

    class Refusing:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def ehlo(self):
            pass

        def starttls(self, context=None):
            pass

        def login(self, u, p):
            raise smtplib.SMTPAuthenticationError(535, b"bad credentials")

    monkeypatch.setattr(smtplib, "SMTP", Refusing)
    cfg = EmailConfig(to=("a@x",), sender="b@x", host="h", port=587, username="u", password="p")
    with pytest.raises(DeliveryError) as info:
        delivery._send_email_sync(cfg, email_message(cfg, NOTIFICATION), None)
    assert not info.value.retryable and "535" in str(info.value)


def test_processor_writes_one_outbox_entry_per_integration_and_clears_on_result():
    data = {
        "rules": [
            {
                "name": "A",
                "source": "anomaly",
                "when": ["score >= threshold"],
                "labels": {"site": "{site}", "zone": "{zone}", "sensor": "{sensor_id}"},
                "resolve_after": "1h",
            }
        ],
        "route": {"receiver": "r", "group_by": ["site", "zone"], "group_wait": "0s"},
        "receivers": [
            {
                "name": "r",
                "webhook_configs": [{"url": "http://x/1"}, {"url": "http://x/2", "send_resolved": False}],
                "kafka_configs": [{"topic": "alerts"}],
            }
        ],
    }
    config = parse_config(copy.deepcopy(data), "t.yaml", {})
    tables = {k: {} for k in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors", "silences")}
    proc = Processor(config, AlertsSettings(), **tables)
    record = {
        "sensor_id": "s1", "ts": 1, "site": "a", "zone": "z", "utility": "w", "asset": "p", "score": 1.0,
        "threshold": 0.5, "model_version": "1", "reason": "r",
    }  # fmt: skip
    obs = config.rules[0].evaluate(record)
    changes = proc.handle({"type": "obs", "obs": [obs.to_dict()]}, partition=1, now_s=1000.0)
    assert list(changes.alerts) == [obs.fingerprint] and tables["alerts"][obs.fingerprint]["partition"] == 1
    assert proc.handle({"type": "tick"}, partition=0, now_s=1001.0).dispatch == []  # not this partition's
    changes = proc.handle({"type": "tick"}, partition=1, now_s=1001.0)
    assert sorted(e["integration"] for e in changes.dispatch) == ["kafka/0", "webhook/0", "webhook/1"]
    assert proc.handle({"type": "tick"}, partition=1, now_s=1001.1).dispatch == []  # outbox rescan waits 1 s
    assert len(proc.handle({"type": "tick"}, partition=1, now_s=1002.2).dispatch) == 3  # still undelivered
    assert len({e["notification"]["id"] for e in changes.dispatch}) == 3
    for entry in changes.dispatch:
        proc.handle({"type": "result", "id": entry["id"], "outcome": "delivered"}, partition=1, now_s=1002.0)
    assert tables["outbox"] == {}
    assert proc.handle({"type": "bogus"}, partition=1).dispatch == []


def test_tokens_from_env_and_file(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# role token name\nadmin aaaaaaaaaaaaaaaaaaaa alice\n\nviewer bbbbbbbbbbbbbbbbbbbb\n")
    store = TokenStore.load("T", str(f), env={"T": "operator:cccccccccccccccccccc:bob"})
    assert store.authenticate("Bearer cccccccccccccccccccc").name == "bob"
    alice = store.authenticate("Bearer aaaaaaaaaaaaaaaaaaaa")
    assert alice.role == "admin" and alice.can("operator")
    viewer = store.authenticate("Bearer bbbbbbbbbbbbbbbbbbbb")
    assert viewer.can("viewer") and not viewer.can("operator")
    assert store.authenticate("Bearer nope") is None and store.authenticate(None) is None
    assert store.authenticate("aaaaaaaaaaaaaaaaaaaa") is None  # scheme required
    assert "aaaa" not in repr(store)
    for bad, msg in [
        ("root:cccccccccccccccccccc", "unknown role"),
        ("admin:short", "shorter than 16"),
        ("x", "role:token"),
    ]:
        with pytest.raises(AuthConfigError, match=msg):
            TokenStore.load("T", env={"T": bad})


def test_overlay_reads_its_writes_and_flushes_each_key_once():
    from services.alerts.overlay import Overlay

    class Counting(dict):
        writes = 0

        def __setitem__(self, k, v):
            Counting.writes += 1
            super().__setitem__(k, v)

    table = Counting(a=1, b=2)
    Counting.writes = 0
    o = Overlay(table)
    for i in range(100):
        o["a"] = i
    o["c"] = 3
    del o["b"]
    assert o["a"] == 99 and "b" not in o and o.get("b") is None and sorted(o) == ["a", "c"] and len(o) == 2
    assert table == {"a": 1, "b": 2}  # nothing written yet
    with pytest.raises(KeyError):
        del o["zzz"]
    assert o.flush() == 3
    assert table == {"a": 99, "c": 3} and Counting.writes == 2


def test_schedule_survives_batches_and_wakes_a_new_group():
    """The app runs a fresh Processor over overlays per batch with one shared Schedule."""
    from services.alerts.overlay import Overlay
    from services.alerts.pipeline import Schedule

    data = {
        "rules": [{"name": "A", "source": "anomaly", "when": ["score >= threshold"], "labels": {"site": "{site}", "zone": "{zone}"}}],
        "route": {"receiver": "r", "group_by": ["site", "zone"], "group_wait": "1s"},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    config = parse_config(data, "t.yaml", {})
    tables = {k: {} for k in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")}
    schedule = Schedule()

    def batch(value, now):
        overlays = {k: Overlay(v) for k, v in tables.items()}
        changes = Processor(config, AlertsSettings(), **overlays, silences={}, schedule=schedule).handle(value, 0, now)
        for o in overlays.values():
            o.flush()
        return changes

    assert batch({"type": "tick"}, 1000.0).dispatch == [] and schedule.next_flush[0] == float("inf")
    record = {"sensor_id": "s", "ts": 1, "site": "a", "zone": "z", "utility": "w", "asset": "p", "score": 1.0,
              "threshold": 0.5, "model_version": "1", "reason": "r"}  # fmt: skip
    batch({"type": "obs", "obs": [config.rules[0].evaluate(record).to_dict()]}, 1000.5)
    assert schedule.next_flush[0] == 1001.5
    assert batch({"type": "tick"}, 1001.0).dispatch == []
    assert len(batch({"type": "tick"}, 1001.6).dispatch) == 1
    schedule.reset()  # a rebalance: the next tick scans again and finds the group's next flush
    batch({"type": "tick"}, 1001.7)
    assert schedule.next_flush[0] == 1001.6 + 300


def test_a_partition_needs_a_tick_only_when_a_timer_is_due():
    """Ticks go only to partitions the schedule says need a look: an empty outbox is not rescanned every second."""
    from services.alerts.pipeline import Schedule

    data = {
        "rules": [{"name": "A", "source": "anomaly", "when": ["score >= threshold"], "labels": {"site": "{site}", "zone": "{zone}"}, "resolve_after": "1h"}],
        "route": {"receiver": "r", "group_by": ["site", "zone"], "group_wait": "0s"},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    config = parse_config(data, "t.yaml", {})
    tables = {k: {} for k in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")}
    schedule = Schedule()
    settings = AlertsSettings(outbox_scan_interval_s=1.0, sweep_interval_s=30.0)
    proc = Processor(config, settings, **tables, silences={}, schedule=schedule)
    assert schedule.due(0, 1000.0)  # never scanned (a start, a rebalance): due at once
    proc.handle({"type": "tick"}, 0, 1000.0)
    assert not schedule.due(0, 1001.5) and not schedule.due(0, 1029.9)  # nothing waits: only the sweep
    assert schedule.due(0, 1030.0)
    record = {"sensor_id": "s", "ts": 1, "site": "a", "zone": "z", "utility": "w", "asset": "p", "score": 1.0,
              "threshold": 0.5, "model_version": "1", "reason": "r"}  # fmt: skip
    proc.handle({"type": "obs", "obs": [config.rules[0].evaluate(record).to_dict()]}, 0, 1002.0)
    changes = proc.handle({"type": "tick"}, 0, 1002.0)  # group_wait 0: flushed, one entry in the outbox
    [entry] = changes.dispatch
    assert not schedule.due(0, 1002.5) and schedule.due(0, 1003.0)  # an entry waits: rescanned after 1 s
    assert proc.handle({"type": "tick"}, 0, 1003.0).dispatch == [entry]  # still undelivered: sent again
    proc.handle({"type": "result", "id": entry["id"], "outcome": "delivered"}, 0, 1003.5)
    proc.handle({"type": "tick"}, 0, 1004.0)  # the rescan finds the outbox empty: no more looks for it
    assert tables["outbox"] == {} and not schedule.due(0, 1010.0)


def test_a_noisy_alert_is_rewritten_at_most_every_coalesce_seconds():
    data = {
        "rules": [{"name": "A", "source": "anomaly", "when": ["score >= threshold"], "labels": {"site": "{site}", "zone": "{zone}"},
                   "resolve_after": "10m"}],
        "route": {"receiver": "r", "group_by": ["site", "zone"]},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    config = parse_config(data, "t.yaml", {})
    tables = {k: {} for k in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors", "silences")}
    proc = Processor(config, AlertsSettings(coalesce_s=5.0), **tables)
    record = {"sensor_id": "s", "ts": 1, "site": "a", "zone": "z", "utility": "w", "asset": "p", "score": 1.0,
              "threshold": 0.5, "model_version": "1", "reason": "r"}  # fmt: skip
    obs = config.rules[0].evaluate(record).to_dict()
    writes = [
        bool(proc.handle({"type": "obs", "obs": [obs]}, 0, now_s=1000.0 + t).alerts) for t in (0, 1, 2, 4, 5.5, 6)
    ]
    assert writes == [True, False, False, False, True, False]
    [alert] = tables["alerts"].values()
    assert alert["count"] == 5 and alert["last_seen"] == 1_005_500  # the skipped hits are counted at the next write
    proc.handle({"type": "obs", "obs": [{**obs, "resolve": True}]}, 0, now_s=1006.5)
    [alert] = tables["alerts"].values()
    assert alert["status"] == "resolved"  # a state change is never coalesced away


def test_quarantine_counts_fire_and_the_sweep_forgets_old_windows_of_its_partition_only():
    data = {
        "rules": [{"name": "Q", "source": "quarantine", "when": ["count >= 5"], "labels": {"source": "{source}"}},
                  {"name": "A", "source": "anomaly", "when": ["score >= threshold"], "labels": {"site": "{site}", "zone": "{zone}"},
                   "rate_limit": {"max_alerts": 1, "per": "10s", "collapse_by": ["site", "zone"]}}],
        "route": {"receiver": "r", "group_by": ["site", "zone"]},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    config = parse_config(data, "t.yaml", {})
    tables = {k: {} for k in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors", "silences")}
    proc = Processor(config, AlertsSettings(quarantine_window_s=60), **tables)
    q = {"type": "qcount", "source": "mqtt", "window_start": 960_000}
    assert proc.handle({**q, "n": 3}, 0, now_s=1000.0).alerts == {}
    [alert] = proc.handle({**q, "n": 2}, 0, now_s=1001.0).alerts.values()
    assert alert["labels"] == {"alertname": "Q", "source": "mqtt"} and alert["status"] == "firing"
    record = {"sensor_id": "s", "ts": 1, "site": "a", "zone": "z", "utility": "w", "asset": "p", "score": 1.0,
              "threshold": 0.5, "model_version": "1", "reason": "r"}  # fmt: skip
    proc.handle({"type": "obs", "obs": [config.rules[1].evaluate(record).to_dict()]}, 0, now_s=1001.0)
    tables["counters"]["other|0"] = {"n": 1, "partition": 1, "window_start": 0}
    assert len(tables["limits"]) == 1 and len(tables["counters"]) == 2
    proc.handle({"type": "tick"}, 0, now_s=1200.0)
    assert list(tables["counters"]) == ["other|0"] and tables["limits"] == {}  # partition 1's key is not ours


def test_email_header_values_carry_no_control_characters():
    """A label with CR/LF (or any control character) cannot add a header or break the message."""
    evil = copy.deepcopy(NOTIFICATION)
    evil["groupLabels"] = {"zone": "z1\r\nBcc: thief@evil.test\x00\x1b[2J\u2028x"}
    evil["id"] = "n-1\r\nX-Injected: yes"
    cfg = EmailConfig(to=("ops@x",), sender="fw@x\n", host="h", port=25)
    msg = email_message(cfg, evil)
    head = msg.as_bytes().split(b"\n\n", 1)[0]
    assert b"\nBcc:" not in head and b"\nX-Injected:" not in head and b"\r" not in head
    for name in ("Subject", "From", "X-Flowwatch-Notification-Id", "Message-ID"):
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in msg[name]), name
    assert msg["Subject"] == "[flowwatch] [FIRING:3] zone=z1 Bcc: thief@evil.test [2J x"


async def test_an_unexpected_error_is_retried_then_given_up_never_forever():
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async def broken(n: int) -> None:
        raise KeyError("annotations")

    with pytest.raises(DeliveryError) as info:
        await with_retries(broken, max_attempts=3, base_s=0.01, cap_s=0.01, sleep=sleep)
    assert info.value.attempts == 3 and info.value.retryable and "unexpected KeyError" in str(info.value)
    assert len(sleeps) == 2


def test_a_client_error_never_carries_the_receivers_url_beyond_its_origin() -> None:
    # A Slack-style webhook URL is the credential; aiohttp puts it in a proxy's 407 and in InvalidURL's text.
    url = "https://hooks.example.com/services/T000/B000/SECRETTOKEN"

    class Request:
        real_url = URL(url)
        method = "POST"
        headers: dict[str, str] = {}

    proxy = aiohttp.ClientHttpProxyError(Request(), (), status=407, message="Proxy Authentication Required")
    assert "SECRETTOKEN" in str(proxy)  # what the delivery error used to say
    errors = [
        client_error(proxy, url),
        client_error(aiohttp.InvalidURL(url), url),
        client_error(aiohttp.ClientConnectionError(f"cannot reach {url}"), url),
    ]
    assert not any("SECRETTOKEN" in e or "/services/" in e for e in errors)
    assert errors[0] == "ClientHttpProxyError: 407 Proxy Authentication Required"
    assert errors[2] == "ClientConnectionError: cannot reach https://hooks.example.com"
