"""A source message that makes ingest's Kafka door raise, on the real stack: the worker goes on, the message is
quarantined once with its reason, the rest of its fetch is delivered exactly once, and a restart never reads it again.

The worker is ``tests.ingest_poison`` (ingest with a bug on purpose: a fetch holding the poison marker raises out of
the door's handling, not as a per-message mapping error; one holding the killer marker SIGKILLs the worker). The source topic has one partition and every message is
on it before the worker starts, so the poison and the good messages come in one fetch.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.settings import Settings
from tests.helpers import ROOT, ServiceProcess, collect, produce
from tests.ingest_poison import ERROR, KILLER, POISON
from tests.integration.test_ingest_mapping_doors import GAS

pytestmark = pytest.mark.timeout(300)

ENV = {
    "FLOWWATCH_INGEST_MAX_AGE_S": "0",
    "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
    "FLOWWATCH_PUMP_RETRY_BACKOFF_S": "0.2",
}


class PoisonedIngest(ServiceProcess):
    def start(self) -> PoisonedIngest:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ingest_poison", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


def station(location: str, **extra: Any) -> tuple[None, dict[str, Any]]:
    return None, {**GAS, "location": location, **extra}


def sensors(clean: list[dict[str, Any]], tag: str) -> Counter[str]:
    return Counter(m["sensor_id"] for m in clean if tag in m["sensor_id"])


def poisoned(quarantined: list[dict[str, Any]]) -> list[dict[str, Any]]:
    markers = (POISON.decode(), KILLER.decode())
    return [q for q in quarantined if any(m in orjson.dumps(q).decode() for m in markers)]


def set_aside_total(proc: ServiceProcess) -> float:
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith('flowwatch_pump_set_aside_total{service="ingest"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_source_message_that_raises_is_quarantined_once_and_never_read_again(
    settings: Settings, tmp_path: Path
) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:  # the mapping's source topic belongs to whoever writes it: this test
        await admin.create_topics([NewTopic(settings.topic("gas-station.raw"), 1, settings.replication_factor)])
    finally:
        await admin.close()
    tag = uuid.uuid4().hex[:6]
    good = [station(f"{tag} {i}") for i in range(10)]
    poison = station(f"{tag} poison", note=POISON.decode())
    await produce(settings, "gas-station.raw", [*good[:4], poison, *good[4:]])
    wanted = {f"gas-{tag}-{i}" for i in range(10)}

    ingest = PoisonedIngest("ingest", settings, ENV)
    ingest.start()
    try:
        await asyncio.to_thread(ingest.wait_ready, 120)
        q = poisoned(await collect(settings, "readings.quarantine", lambda ms: len(poisoned(ms)) >= 1, timeout=90))
        assert len(q) == 1, ingest.tail(60)
        assert q[0]["reasons"] == [f"processing failed twice: RuntimeError: {ERROR}"]
        assert q[0]["source"] == "kafka" and q[0]["payload"]["note"] == POISON.decode()
        clean = await collect(settings, "readings.clean", lambda ms: wanted <= set(sensors(ms, tag)), timeout=60)
        assert sensors(clean, tag) == Counter(wanted), ingest.tail(60)  # each good message exactly once
        assert set_aside_total(ingest) == 1.0
        assert ingest.proc is not None and ingest.proc.poll() is None
        ingest.wait_ready(30)
        ingest.stop()

        # Restarted: the poison's offset was committed with it; only what came after is read.
        await produce(settings, "gas-station.raw", [station(f"{tag} after")])
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready, 120)
        after = wanted | {f"gas-{tag}-after"}
        clean = await collect(settings, "readings.clean", lambda ms: after <= set(sensors(ms, tag)), timeout=60)
        assert sensors(clean, tag) == Counter(after), ingest.tail(60)
        assert len(poisoned(await collect(settings, "readings.quarantine", lambda ms: False, timeout=3))) == 1
        assert set_aside_total(ingest) == 0.0  # this process set nothing aside
    finally:
        ingest.stop()


async def wait_exit(proc: ServiceProcess, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc is not None
        code = proc.proc.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the worker did not die:\n{proc.tail()}")


async def test_a_source_message_that_kills_the_worker_is_set_aside_after_one_more_crash(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic("gas-station.raw"), 1, settings.replication_factor)])
    finally:
        await admin.close()
    tag = uuid.uuid4().hex[:6]
    good = [station(f"{tag} {i}") for i in range(6)]
    killer = station(f"{tag} killer", note=KILLER.decode())
    await produce(settings, "gas-station.raw", [*good[:3], killer, *good[3:]])
    wanted = Counter({f"gas-{tag}-{i}": 1 for i in range(6)})

    # A killed worker stays in its groups until its session times out: short, so the next one starts soon.
    ingest = PoisonedIngest("ingest", settings, {**ENV, "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "6"})
    try:
        # First life: the fetch (under its guard) kills it. Second: that range one message at a time, the
        # killer kills it again (under its own guard). Third: the killer is set aside, the rest goes on.
        for _ in range(2):
            ingest.start()
            assert await wait_exit(ingest) == -signal.SIGKILL
        ingest.start()
        await asyncio.to_thread(ingest.wait_ready, 120)
        q = poisoned(await collect(settings, "readings.quarantine", lambda ms: len(poisoned(ms)) >= 1, timeout=90))
        assert [x["reasons"] for x in q] == [["the worker died while processing this message alone"]], ingest.tail(40)
        # None was lost. A good message goes to readings.raw (before the readings pump reads its partitions) or
        # straight to the pipeline (after), and the door wrote none to readings.raw twice (from there on the
        # readings pump is at-least-once after a kill: readings.clean may repeat what it had not checkpointed).
        clean = await collect(settings, "readings.clean", lambda ms: set(wanted) <= set(sensors(ms, tag)), timeout=60)
        assert set(sensors(clean, tag)) == set(wanted), ingest.tail(60)
        raw = await collect(settings, "readings.raw", lambda ms: False, timeout=3)
        assert all(n == 1 for n in sensors(raw, tag).values()), ingest.tail(60)
        assert ingest.proc is not None and ingest.proc.poll() is None
    finally:
        ingest.stop()
