"""Killing the ingest worker (SIGKILL) mid-stream and starting it again loses no reading."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from shared.settings import Settings
from tests.helpers import ServiceProcess, produce

SENSORS = 100
PER_SENSOR = 120  # 12,000 readings in two halves


def reading_bytes(sensor_id: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "sensor_id": sensor_id,
            "ts": ts,
            "site": "north",
            "zone": "z1",
            "utility": "water",
            "asset": "pipe",
            "values": {"pressure": 410.0, "flow": 80.0},
        }
    )


def readings(start_ms: int, first: int, last: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(first, last):
        for s in range(SENSORS):
            sid = f"r-{s:03d}"
            body = {
                "sensor_id": sid,
                "ts": start_ms + i * 1000,
                "site": "north",
                "zone": "z1",
                "utility": "water",
                "asset": "pipe",
                "values": {"pressure": 400.0 + i, "flow": 80.0},
            }
            out.append((sid.encode(), orjson.dumps(body)))
    return out


class CleanWatcher:
    """Follows readings.clean from the start and remembers every (sensor_id, ts) it saw."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = AIOKafkaConsumer(
            settings.topic("readings.clean"),
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.seen: set[tuple[str, int]] = set()
        self.messages = 0

    async def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    m = orjson.loads(r.value)
                    self.seen.add((m["sensor_id"], m["ts"]))
                    self.messages += 1

    async def until(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline:
            await self.poll(0.5)


async def test_kill_mid_stream_and_restart_loses_nothing(settings: Settings) -> None:
    env = {
        "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
        "FLOWWATCH_INGEST_BATCH_SIZE": "500",
        # The killed worker's partitions are handed to the restarted one once its session expires.
        "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "8",
    }
    start = int(time.time() * 1000) - PER_SENSOR * 1000 - 60_000
    half = PER_SENSOR // 2
    total = SENSORS * PER_SENSOR
    watcher = CleanWatcher(settings)
    await watcher.consumer.start()
    proc = ServiceProcess("ingest", settings, extra_env=env)
    try:
        await produce(settings, "readings.raw", readings(start, 0, half))
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 120)
        # Let it get part of the way, then kill it without warning.
        await watcher.until(total // 6, timeout=60)
        proc.kill()
        await watcher.poll(1.0)
        seen_before_kill = len(watcher.seen)
        assert 0 < seen_before_kill < total, "the kill must land mid-stream"

        # More arrives while it is down; then it comes back on the same state directory.
        await produce(settings, "readings.raw", readings(start, half, PER_SENSOR))
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 120)
        await watcher.until(total, timeout=120)
    finally:
        proc.stop()
        await watcher.consumer.stop()

    expected = {(f"r-{s:03d}", start + i * 1000) for i in range(PER_SENSOR) for s in range(SENSORS)}
    missing = expected - watcher.seen
    assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    assert watcher.seen == expected
    # At-least-once: a replay after the kill may repeat readings, but only those since the last checkpoint.
    assert watcher.messages - total < total // 2


async def test_a_clean_stop_checkpoints_so_the_restart_repeats_nothing(settings: Settings) -> None:
    env = {"FLOWWATCH_INGEST_MQTT_ENABLED": "false", "FLOWWATCH_INGEST_CHECKPOINT_S": "30"}
    start = int(time.time() * 1000) - 600_000
    first = readings(start, 0, 20)
    second = readings(start, 20, 40)
    watcher = CleanWatcher(settings)
    await watcher.consumer.start()
    proc = ServiceProcess("ingest", settings, extra_env=env)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 120)
        await produce(settings, "readings.raw", first)
        await watcher.until(len(first), timeout=60)
        # Long checkpoint interval: only the shutdown checkpoint can cover these.
        proc.stop()  # SIGTERM
        proc.start()
        await asyncio.to_thread(proc.wait_ready, 120)
        await produce(settings, "readings.raw", second)
        await watcher.until(len(first) + len(second), timeout=60)
        await watcher.poll(2.0)
    finally:
        proc.stop()
        await watcher.consumer.stop()
    assert len(watcher.seen) == len(first) + len(second)
    assert watcher.messages == len(first) + len(second), "a clean stop must not replay anything"


async def test_state_recovers_from_the_changelog_on_a_fresh_disk(settings: Settings) -> None:
    """A worker rescheduled onto an empty disk rebuilds offsets and sensor state from the changelogs."""
    env = {
        "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.3",
        "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "8",
    }
    start = int(time.time() * 1000) - 600_000
    sensors = 20
    old = [
        (f"f-{s:02d}".encode(), reading_bytes(f"f-{s:02d}", start + i * 1000))
        for i in range(100)
        for s in range(sensors)
    ]
    repeats = [
        (f"f-{s:02d}".encode(), reading_bytes(f"f-{s:02d}", start + i * 1000))
        for i in range(95, 100)
        for s in range(sensors)
    ]
    new = [
        (f"f-{s:02d}".encode(), reading_bytes(f"f-{s:02d}", start + i * 1000))
        for i in range(100, 105)
        for s in range(sensors)
    ]
    watcher = CleanWatcher(settings)
    await watcher.consumer.start()
    first = ServiceProcess("ingest", settings, extra_env=env)
    second = ServiceProcess("ingest", settings.replace(data_dir=settings.data_dir / "fresh-disk"), extra_env=env)
    try:
        first.start()
        await asyncio.to_thread(first.wait_ready, 120)
        await produce(settings, "readings.raw", old)
        await watcher.until(len(old), timeout=60)
        await asyncio.sleep(1.5)  # a few checkpoints
        first.kill()

        second.start()
        await asyncio.to_thread(second.wait_ready, 120)
        await produce(settings, "readings.raw", repeats + new)
        await watcher.until(len(old) + len(new), timeout=60)
        await watcher.poll(2.0)
        duplicates = 0.0
        for line in httpx.get(f"{second.url}/metrics", timeout=5).text.splitlines():
            if line.startswith("flowwatch_ingest_duplicates_total "):
                duplicates = float(line.split()[1])
    finally:
        first.stop()
        second.stop()
        await watcher.consumer.stop()
    assert len(watcher.seen) == len(old) + len(new)
    assert watcher.messages == len(old) + len(new), "offsets were not recovered: old readings were replayed"
    assert duplicates == len(repeats), "sensor state was not recovered: repeats were not recognised"
