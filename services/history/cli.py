"""The history service's command line: ``worker`` and the ops commands (they start fast: no Faust app).

migrate     apply pending schema migrations (idempotent); prints what it applied
retention   drop partitions and rows older than the retention settings, once
settings    print the history settings table (markdown)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from services.history import store
from services.history.settings import ENV_PREFIX, HistorySettings
from shared.cli import Command, ServiceCli, settings_command


async def _migrate() -> list[int]:
    conn = await store.connect(HistorySettings.from_env())
    try:
        return await store.migrate(conn)
    finally:
        await conn.close()


def migrate(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="python -m services.history migrate",
        description="Apply the history store's pending schema migrations (FLOWWATCH_HISTORY_DATABASE_URL); "
        "changes nothing when the schema is up to date.",
    ).parse_args(argv)
    try:
        applied = asyncio.run(_migrate())
    except (OSError, store.asyncpg.PostgresError) as exc:
        print(f"error: cannot migrate the history store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"applied migrations {applied}" if applied else "schema up to date")
    return 0


async def _retention() -> dict[str, int]:
    hs = HistorySettings.from_env()
    conn = await store.connect(hs)
    try:
        return await store.apply_retention(conn, hs, int(time.time() * 1000))
    finally:
        await conn.close()


def retention(argv: list[str]) -> int:
    print(asyncio.run(_retention()) or "nothing to drop")
    return 0


CLI = ServiceCli(
    "history",
    "The history service: every kept topic into PostgreSQL, and the history API.",
    {
        "migrate": Command(migrate, "apply pending schema migrations (idempotent); prints what it applied"),
        "retention": Command(
            retention, "drop partitions and rows older than the retention settings, once", options=False
        ),
        "settings": settings_command(HistorySettings, ENV_PREFIX, "history"),
    },
    app="services.history.app",
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
