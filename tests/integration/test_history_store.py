"""The history store on the real PostgreSQL: migrations are idempotent, retention drops old partitions."""

from __future__ import annotations

import subprocess
import sys
import time

import asyncpg
import orjson

from services.history import store
from services.history.pipeline import Decoder, Message
from services.history.settings import HistorySettings
from services.history.worker import write_batch
from tests.helpers import ROOT
from tests.history_helpers import scratch_database

CATALOG = """
SELECT 'column' AS what, table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable AS item
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'index', indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
  WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'migration', version || ' ' || name || ' ' || applied_at FROM schema_migrations
ORDER BY 1, 2
"""


def _migrate(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.history", "migrate"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FLOWWATCH_HISTORY_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_twice_changes_nothing() -> None:
    async with scratch_database() as url:
        first = _migrate(url)
        assert (
            first.returncode == 0 and f"applied migrations {[v for v, _, _ in store.migrations()]}" in first.stdout
        ), first.stderr
        conn = await asyncpg.connect(url)
        try:
            before = [tuple(r) for r in await conn.fetch(CATALOG)]
            second = _migrate(url)
            assert second.returncode == 0 and "schema up to date" in second.stdout, second.stderr
            after = [tuple(r) for r in await conn.fetch(CATALOG)]
        finally:
            await conn.close()
        assert before == after
        assert any(kind == "column" and item.startswith("episodes.verdict ") for kind, item in before)


async def test_retention_drops_partitions_older_than_the_setting() -> None:
    hs = HistorySettings(partition_days=1, retention_days_events=3)
    day = store.DAY_MS
    now = int(time.time() * 1000) // day * day
    async with scratch_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await store.migrate(conn)
            partitions = store.Partitions(hs.partition_days)
            await partitions.ensure(conn, "anomalies", [now - 10 * day, now - 2 * day, now])
            await partitions.ensure(conn, "rollups", [now - 10 * day])
            done = await store.apply_retention(conn, hs, now)
            reloaded = store.Partitions(hs.partition_days)
            await reloaded.load(conn)
        finally:
            await conn.close()
    assert done == {"anomalies": 1}
    assert reloaded.known == {("anomalies", now - 2 * day), ("anomalies", now), ("rollups", now - 10 * day)}


async def test_a_record_and_its_update_in_one_batch_are_written_and_the_update_wins() -> None:
    """The detector re-sends a window a late reading changed, the simulator extends a label: when
    both fall in one batch, the batch is written (not retried forever) and the later record counts."""
    hs = HistorySettings()
    hour = int(time.time() * 1000) // 3_600_000 * 3_600_000
    window = {"window_start": hour, "window_end": hour + 300_000, "site": "s1", "zone": "z1", "utility": "water"}
    label = {"incident_id": "inc-1", "type": "leak", "site": "s1", "zone": "z1", "utility": "water", "sensors": ["a"]}
    records = [
        ("aggregates", {**window, "count": 10, "anomaly_count": 1}),
        ("labels", {**label, "start_ms": hour, "end_ms": hour + 60_000}),
        ("aggregates", {**window, "count": 12, "anomaly_count": 3}),
        ("labels", {**label, "start_ms": hour, "end_ms": hour + 120_000, "sensors": ["a", "b"]}),
    ]
    offsets: dict[str, int] = {}
    messages = []
    for topic, value in records:
        offsets[topic] = offsets.get(topic, -1) + 1
        messages.append(Message(topic, 0, offsets[topic], orjson.dumps(value)))
    batch = Decoder().decode(messages)
    async with scratch_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await store.migrate(conn)
            async with conn.transaction():
                await write_batch(conn, batch, hs, store.Partitions(hs.partition_days), "", hour)
            windows = [tuple(r) for r in await conn.fetch("SELECT count, anomaly_count FROM aggregates")]
            hours = [tuple(r) for r in await conn.fetch("SELECT hour, count, anomaly_count FROM aggregates_hourly")]
            labels = [tuple(r) for r in await conn.fetch("SELECT end_ms, sensors::text FROM labels")]
            done = dict(tuple(r) for r in await conn.fetch("SELECT topic, next_offset FROM sink_offsets"))
        finally:
            await conn.close()
    assert windows == [(12, 3)]
    assert hours == [(hour, 12, 3)]
    assert labels == [(hour + 120_000, '["a", "b"]')]
    assert done == {"aggregates": 2, "labels": 2}


async def test_nul_characters_are_written_not_retried_forever() -> None:
    """PostgreSQL text and jsonb cannot hold NUL; a record carrying one (the simulator's corrupt
    messages do) is kept with U+FFFD in its place instead of failing its whole batch forever."""
    hs = HistorySettings()
    now = int(time.time() * 1000)
    nul = "bad\x00value"
    records = [
        ("readings.quarantine", {"payload": nul, "source": "mqtt", "reasons": [f"json: {nul}"], "received_ms": now}),
        ("labels", {"incident_id": "inc\x00", "type": "leak", "start_ms": now, "end_ms": now, "sensors": [nul]}),
        ("readings.clean", {"sensor_id": nul, "ts": now, "values": {"flow": 1.0}}),
        ("readings.clean", {"sensor_id": "s1", "ts": now, "values": {"flow": 1.0, nul: 2.0}}),
    ]
    messages = [Message(topic, 0, 0, orjson.dumps(value)) for topic, value in records]
    batch = Decoder().decode(messages)
    async with scratch_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await store.migrate(conn)
            async with conn.transaction():
                await write_batch(conn, batch, hs, store.Partitions(hs.partition_days), "", now)
            samples = [tuple(r) for r in await conn.fetch("SELECT payload, reasons::text FROM quarantine_samples")]
            labels = [tuple(r) for r in await conn.fetch("SELECT incident_id, sensors::text FROM labels")]
            rollups = [tuple(r) for r in await conn.fetch("SELECT sensor_id, metric FROM rollups")]
            rejected = [r["reason"] for r in await conn.fetch("SELECT reason FROM rejected")]
        finally:
            await conn.close()
    assert samples == [("bad\ufffdvalue", '["json: bad\ufffdvalue"]')]
    assert labels == [("inc\ufffd", '["bad\ufffdvalue"]')]
    assert rollups == [("s1", "flow")]  # the metric named with a NUL is left out
    assert rejected == ["ValueError: sensor_id holds a NUL character"]
