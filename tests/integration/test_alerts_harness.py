"""Harness for the alerts integration tests (no tests here): a local webhook server, an SMTP sink, helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiosmtpd.controller import Controller

from shared.settings import Settings
from tests.helpers import ServiceProcess, free_port

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789abc",
}
TOKENS_ENV = ",".join(f"{role}:{tok}:{role}-user" for role, tok in TOKENS.items())

# One rule for every anomaly at or above its threshold, grouped per site and zone, to a webhook "hook".
_ANOMALY_CONFIG = """
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {{site: "{{site}}", zone: "{{zone}}", sensor: "{{sensor_id}}", severity: "{{severity}}"}}
    annotations: {{summary: "Anomaly on {{sensor_id}}"}}
    resolve_after: {resolve_after}
route:
  receiver: hook
  group_by: [site, zone, alertname]
  group_wait: {group_wait}
  group_interval: 1s
  repeat_interval: 1h
{routes}receivers:
  - name: hook
    webhook_configs: [{{url: "{hook}"{hook_options}}}]
{receivers}"""


def anomaly_config(
    hook: str,
    *,
    group_wait: str = "0s",
    resolve_after: str = "10m",
    hook_options: str = "",
    routes: str = "",
    receivers: str = "",
) -> str:
    """The alerts config most tests run: ``hook_options`` adds to the webhook's settings (``, timeout: 20s``);
    ``routes`` (under ``route:``) and ``receivers`` (after ``hook``) are YAML lines, indented, for more."""
    return _ANOMALY_CONFIG.format(
        hook=hook,
        group_wait=group_wait,
        resolve_after=resolve_after,
        hook_options=hook_options,
        routes=routes,
        receivers=receivers,
    )


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return orjson.loads(self.body)


@dataclass
class Behaviour:
    """How one path answers: fail the first ``fail_first`` requests with ``fail_status``, hold some, etc."""

    fail_first: int = 0
    fail_status: int = 503
    always: int | None = None
    hold_first_s: float = 0.0
    hold_s: float = 0.0
    on_hit: Callable[[Hit], None] | None = None
    seen: int = 0


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        b = self.behaviours.setdefault(request.path, Behaviour())
        b.seen += 1
        status = 200
        if b.always is not None:
            status = b.always
        elif b.seen <= b.fail_first:
            status = b.fail_status
        hit = Hit(request.path, dict(request.headers), body, time.monotonic(), status)
        self.hits.append(hit)
        if b.on_hit:
            b.on_hit(hit)
        if b.seen == 1 and b.hold_first_s:
            await asyncio.sleep(b.hold_first_s)
        elif b.hold_s:
            await asyncio.sleep(b.hold_s)
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.handler = _Collect()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[Message]:
        return self.handler.messages

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()


async def until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alerts_process(settings: Settings, config_path: Path, **env: str) -> ServiceProcess:
    """An alerts worker with short timers, the test's config and API tokens."""
    extra = {
        "FLOWWATCH_ALERTS_CONFIG_PATH": str(config_path),
        "FLOWWATCH_ALERTS_TOKENS": TOKENS_ENV,
        "FLOWWATCH_ALERTS_TICK_INTERVAL_S": "0.2",
        "FLOWWATCH_ALERTS_BACKOFF_BASE_S": "0.1",
        "FLOWWATCH_ALERTS_BACKOFF_MAX_S": "0.5",
        "FLOWWATCH_ALERTS_MAX_ATTEMPTS": "4",
        "FLOWWATCH_ALERTS_LEASE_S": "4",
        "FLOWWATCH_ALERTS_SESSION_TIMEOUT_S": "8",
        "FLOWWATCH_ALERTS_BATCH_WITHIN_S": "0.02",
        **env,
    }
    return ServiceProcess("alerts", settings, extra_env=extra)


def anomaly(sensor: str, zone: str, site: str = "s1", **kw: Any) -> dict[str, Any]:
    return {
        "sensor_id": sensor,
        "ts": int(time.time() * 1000),
        "site": site,
        "zone": zone,
        "utility": "water",
        "asset": "pipe",
        "score": 0.93,
        "threshold": 0.5,
        "model_version": "if-3",
        "reason": "pressure dropped 40% in 2 minutes",
        "severity": "warning",
        **kw,
    }


def risk(zone: str, probability: float, incident: str = "leak", site: str = "s1") -> dict[str, Any]:
    return {
        "site": site,
        "zone": zone,
        "utility": "water",
        "ts": int(time.time() * 1000),
        "horizon_s": 900,
        "probability": probability,
        "incident_type": incident,
        "model_version": "gbm-2",
    }
