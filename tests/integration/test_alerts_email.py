"""Email delivery against a local aiosmtpd server: STARTTLS with AUTH, implicit TLS, and refusals.

No worker is needed: this drives the receiver the dispatcher uses, over real sockets
on 127.0.0.1 with a throwaway self-signed certificate.
"""

from __future__ import annotations

import ssl
import subprocess
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from services.alerts.config import EmailConfig
from services.alerts.delivery import DeliveryError, send_email
from tests.helpers import free_port

NOTIFICATION = {
    "id": "n-email-1",
    "version": "4",
    "groupKey": 'root:{zone="z1"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "mail",
    "groupLabels": {"zone": "z1", "alertname": "ZoneIncidentRisk"},
    "commonLabels": {"zone": "z1"},
    "commonAnnotations": {},
    "externalURL": "",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ZoneIncidentRisk", "zone": "z1", "kind": "leak"},
            "annotations": {"summary": "leak likely in z1", "runbook_url": "https://rb/leak"},
            "startsAt": "2026-01-01T00:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:8084/v1/alerts/abc",
            "fingerprint": "abc",
        }
    ],
}


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


class Sink:
    def __init__(self) -> None:
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"flowwatch" and auth_data.password == b"s3cret-pass"
    return AuthResult(success=ok, handled=False)


def server_context(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*map(str, cert))
    return ctx


async def test_starttls_with_auth_delivers_text_and_html(cert):
    sink = Sink()
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, tls_context=server_context(cert), require_starttls=True,
        auth_required=True, authenticator=authenticator,
    )  # fmt: skip
    controller.start()
    try:
        cfg = EmailConfig(
            to=("oncall@example.test",), sender="fw@example.test", host="127.0.0.1", port=port, tls="starttls",
            username="flowwatch", password="s3cret-pass", ca_file=str(cert[0]),
        )  # fmt: skip
        await send_email(cfg, NOTIFICATION)
        [(rcpts, msg)] = sink.messages
        assert rcpts == ["oncall@example.test"]
        assert msg["Subject"] == "[flowwatch] [FIRING:1] alertname=ZoneIncidentRisk zone=z1"
        types = [p.get_content_type() for p in msg.walk()]
        assert "text/plain" in types and "text/html" in types

        wrong = EmailConfig(**{**cfg.__dict__, "password": "nope"})
        with pytest.raises(DeliveryError) as info:
            await send_email(wrong, NOTIFICATION)
        assert not info.value.retryable and "535" in str(info.value)  # bad credentials: no retry

        untrusted = EmailConfig(**{**cfg.__dict__, "ca_file": ""})
        with pytest.raises(DeliveryError) as info:
            await send_email(untrusted, NOTIFICATION)
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    finally:
        controller.stop()


async def test_implicit_tls(cert):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=server_context(cert))
    controller.start()
    try:
        cfg = EmailConfig(to=("a@example.test",), sender="fw@example.test", host="127.0.0.1", port=port, tls="tls",
                          ca_file=str(cert[0]))  # fmt: skip
        await send_email(cfg, NOTIFICATION)
        assert len(sink.messages) == 1
    finally:
        controller.stop()


async def test_unreachable_server_is_retryable():
    cfg = EmailConfig(to=("a@x",), sender="b@x", host="127.0.0.1", port=free_port(), tls="none", timeout_s=2)
    with pytest.raises(DeliveryError) as info:
        await send_email(cfg, NOTIFICATION)
    assert info.value.retryable


async def test_dispatcher_strips_header_injection_and_dead_letters_what_cannot_be_sent(settings):
    """Through the real dispatcher, real Redis and a real SMTP sink: a CR/LF in a label reaches the sink as one
    header with the text in it (no Bcc, no extra recipient); a notification the mailer cannot even build
    (an unexpected KeyError) is tried ``max_attempts`` times and lands in the DLQ once, never retried forever."""
    import asyncio
    import copy
    import types
    import uuid

    from services.alerts.config import Receiver
    from services.alerts.delivery import WebhookClient
    from services.alerts.dispatcher import Dispatcher, Integrations
    from services.alerts.settings import AlertsSettings
    from shared.cache import Cache

    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix)
    http = WebhookClient()
    dead: list[dict] = []
    results: list[dict] = []

    async def report(partition: int, value: dict) -> None:
        results.append(value)

    async def dead_letter(record: dict) -> None:
        dead.append(record)

    try:
        cfg = EmailConfig(to=("oncall@example.test",), sender="fw@example.test", host="127.0.0.1", port=port,
                          tls="none", timeout_s=5)  # fmt: skip
        config = types.SimpleNamespace(receivers={"mail": Receiver("mail", (), (cfg,), ())})
        asettings = AlertsSettings(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
        dispatcher = Dispatcher(
            asettings, Integrations(config, http, None), cache.client, cache.key("", uuid.uuid4().hex),
            report=report, dead_letter=dead_letter,
        )  # fmt: skip
        evil = copy.deepcopy(NOTIFICATION)
        evil["id"] = "n-evil"
        evil["groupLabels"] = {"zone": "z1\r\nBcc: thief@evil.test"}
        broken = copy.deepcopy(NOTIFICATION)
        broken["id"] = "n-broken"
        del broken["alerts"][0]["annotations"]
        for nid, notification in (("n-evil", evil), ("n-broken", broken)):
            dispatcher.submit({"id": nid, "receiver": "mail", "integration": "email/0", "partition": 0,
                               "created_at": 0.0, "notification": notification})  # fmt: skip
        for _ in range(200):
            if len(results) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(r["outcome"] for r in results) == ["delivered", "dlq"], results
        [(rcpts, msg)] = sink.messages
        assert rcpts == ["oncall@example.test"] and msg["Bcc"] is None
        assert msg["Subject"] == "[flowwatch] [FIRING:1] zone=z1 Bcc: thief@evil.test"
        [letter] = dead
        assert letter["id"] == "n-broken" and letter["attempts"] == 3 and "unexpected KeyError" in letter["error"]
        await asyncio.sleep(0.3)
        assert len(dead) == 1 and len(sink.messages) == 1 and not dispatcher.in_flight  # nothing keeps retrying
    finally:
        controller.stop()
        await http.aclose()
        await cache.close()
