"""Receivers: signed webhooks (Alertmanager webhook v4 payload), email over SMTP, and retries.

A failed attempt raises :class:`DeliveryError` saying whether another attempt can
help: 5xx, 429, timeouts and connection errors can; any other 4xx (and SMTP 5xx)
cannot, so they go to the DLQ at once instead of hammering a receiver that said no.
Any other exception of an attempt is a retryable :class:`DeliveryError` too (see
:func:`with_retries`): after the last attempt it ends in the DLQ, never retried forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import os
import random
import re
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiohttp
import certifi
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from services.alerts.config import EmailConfig, WebhookConfig
from shared.codec import dumps

SIGNATURE_HEADER = "X-Flowwatch-Signature"
TIMESTAMP_HEADER = "X-Flowwatch-Timestamp"
ID_HEADER = "Idempotency-Key"
#: Most of a receiver's answer that is read: enough for the error's snippet; a longer body is not waited for.
MAX_ANSWER_BYTES = 64 * 1024


class DeliveryError(Exception):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC of ``<timestamp>.<body>``; the timestamp lets receivers refuse replays."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (documented in docs/alerts.md); used by the tests."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_payload(notification: dict[str, Any], max_alerts: int = 0) -> dict[str, Any]:
    payload = {k: v for k, v in notification.items() if k != "id"}
    alerts = notification["alerts"]
    if max_alerts and len(alerts) > max_alerts:
        payload["alerts"] = alerts[:max_alerts]
        payload["truncatedAlerts"] = len(alerts) - max_alerts
    return payload


def trusted_cas() -> ssl.SSLContext:
    """The CAs a webhook's certificate is checked against: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set, else certifi's.

    What httpx (the client before, with its defaults) trusted, so a receiver reachable then is reachable now.
    """
    cafile, capath = os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    if cafile is None and capath is None:
        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=capath)


class WebhookClient:
    """The HTTP client of every webhook delivery: one aiohttp session, opened on first use (in the running loop).

    httpx's connection pool cost ~2-4 ms of CPU per POST here (it checks every pooled connection's socket for
    each request), aiohttp's ~0.3-0.5 ms (client and server in one process, bench/bench_alerts.py): the
    deliveries were the largest share of the worker's CPU after a busy round and most of what a trickle costs.
    Redirects are not followed (a 3xx is an answer, not a success); a proxy from the environment
    (``HTTP(S)_PROXY``, ``NO_PROXY``) is used, as it was, looked up once per URL (aiohttp's ``trust_env`` reads the
    environment and parses ``~/.netrc`` on every request).
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=100, ssl=trusted_cas())
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def proxy(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy (and its credentials) the environment names for ``url``; (None, None) for none."""
        found = self._proxies.get(url)
        if found is None:
            try:
                found = get_env_proxy_for_url(URL(url))
            except (LookupError, ValueError):
                found = (None, None)
            if len(self._proxies) < 1000:  # one per receiver URL; bounded all the same
                self._proxies[url] = found
        return found

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client_error(exc: aiohttp.ClientError, url: str) -> str:
    """What went wrong, without the receiver's URL beyond its origin: a webhook URL is often its credential
    (Slack-style), and aiohttp puts it in some errors' text (a proxy's 407, an invalid URL), which goes to the
    logs and the dead letters."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{name}: the receiver's URL is not valid"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{name}: {exc.status} {exc.message}"
    text = str(exc)
    try:
        parsed = URL(url)
        forms, origin = {url, str(parsed)}, str(parsed.origin())
    except ValueError:
        forms, origin = {url}, "the receiver"
    for form in forms:
        if form:
            text = text.replace(form, origin)
    return f"{name}: {text}" if text else name


async def send_webhook(client: WebhookClient, cfg: WebhookConfig, notification: dict[str, Any]) -> int:
    body = dumps(webhook_payload(notification, cfg.max_alerts))
    ts = str(int(time.time()))
    headers = {
        **cfg.headers,
        "Content-Type": "application/json",
        "User-Agent": "flowwatch-alerts/1",
        ID_HEADER: notification["id"],
        TIMESTAMP_HEADER: ts,
    }
    if cfg.secret:
        headers[SIGNATURE_HEADER] = sign(cfg.secret, ts, body)
    proxy, proxy_auth = client.proxy(cfg.url)
    try:
        async with client.session().post(
            cfg.url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
        ) as resp:
            # Read (a bounded part of) the answer within the timeout: a connection read to its end is used again.
            answer = await resp.content.read(MAX_ANSWER_BYTES)
            status = resp.status
    except TimeoutError as exc:
        raise DeliveryError(f"timeout after {cfg.timeout_s}s: {type(exc).__name__}", True) from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(client_error(exc, cfg.url), True) from None
    if status < 300:
        return status
    snippet = answer.decode("utf-8", "replace")[:200].replace("\n", " ")
    retryable = status >= 500 or status in (408, 429)
    raise DeliveryError(f"HTTP {status}: {snippet}", retryable)


# ----------------------------------------------------------------------------------------------- email

