"""Settings of the history service, read from ``FLOWWATCH_HISTORY_*`` environment variables.

The common settings (broker, topics, web port, API tokens, ...) are ``shared.settings.Settings``;
these are the knobs only history has. ``python -m services.history settings`` prints the table.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_HISTORY_"
DAY_S = 24 * 3600


@dataclass(frozen=True)
class HistorySettings(ServiceSettings):
    """Where history is kept, how the sink batches, how episodes are cut, how much is kept."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    database_url: str = _doc(
        "postgresql://postgres@127.0.0.1:5432/flowwatch",
        "PostgreSQL URL (`postgresql://user:password@host:port/db`). A secret when it holds a password: never logged.",
        secret=True,
    )
    db_sslmode: str = _doc(
        "", "TLS to PostgreSQL: empty or `disable`, `require`, `verify-ca` or `verify-full` (bring your own server)."
    )
    db_sslrootcert: str = _doc("", "CA bundle that verifies the PostgreSQL server (verify-ca, verify-full).")
    db_sslcert: str = _doc("", "Client certificate for mutual TLS to PostgreSQL.")
    db_sslkey: str = _doc("", "Client private key for mutual TLS to PostgreSQL.")
    pool_size: int = _doc(4, "Connections kept for API queries (the sink has one of its own).")
    migrate_on_start: bool = _doc(
        True, "Apply pending schema migrations when the worker starts (off when a Helm pre-upgrade Job runs them)."
    )
    batch_size: int = _doc(20_000, "Most messages (all topics together) written to PostgreSQL in one transaction.")
    batch_within_s: float = _doc(
        0.5, "Longest wait (seconds) to fill a batch; bounds how stale the history is at low rates."
    )
    episode_gap_s: float = _doc(
        300.0,
        "Anomalies of one sensor at most this many seconds apart belong to one episode; an episode closes when the "
        "stream has moved this far past its last anomaly.",
    )
    incident_threshold: float = _doc(
        0.5, "A zone's risk record at or above this probability (and not `normal`) is part of a zone incident."
    )
    incident_gap_s: float = _doc(900.0, "Risk records of one zone at most this many seconds apart form one incident.")
    quarantine_samples: int = _doc(
        3, "Payloads kept per minute, source and quarantine reason (the counts are always complete)."
    )
    sample_max_bytes: int = _doc(4096, "Longest quarantined payload kept in a sample (bytes; longer ones are cut).")
    partition_days: int = _doc(7, "Width (days) of one time partition of the time-indexed tables.")
    retention_days_rollups: int = _doc(400, "Days of one-minute reading rollups kept (older partitions are dropped).")
    retention_days_events: int = _doc(
        400, "Days of anomalies, aggregates, risk, alert log and sensor events kept (older partitions are dropped)."
    )
    retention_days_quarantine: int = _doc(30, "Days of quarantine counts and samples kept.")
    retention_days_episodes: int = _doc(
        730, "Days closed episodes, zone incidents, reports, feedback and labels are kept."
    )
    retention_check_s: float = _doc(3600.0, "How often (seconds) the retention job drops old partitions and rows.")
    max_range_days: int = _doc(400, "Longest time range one query may ask for (days); longer gets 400.")
    max_page_size: int = _doc(1000, "Largest page of a list endpoint (`limit`); larger gets 400.")
    max_points: int = _doc(20_000, "Most points (steps x series) one series or playback query may return.")
    max_csv_rows: int = _doc(1_000_000, "Most rows one CSV export streams.")
    query_timeout_s: float = _doc(30.0, "Statement timeout (seconds) of API queries.")

    def ssl_context(self) -> ssl.SSLContext | str | None:
        """What asyncpg's ``ssl`` argument needs for ``db_sslmode`` (None: as the URL says)."""
        mode = self.db_sslmode.strip().lower()
        if mode in ("", "disable"):
            return None if not mode else "disable"
        if mode not in ("require", "verify-ca", "verify-full"):
            raise ValueError(
                f"FLOWWATCH_HISTORY_DB_SSLMODE={self.db_sslmode!r}: use disable, require, verify-ca, verify-full"
            )
        context = ssl.create_default_context(cafile=self.db_sslrootcert or None)
        if mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif mode == "verify-ca":
            context.check_hostname = False
        if self.db_sslcert:
            context.load_cert_chain(self.db_sslcert, self.db_sslkey or None)
        return context
