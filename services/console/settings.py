"""Settings of the console service, read from ``FLOWWATCH_CONSOLE_*`` environment variables.

The common settings (broker, topics, web port, API tokens, Redis, ...) are ``shared.settings.Settings``;
these are the knobs only the console has. ``python -m services.console settings`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_CONSOLE_"


@dataclass(frozen=True)
class ConsoleSettings(ServiceSettings):
    """Where the console finds its users and the other services, and how it guards logins and the live feed."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    database_url: str = _doc(
        "postgresql://postgres@127.0.0.1:5432/flowwatch",
        "PostgreSQL URL of the users, sessions and report triage (the history database; its migrations create the "
        "tables). A secret when it holds a password: never logged.",
        secret=True,
    )
    pool_size: int = _doc(4, "PostgreSQL connections kept for the API.")
    migrate_on_start: bool = _doc(
        True, "Apply the history store's pending migrations (they hold the console's tables) at start."
    )
    history_url: str = _doc("http://127.0.0.1:8085", "Base URL of the history API.")
    alerts_url: str = _doc("http://127.0.0.1:8084", "Base URL of the alerts API.")
    service_token: str = _doc(
        "",
        "Bearer token (operator or admin) the console sends to the history and alerts APIs; empty: the first "
        "admin, else operator, token of FLOWWATCH_API_TOKENS. Its name must be in FLOWWATCH_API_DELEGATES so that "
        "acks, silences and verdicts are recorded as the session's user.",
        secret=True,
    )
    upstream_timeout_s: float = _doc(10.0, "Timeout (seconds) of one call to the history or alerts API.")
    metrics_targets: str = _doc(
        "ingest=http://127.0.0.1:8081,detector=http://127.0.0.1:8082,forecaster=http://127.0.0.1:8083,"
        "alerts=http://127.0.0.1:8084,history=http://127.0.0.1:8085",
        "The services whose /metrics the pipeline health view reads: `name=url`, comma separated.",
    )
    network_file: str = _doc("", "Network description (YAML/JSON, the simulator's format); empty: the default network.")
    web_dist: str = _doc("", "Directory of the built front end; empty: services/console/web/dist.")
    secure_cookies: bool = _doc(False, "Mark the session cookie Secure (only sent over HTTPS): on behind TLS.")
    session_ttl_s: float = _doc(12 * 3600.0, "A session ends this many seconds after its last use.")
    login_attempts: int = _doc(
        10, "Failed logins allowed per client address and per username within `login_window_s`; more get 429."
    )
    login_window_s: float = _doc(300.0, "The window (seconds) of the login rate limit.")
    report_limit: int = _doc(5, "Public leak reports accepted per client address within `report_window_s`.")
    report_window_s: float = _doc(3600.0, "The window (seconds) of the public report rate limit.")
    live_queue: int = _doc(
        1000, "Live updates queued per SSE client; a client that falls further behind loses its oldest ones."
    )
    live_max_clients: int = _doc(500, "Most SSE clients one replica serves at once; more get 503.")
    live_heartbeat_s: float = _doc(15.0, "Seconds between heartbeat comments on an idle SSE stream.")
    trust_forwarded_for: bool = _doc(
        False, "Take the client address from X-Forwarded-For (only behind a proxy that sets it) for rate limits."
    )

    def targets(self) -> dict[str, str]:
        out = {}
        for entry in (e.strip() for e in self.metrics_targets.split(",") if e.strip()):
            name, _, url = entry.partition("=")
            out[name.strip()] = url.strip().rstrip("/")
        return out
