"""PostgreSQL: connections, versioned migrations, time partitions and retention.

Migrations are the numbered ``migrations/NNN_name.sql`` files of this package, applied in
order inside one transaction each and recorded in ``schema_migrations``; an advisory lock
keeps two workers (or a worker and the Helm Job) from applying the same one twice. Running
``migrate`` again changes nothing.

Time-indexed tables are declaratively partitioned by range of their millisecond time column
into ``partition_days``-wide partitions named ``<table>_p<YYYYMMDD>`` (the first day). The sink
creates a partition before it writes into it; retention drops whole partitions, which costs
nothing compared with deleting rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg

from services.history.settings import DAY_S, HistorySettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DAY_MS = DAY_S * 1000
# Any constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK = 0x666C6F77

#: time-partitioned table -> the retention setting that bounds it
PARTITIONED = {
    "rollups": "retention_days_rollups",
    "anomalies": "retention_days_events",
    "aggregates": "retention_days_events",
    "risk": "retention_days_events",
    "alert_log": "retention_days_events",
    "sensor_events": "retention_days_events",
    "quarantine_counts": "retention_days_quarantine",
    "quarantine_samples": "retention_days_quarantine",
}
#: plain tables trimmed by row: table -> (time column, extra condition)
TRIMMED = {
    "episodes": ("end_ts", "state = 'closed'"),
    "incidents": ("end_ts", "state = 'closed'"),
    "reports": ("ts", "true"),
    "feedback": ("ts", "true"),
    "labels": ("end_ms", "true"),
    "aggregates_hourly": ("hour", "true"),
    "console_report_triage": ("ts", "true"),
}
_PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


async def connect(settings: HistorySettings, **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url, ssl=settings.ssl_context(), **kwargs)


async def pool(settings: HistorySettings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        ssl=settings.ssl_context(),
        min_size=1,
        max_size=max(1, settings.pool_size),
        command_timeout=settings.query_timeout_s,
    )


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration file, in order."""
    out = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        out.append((int(version), name, path.read_text()))
    return out


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations not applied yet; returns their versions (empty when up to date)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("history schema: applied migration %03d %s", version, name)
            applied.append(version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


def partition_start(ts_ms: int, days: int) -> int:
    """Start (ms) of the partition holding ``ts_ms``: partitions are ``days`` wide from the epoch."""
    width = days * DAY_MS
    return (ts_ms // width) * width


class Partitions:
    """Creates the time partitions the sink is about to write into, remembering those that exist."""

    def __init__(self, days: int) -> None:
        self.days = days
        self.known: set[tuple[str, int]] = set()

    async def load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY($1::text[])",
            list(PARTITIONED),
        )
        for r in rows:
            m = _PARTITION_NAME.match(r["relname"])
            if m:
                day = dt.datetime.strptime(m["day"], "%Y%m%d").replace(tzinfo=dt.UTC)
                self.known.add((m["table"], int(day.timestamp() * 1000)))

    async def ensure(self, conn: asyncpg.Connection, table: str, times_ms: Iterable[int]) -> None:
        for start in {partition_start(t, self.days) for t in times_ms}:
            if (table, start) in self.known:
                continue
            name = partition_name(table, start)
            end = start + self.days * DAY_MS
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" FOR VALUES FROM ({start}) TO ({end})'
            )
            self.known.add((table, start))


def partition_name(table: str, start_ms: int) -> str:
    day = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
    return f"{table}_p{day:%Y%m%d}"


async def apply_retention(conn: asyncpg.Connection, settings: HistorySettings, now_ms: int) -> dict[str, int]:
    """Drop partitions wholly older than each table's retention, delete old rows of the plain tables.

    Returns what went per table (partitions dropped, or rows deleted).
    """
    done: dict[str, int] = {}
    partitions = Partitions(settings.partition_days)
    await partitions.load(conn)
    width = settings.partition_days * DAY_MS
    for table, start in sorted(partitions.known):
        cutoff = now_ms - getattr(settings, PARTITIONED[table]) * DAY_MS
        if start + width <= cutoff:
            await conn.execute(f'DROP TABLE IF EXISTS "{partition_name(table, start)}"')
            done[table] = done.get(table, 0) + 1
    cutoff = now_ms - settings.retention_days_episodes * DAY_MS
    for table, (column, condition) in TRIMMED.items():
        status = await conn.execute(f"DELETE FROM {table} WHERE {column} < $1 AND {condition}", cutoff)
        deleted = int(status.split()[-1])
        if deleted:
            done[table] = deleted
    return done
