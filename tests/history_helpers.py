"""Helpers of the history tests: a database of its own per test, records to feed, polling the store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from services.history.settings import HistorySettings

ADMIN_URL = HistorySettings.from_env().database_url.rsplit("/", 1)[0] + "/postgres"


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new, empty database on the stack's PostgreSQL; dropped afterwards. Yields its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def reading(sensor: str, ts: int, values: dict[str, float], zone: str = "z1", site: str = "s1") -> dict[str, Any]:
    return {
        "sensor_id": sensor,
        "ts": ts,
        "site": site,
        "zone": zone,
        "utility": "water",
        "asset": "pipe",
        "values": values,
        "units": {},
    }


def anomaly(sensor: str, ts: int, score: float, zone: str = "z1", severity: str = "warning") -> dict[str, Any]:
    return {
        "sensor_id": sensor,
        "ts": ts,
        "site": "s1",
        "zone": zone,
        "utility": "water",
        "asset": "pipe",
        "score": score,
        "threshold": 0.5,
        "model_version": "m1",
        "reason": f"flow high on {sensor}",
        "top_metrics": [{"metric": "flow", "contribution": 1.0}],
        "values": {"flow": 9.0},
        "severity": severity,
    }
