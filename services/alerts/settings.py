"""Settings of the alerts service, read from ``FLOWWATCH_ALERTS_*`` environment variables.

Secrets (API tokens, webhook HMAC secrets, SMTP passwords) are never values here:
these settings only name the environment variable or file that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_ALERTS_"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "alerts.yaml"


@dataclass(frozen=True)
class AlertsSettings(ServiceSettings):
    """Runtime settings of the alerts service. Read with :meth:`from_env`."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    config_path: Path = _doc(DEFAULT_CONFIG, "Rules, routing, inhibition, receivers and mute intervals (YAML).")
    tick_interval_s: float = _doc(
        1.0, "How often group timers, resolve timeouts and the delivery outbox are evaluated, in seconds."
    )
    tokens_env: str = _doc(
        "FLOWWATCH_ALERTS_TOKENS",
        "Name of the env var holding API tokens as `role:token[:name]` entries separated by commas.",
    )
    tokens_file: str = _doc("", "File with API tokens, one `role token [name]` per line (`#` comments).")
    external_url: str = _doc("", "Base URL of this service as operators reach it (webhook `externalURL`).")
    batch_size: int = _doc(1000, "Max input records evaluated per micro-batch.")
    batch_within_s: float = _doc(
        0.05,
        "Longest an idle stage sleeps between checks for a stop, in seconds. A micro-batch is whatever has "
        "arrived: nothing waits to fill one (shared.streaming.take_ready).",
    )
    max_attempts: int = _doc(5, "Delivery attempts per notification before it goes to alerts.dlq.")
    backoff_base_s: float = _doc(0.5, "First retry delay; doubles each attempt, with full jitter.")
    backoff_max_s: float = _doc(30.0, "Upper bound of one retry delay.")
    lease_s: float = _doc(
        60.0,
        "Redis lease on a notification being delivered, renewed every lease_s/3 while its sender lives: after a "
        "rebalance the new partition owner waits instead of sending concurrently; after a crash it retries once "
        "the lease lapses.",
    )
    done_ttl_s: int = _doc(7 * 24 * 3600, "How long Redis remembers that a notification was delivered.")
    resolved_retention_s: float = _doc(
        3600.0, "How long a resolved alert stays in the table and the API before it is forgotten."
    )
    coalesce_s: float = _doc(
        5.0,
        "An alert that only keeps firing is re-written (last_seen, count) at most this often, capped at a tenth "
        "of its quiet period; 0 writes it on every batch.",
    )
    sweep_interval_s: float = _doc(
        30.0,
        "How often each partition's alerts are swept (quiet alerts resolved, long-resolved ones forgotten); "
        "alerts in a group are also resolve-checked whenever their group flushes.",
    )
    outbox_scan_interval_s: float = _doc(
        1.0, "How often undelivered outbox entries are looked at again (new ones are sent at once)."
    )
    quarantine_window_s: float = _doc(60.0, "Window in which quarantined readings are counted for rate rules.")
    silence_max_count: int = _doc(
        1000, "Most silences not yet expired at one time; creating one more is refused (409)."
    )
    silence_max_matchers: int = _doc(32, "Most matchers in one silence.")
    silence_max_regex_matchers: int = _doc(
        256,
        "Most regular-expression matchers in all silences not yet expired, together (every alert may be matched "
        "against each; one match costs tens of microseconds); beyond it a new or changed silence is refused (409).",
    )
    silence_max_comment: int = _doc(2000, "Longest silence comment, in characters.")
    silence_max_duration_s: float = _doc(
        366 * 24 * 3600.0, "Longest a silence may last (endsAt - startsAt), in seconds."
    )
    silence_retention_s: float = _doc(
        5 * 24 * 3600.0, "How long an expired silence stays listed before it is garbage-collected, in seconds."
    )
    silence_gc_interval_s: float = _doc(60.0, "How often expired silences past their retention are looked for.")
    session_timeout_s: float = _doc(
        60.0,
        "Kafka consumer session timeout: how long a crashed worker keeps its partitions before another takes over.",
    )
