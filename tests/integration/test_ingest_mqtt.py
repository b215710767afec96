"""The MQTT door on the real Mosquitto: nothing published is lost when ingest dies or is away.

Ingest acknowledges a message to the broker only once Kafka has it, under a fixed client id
with a persistent session. So a worker killed with messages read but not yet written loses
none of them (the broker sends the unacknowledged ones again to the restarted worker), and
messages published while no worker runs wait in the session.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest

from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import ServiceProcess, delete_topics

pytestmark = pytest.mark.timeout(300)


def _subscribed(proc: ServiceProcess) -> bool:
    try:
        ready = httpx.get(f"{proc.url}/ready", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return str(ready.get("mqtt", {}).get("detail", "")).startswith("subscribed")


def start(settings: Settings, env: dict[str, str]) -> ServiceProcess:
    proc = ServiceProcess("ingest", settings, extra_env=env).start()
    proc.wait_ready(120)
    deadline = time.monotonic() + 30
    while not _subscribed(proc):
        assert time.monotonic() < deadline, proc.tail()
        time.sleep(0.2)
    return proc


def payload(sensor: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "sensor_id": sensor,
            "ts": ts,
            "site": "north",
            "zone": "north-dma1",
            "utility": "water",
            "asset": "pipe",
            "values": {"pressure": 430.0, "flow": 110.0},
        }
    )


async def clean_keys(settings: Settings, until: int, timeout: float) -> set[tuple[str, int]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic("readings.clean"),
        **settings.kafka_client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < until and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300, max_records=10_000)).values():
                for r in records:
                    value: dict[str, Any] = orjson.loads(r.value)
                    seen.add((value["sensor_id"], value["ts"]))
    finally:
        await consumer.stop()
    return seen


async def test_no_message_is_lost_when_ingest_is_killed_or_away(stack: Settings, tmp_path: Any) -> None:
    prefix = f"m{uuid.uuid4().hex[:10]}."
    s = stack.replace(topic_prefix=prefix, data_dir=tmp_path / "data", model_dir=tmp_path / "models", partitions=2)
    await create_all(s, out=open("/dev/null", "w"))
    topic = f"flowwatch-mqtt-test/{prefix}readings"
    env = {"FLOWWATCH_INGEST_MQTT_TOPIC": f"{topic}/#", "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5"}
    port = int(s.mqtt_url.rsplit(":", 1)[1])
    t0 = int(time.time() * 1000) - 600_000
    # Mosquitto keeps at most max_queued_messages (1000 by default) for a client that is away: stay below.
    first = [(f"mq-{i % 20}", t0 + (i // 20) * 1000) for i in range(600)]
    offline = [(f"mq-off-{i % 10}", t0 + (i // 10) * 1000) for i in range(200)]
    proc = start(s, env)
    try:

        async def publish_first() -> None:
            async with aiomqtt.Client("127.0.0.1", port, timeout=60) as mqtt:
                for i in range(0, len(first), 100):
                    batch = first[i : i + 100]
                    await asyncio.gather(
                        *(mqtt.publish(f"{topic}/{sid}", payload(sid, ts), qos=1) for sid, ts in batch)
                    )

        publisher = asyncio.create_task(publish_first())
        # Killed mid-stream: messages it has read but not yet written to Kafka are not acknowledged.
        assert len(await clean_keys(s, 50, 60)) >= 50
        proc.kill()
        await publisher
        async with aiomqtt.Client("127.0.0.1", port, timeout=60) as mqtt:
            for sid, ts in offline:  # published while no ingest runs: they wait in its session
                await mqtt.publish(f"{topic}/{sid}", payload(sid, ts), qos=1)
        proc = start(s, env)
        wanted = set(first) | set(offline)
        seen = await clean_keys(s, len(wanted), 120)
        assert wanted - seen == set(), f"{len(wanted - seen)} readings lost"
    finally:
        proc.stop()
        await delete_topics(s)
