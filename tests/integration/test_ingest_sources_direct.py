"""Mapped source readings that skip readings.raw, on the real stack: a worker killed (SIGKILL) mid-stream and
restarted loses none, and the sensor state took each reading exactly once (its count); with two workers, the
readings of sensors the other worker owns take readings.raw.

The direct route commits a source fetch's offsets only once the checkpoint covering the state it changed is
written; a kill before that replays the fetch, whose readings the state then recognises (readings.clean may
repeat them, as after a kill on the readings.raw route).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.cache import Cache
from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import ServiceProcess, collect, delete_topics, produce
from tests.integration.test_ingest_mapping_doors import GAS

pytestmark = pytest.mark.timeout(300)

STATIONS = 20
PER_STATION = 50  # below the dedup memory (64): a replayed reading is always recognised


@pytest_asyncio.fixture
async def settings_(stack: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    s = stack.replace(topic_prefix=f"t{uuid.uuid4().hex[:10]}.", data_dir=tmp_path / "data", partitions=2)
    await create_all(s, out=open("/dev/null", "w"))
    admin = AIOKafkaAdminClient(**s.kafka_client_options())
    await admin.start()
    try:  # the source topic belongs to whoever writes it: this test
        await admin.create_topics([NewTopic(s.topic("gas-station.raw"), 2, s.replication_factor)])
    finally:
        await admin.close()
    try:
        yield s
    finally:
        await delete_topics(s)


def baku(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, ZoneInfo("Asia/Baku")).replace(tzinfo=None).isoformat()


def owns_partitions(proc: ServiceProcess) -> bool:
    detail = httpx.get(f"{proc.url}/ready", timeout=5).json()["readings"]["detail"]
    return re.match(r"partitions \[\d", detail) is not None


def direct_total(proc: ServiceProcess) -> float:
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("flowwatch_ingest_source_direct_total "):
            return float(line.split()[-1])
    return 0.0


async def test_a_killed_worker_loses_no_direct_reading_and_its_state_takes_each_once(settings_: Settings) -> None:
    s = settings_
    tag = uuid.uuid4().hex[:6]
    start = int(time.time()) - 3600
    # Station i's j-th message, a second apart, in the mapping's local time; sent in rounds so the kill lands
    # mid-stream.
    rounds = [
        [(None, {**GAS, "location": f"{tag} {i}", "timestamp": baku(start + j)}) for i in range(STATIONS)]
        for j in range(PER_STATION)
    ]
    wanted = {(f"gas-{tag}-{i}", (start + j) * 1000) for i in range(STATIONS) for j in range(PER_STATION)}
    env = {
        "FLOWWATCH_INGEST_MAX_AGE_S": "0",
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
        "FLOWWATCH_INGEST_CACHE_FLUSH_S": "0.3",
        "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "6",  # a killed worker leaves its groups soon
        "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
    }
    ingest = ServiceProcess("ingest", s, extra_env=env)
    ingest.start()
    try:
        await asyncio.to_thread(ingest.wait_ready, 120)

        def seen(ms: list[dict[str, Any]]) -> set[tuple[str, int]]:
            return {(m["sensor_id"], m["ts"]) for m in ms if tag in m["sensor_id"]}

        sent = 0
        for batch in rounds[: PER_STATION // 2]:
            await produce(s, "gas-station.raw", batch)
            sent += 1
        # Some taken, the rest on its way: kill it while it works.
        await collect(s, "readings.clean", lambda ms: len(seen(ms)) >= STATIONS * 5, timeout=60)
        assert direct_total(ingest) > 0, ingest.tail(40)  # the direct route was taken
        for batch in rounds[sent : sent + 5]:
            await produce(s, "gas-station.raw", batch)
        assert ingest.proc is not None
        ingest.proc.send_signal(signal.SIGKILL)
        ingest.proc.wait(30)
        for batch in rounds[sent + 5 :]:
            await produce(s, "gas-station.raw", batch)

        ingest.start()
        await asyncio.to_thread(ingest.wait_ready, 120)
        clean = await collect(s, "readings.clean", lambda ms: wanted <= seen(ms), timeout=120)
        assert wanted == seen(clean), ingest.tail(60)  # none lost (repeats allowed)
        cache = Cache(s.redis_url, prefix=s.topic_prefix)
        try:
            counts: dict[str, int] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for i in range(STATIONS):
                    cached = await cache.get("sensor", f"gas-{tag}-{i}")
                    counts[f"gas-{tag}-{i}"] = cached["stats"]["count"] if cached else 0
                if set(counts.values()) == {PER_STATION}:
                    break
                await asyncio.sleep(0.3)
        finally:
            await cache.close()
        # Each reading taken once by its sensor's state: not lost from it, not taken again after the kill.
        assert counts == {f"gas-{tag}-{i}": PER_STATION for i in range(STATIONS)}, orjson.dumps(counts)
    finally:
        ingest.stop()


async def test_with_two_workers_readings_of_sensors_owned_elsewhere_take_readings_raw(settings_: Settings) -> None:
    """Each door hands over only what its worker owns; the rest reaches the owner through readings.raw, so every
    sensor's state (one worker's) takes every reading of it once."""
    s = settings_
    tag = uuid.uuid4().hex[:6]
    start = int(time.time()) - 3600
    per = 5
    messages = [
        (None, {**GAS, "location": f"{tag} {i}", "timestamp": baku(start + j)}) for j in range(per) for i in range(40)
    ]
    wanted = {(f"gas-{tag}-{i}", (start + j) * 1000) for i in range(40) for j in range(per)}
    env = {
        "FLOWWATCH_INGEST_MAX_AGE_S": "0",
        "FLOWWATCH_INGEST_CACHE_FLUSH_S": "0.3",
        "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "10",
        "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
    }
    one = ServiceProcess("ingest", s, extra_env=env)
    two = ServiceProcess("ingest", s.replace(data_dir=s.data_dir / "two"), extra_env=env)
    try:
        one.start()
        two.start()
        await asyncio.gather(asyncio.to_thread(one.wait_ready, 120), asyncio.to_thread(two.wait_ready, 120))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(owns_partitions(p) for p in (one, two)):
            await asyncio.sleep(0.5)
        assert all(owns_partitions(p) for p in (one, two)), (one.tail(), two.tail())

        await produce(s, "gas-station.raw", messages)

        def seen(ms: list[dict[str, Any]]) -> set[tuple[str, int]]:
            return {(m["sensor_id"], m["ts"]) for m in ms if tag in m["sensor_id"]}

        clean = await collect(s, "readings.clean", lambda ms: wanted <= seen(ms), timeout=90)
        assert seen(clean) == wanted, (one.tail(40), two.tail(40))
        raw = seen(await collect(s, "readings.raw", lambda ms: False, timeout=3))
        direct = direct_total(one) + direct_total(two)
        assert raw and direct > 0, (len(raw), direct)  # both routes taken
        assert direct + len(raw) == len(wanted)  # each reading one way or the other
        cache = Cache(s.redis_url, prefix=s.topic_prefix)
        try:
            counts: dict[str, int] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(counts.values()) != {per}:
                for i in range(40):
                    cached = await cache.get("sensor", f"gas-{tag}-{i}")
                    counts[f"gas-{tag}-{i}"] = cached["stats"]["count"] if cached else 0
                await asyncio.sleep(0.3)
        finally:
            await cache.close()
        assert set(counts.values()) == {per}, counts  # every reading of a sensor judged by its one owner
    finally:
        one.stop()
        two.stop()
