"""Two ingest workers split the partitions; each sensor's state stays with the worker that owns it.

Duplicates are only caught if every reading of a sensor is judged where that sensor's state
lives, so exact dedup across two workers (with unkeyed input that has to be forwarded) shows
the readings pump follows Faust's co-partitioned assignment.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from shared.settings import Settings
from tests.helpers import AUTH, ServiceProcess, produce


def _metric(proc: ServiceProcess, name: str) -> float:
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _owns_partitions(proc: ServiceProcess) -> bool:
    detail = httpx.get(f"{proc.url}/ready", timeout=5).json()["readings"]["detail"]
    return re.match(r"partitions \[\d", detail) is not None


async def test_two_workers_share_partitions_and_dedup_exactly(settings: Settings) -> None:
    s = settings  # two partitions: one each
    env = {"FLOWWATCH_INGEST_MQTT_ENABLED": "false", "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "10"}
    one = ServiceProcess("ingest", s, extra_env=env)
    two = ServiceProcess("ingest", s.replace(data_dir=s.data_dir / "two"), extra_env=env)
    start = int(time.time() * 1000) - 600_000
    sensors = [f"w-{i:02d}" for i in range(40)]
    unique = [(sid, start + k * 1000) for sid in sensors for k in range(25)]  # 1,000 readings

    def body(sid: str, ts: int) -> bytes:
        return orjson.dumps(
            {
                "sensor_id": sid,
                "ts": ts,
                "site": "n",
                "zone": "z",
                "utility": "gas",
                "asset": "pipe",
                "values": {"pressure": 500.0},
            }
        )

    # Every reading twice: once keyed by its sensor, once unkeyed (lands anywhere, must be forwarded).
    messages = [(sid.encode(), body(sid, ts)) for sid, ts in unique] + [(None, body(sid, ts)) for sid, ts in unique]
    consumer = AIOKafkaConsumer(
        s.topic("readings.clean"),
        bootstrap_servers=s.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        one.start()
        two.start()
        await asyncio.gather(asyncio.to_thread(one.wait_ready, 120), asyncio.to_thread(two.wait_ready, 120))
        # Both must hold partitions before the input arrives (a late joiner triggers a rebalance, which is fine,
        # but then this test would not show that the split itself is right).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_owns_partitions(p) for p in (one, two)):
            await asyncio.sleep(0.5)
        assert all(_owns_partitions(p) for p in (one, two)), (one.tail(), two.tail())

        await produce(s, "readings.raw", messages)
        await consumer.start()
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                seen.extend((m["sensor_id"], m["ts"]) for m in map(orjson.loads, (r.value for r in records)))
            dups = sum(_metric(p, "flowwatch_ingest_duplicates_total") for p in (one, two))
            if len(seen) >= len(unique) and dups >= len(unique):
                break
        await asyncio.sleep(1)
        for records in (await consumer.getmany(timeout_ms=500)).values():
            seen.extend((m["sensor_id"], m["ts"]) for m in map(orjson.loads, (r.value for r in records)))
        dups = sum(_metric(p, "flowwatch_ingest_duplicates_total") for p in (one, two))
        accepted = [_metric(p, 'flowwatch_ingest_accepted_total{utility="gas"}') for p in (one, two)]

        # HTTP: whichever worker is asked answers for every sensor, routing to the owner as needed.
        fresh = [orjson.loads(body(sid, start + 100_000)) for sid in sensors]
        first = httpx.post(f"{one.url}/v1/readings", content=orjson.dumps(fresh), headers=AUTH, timeout=30).json()
        again = httpx.post(f"{two.url}/v1/readings", content=orjson.dumps(fresh), headers=AUTH, timeout=30).json()
    finally:
        one.stop()
        two.stop()
        await consumer.stop()

    assert sorted(seen) == sorted(unique)  # each exactly once
    assert dups == len(unique)
    assert all(a > 0 for a in accepted), accepted  # both workers did part of the work
    assert (first["accepted"], first["duplicates"], first["pending"]) == (len(sensors), 0, 0), first
    assert (again["accepted"], again["duplicates"], again["pending"]) == (0, len(sensors), 0), again
    assert sorted(e["index"] for e in again["errors"]) == list(range(len(sensors)))