#: Control characters (C0, DEL, C1) and Unicode line/paragraph separators: never allowed in a header value,
#: where a CR or LF from a label would start a new header (header injection) or fail the whole message.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header_value(text: str, limit: int = 900) -> str:
    """``text`` fit for one email header: control characters become one space, length bounded."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def email_message(cfg: EmailConfig, notification: dict[str, Any]) -> EmailMessage:
    alerts = notification["alerts"]
    firing = [a for a in alerts if a["status"] == "firing"]
    resolved = [a for a in alerts if a["status"] != "firing"]
    glabels = " ".join(f"{k}={v}" for k, v in sorted(notification["groupLabels"].items()))
    status = notification["status"].upper()
    subject = f"{cfg.subject_prefix} [{status}:{len(firing) or len(resolved)}] {glabels}".strip()

    def lines(a: dict[str, Any]) -> list[str]:
        ann = a["annotations"]
        out = [f"- [{a['status']}] {ann.get('summary') or a['labels'].get('alertname', '')}"]
        if ann.get("description"):
            out.append(f"  {ann['description']}")
        out.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())))
        out.append(f"  since: {a['startsAt']}" + (f"  until: {a['endsAt']}" if a["status"] != "firing" else ""))
        if ann.get("runbook_url"):
            out.append(f"  runbook: {ann['runbook_url']}")
        if a.get("generatorURL"):
            out.append(f"  details: {a['generatorURL']}")
        return out

    text = [f"{len(firing)} firing, {len(resolved)} resolved — group {glabels or notification['groupKey']}", ""]
    for a in alerts:
        text += lines(a)
    if notification.get("truncatedAlerts"):
        text.append(f"... and {notification['truncatedAlerts']} more")

    def row(a: dict[str, Any]) -> str:
        ann = a["annotations"]
        runbook = ann.get("runbook_url", "")
        link = f'<a href="{html.escape(runbook)}">runbook</a>' if runbook else ""
        return (
            f"<tr><td>{html.escape(a['status'])}</td>"
            f"<td><b>{html.escape(ann.get('summary') or a['labels'].get('alertname', ''))}</b><br>"
            f"{html.escape(ann.get('description', ''))}</td>"
            f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in sorted(a['labels'].items())))}</td>"
            f"<td>{html.escape(a['startsAt'])}</td><td>{link}</td></tr>"
        )

    body_html = (
        f"<html><body><h2>{html.escape(subject)}</h2>"
        "<table border='1' cellpadding='4'><tr><th>status</th><th>alert</th><th>labels</th><th>since</th><th></th></tr>"
        + "".join(row(a) for a in alerts)
        + "</table></body></html>"
    )
    msg = EmailMessage()
    msg["Subject"] = header_value(subject)
    msg["From"] = header_value(cfg.sender)
    msg["To"] = header_value(", ".join(cfg.to), 4000)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(idstring=header_value(notification["id"], 200), domain="flowwatch")
    msg["X-Flowwatch-Notification-Id"] = header_value(notification["id"], 200)
    msg.set_content("\n".join(text))
    msg.add_alternative(body_html, subtype="html")
    return msg


def _send_email_sync(cfg: EmailConfig, msg: EmailMessage, tls_context: ssl.SSLContext | None) -> None:
    ctx = tls_context or ssl.create_default_context(cafile=cfg.ca_file or None)
    try:
        if cfg.tls == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=ctx)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with smtp:
            smtp.ehlo()
            if cfg.tls == "starttls":
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(msg)
    except smtplib.SMTPResponseException as exc:
        # 4xx is "try again later"; 5xx (bad auth, unknown mailbox) will not get better.
        raise DeliveryError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", 400 <= exc.smtp_code < 500) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"SMTP recipients refused: {sorted(exc.recipients)}", False) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"SMTP {type(exc).__name__}: {exc}", True) from None


async def send_email(cfg: EmailConfig, notification: dict[str, Any], tls_context: ssl.SSLContext | None = None) -> None:
    # smtplib blocks; a thread keeps the event loop (and Faust's heartbeats) running.
    await asyncio.to_thread(_send_email_sync, cfg, email_message(cfg, notification), tls_context)


# ----------------------------------------------------------------------------------------------- retries


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    top = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, top)


async def with_retries(
    attempt_fn: Callable[[int], Awaitable[Any]],
    *,
    max_attempts: int,
    base_s: float,
    cap_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_failure: Callable[[int, DeliveryError], None] | None = None,
) -> int:
    """Run ``attempt_fn(attempt)`` until it succeeds; returns the attempts used or raises the last error."""
    attempt = 0
    while True:
        attempt += 1
        try:
            try:
                await attempt_fn(attempt)
            except (DeliveryError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise DeliveryError(f"unexpected {type(exc).__name__}: {exc}", True) from exc
            return attempt
        except DeliveryError as exc:
            if on_failure:
                on_failure(attempt, exc)
            if not exc.retryable or attempt >= max_attempts:
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
        await sleep(backoff_delay(attempt, base_s, cap_s))
