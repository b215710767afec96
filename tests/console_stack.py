"""The console with what its screens need, as real processes on the real stack, for the browser tests and
the browser benchmark: history (PostgreSQL), alerts (a short-timer config) and the console itself on test-
prefixed topics and a scratch database; users made with the console's own CLI; Debian's Chromium driven by
Playwright (never a downloaded browser)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import API_TOKEN, ROOT, ServiceProcess, delete_topics, free_port
from tests.history_helpers import scratch_database

#: A quick ZoneIncidentRisk like the shipped rule (critical when p >= 0.7), routed only to the alerts topic.
ALERTS_CONFIG = """
global:
  resolve_timeout: 1h
rules:
  - name: ZoneIncidentRisk
    source: risk
    when: ["probability >= 0.7", "incident_type != normal"]
    resolve_when: ["probability < 0.3"]
    labels: {site: "{site}", zone: "{zone}", utility: "{utility}", kind: "{incident_type}", severity: critical}
    annotations: {summary: "{incident_type} likely in {site}/{zone} (p={probability:.0%})"}
    resolve_after: 1h
route:
  receiver: stream
  group_by: [site, zone, alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: stream
    kafka_configs: [{topic: alerts}]
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's chromium, installed by scripts/browser.sh when missing."""
    out = subprocess.run(["bash", str(ROOT / "scripts/browser.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"no browser: {out.stderr.strip()}")
    return out.stdout.strip()


@contextmanager
def chromium(playwright: Any) -> Iterator[Any]:
    """A headless Chromium, closed afterwards. Playwright gives every launch a new empty profile directory
    (it refuses a --user-data-dir of ours) and removes it at close."""
    browser = playwright.chromium.launch(
        executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True, timeout=60_000
    )
    try:
        yield browser
    finally:
        browser.close()


class ConsoleStack:
    """history + alerts + console on ``settings`` (a test prefix) and the scratch database ``db``."""

    def __init__(self, settings: Settings, db: str, alerts_config: str | None = None):
        self.settings = settings
        self.db = db
        work = Path(settings.data_dir)
        work.mkdir(parents=True, exist_ok=True)
        config = work / "alerts.yaml"
        # The shipped rules file may lack a `report` source; the test's own config is self-contained.
        config.write_text(ALERTS_CONFIG if alerts_config is None else alerts_config)
        common = {
            # The console's calls carry the session's user name: "tests" (the admin token) is a delegate.
            "FLOWWATCH_API_DELEGATES": "tests",
            "FLOWWATCH_HISTORY_DATABASE_URL": db,
        }
        self.history = ServiceProcess(
            "history", settings, extra_env={**common, "FLOWWATCH_HISTORY_BATCH_WITHIN_S": "0.1"}
        )
        self.alerts = ServiceProcess(
            "alerts",
            settings,
            extra_env={
                **common,
                "FLOWWATCH_ALERTS_CONFIG_PATH": str(config),
                "FLOWWATCH_ALERTS_TICK_INTERVAL_S": "0.2",
                "FLOWWATCH_ALERTS_BATCH_WITHIN_S": "0.02",
            },
        )
        self.console_env = {
            **common,
            "FLOWWATCH_CONSOLE_DATABASE_URL": db,
            "FLOWWATCH_CONSOLE_HISTORY_URL": self.history.url,
            "FLOWWATCH_CONSOLE_ALERTS_URL": self.alerts.url,
            "FLOWWATCH_CONSOLE_SERVICE_TOKEN": API_TOKEN,
            "FLOWWATCH_CONSOLE_METRICS_TARGETS": f"alerts={self.alerts.url},history={self.history.url}",
        }
        self.console = ServiceProcess("console", settings.replace(web_port=free_port()), extra_env=self.console_env)
        self.processes = [self.history, self.alerts, self.console]

    @property
    def url(self) -> str:
        return self.console.url

    def start(self, timeout: float = 180.0) -> ConsoleStack:
        for p in self.processes:
            p.start()
        for p in self.processes:
            p.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def add_user(self, name: str, role: str, password: str) -> None:
        """Through the console's CLI, as an administrator would (the password from the environment)."""
        env = {
            **os.environ,
            **self.console.env,
            "FLOWWATCH_CONSOLE_PASSWORD": password,
        }
        out = subprocess.run(
            [sys.executable, "-m", "services.console", "users", "add", name, "--role", role],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"users add {name} failed: {out.stdout}{out.stderr}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.service} ---\n{p.tail(30)}" for p in self.processes)


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from synchronous code. In a thread of its own: Playwright's sync API keeps an event
    loop running in the test's thread, and a second one cannot run there."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextmanager
def running_console(base: Settings, data_dir: Path, users: dict[str, tuple[str, str]]) -> Iterator[ConsoleStack]:
    """A ConsoleStack on a fresh topic prefix and scratch database, with ``users`` ({name: (role, password)})
    added; everything removed afterwards."""
    settings = base.replace(
        api_tokens=f"admin:{API_TOKEN}:tests",
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=data_dir,
        partitions=1,
    )
    loop = asyncio.new_event_loop()
    db_cm = scratch_database()
    try:
        loop.run_until_complete(create_all(settings, out=open(os.devnull, "w")))
        db = loop.run_until_complete(db_cm.__aenter__())
        cs = ConsoleStack(settings, db)
        try:
            cs.start()
            for name, (role, password) in users.items():
                cs.add_user(name, role, password)
            yield cs
        finally:
            cs.stop()
            loop.run_until_complete(db_cm.__aexit__(None, None, None))
    finally:
        loop.run_until_complete(delete_topics(settings))
        loop.close()
