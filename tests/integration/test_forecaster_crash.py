"""The forecaster's stage 1 on the shared pump, on the real stack: a worker killed mid-stream (SIGKILL) resumes
from its checkpoint (no zone step lost, the readings checkpointed before the kill not read again), and two workers
split the readings between them, serve exactly what one would, and either answers /zones/<zone> for any zone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.forecaster.offline import synthetic
from services.forecaster.settings import ForecasterSettings
from shared.settings import Settings
from tests.helpers import AUTH, ServiceProcess, collect, produce
from tests.integration.test_forecaster_stack import consumed, offline

# Killing and restarting a forecaster waits out Kafka session timeouts and reloads TensorFlow: minutes on a busy
# machine. This bounds a hang; it asserts nothing about speed.
pytestmark = pytest.mark.timeout(600)

ZONES = {"water": 2, "energy": 1}
ENV = {
    "FLOWWATCH_FORECASTER_CHECKPOINT_S": "2",
    "FLOWWATCH_FORECASTER_IDLE_PARTITION_S": "3",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.forecaster.offline.training import train

    root = tmp_path_factory.mktemp("forecaster-crash-models")
    history = synthetic.generate(days=2.0, zones=ZONES, incident_rate_per_day=6.0, seed=21)
    train(history, ForecasterSettings(), root, epochs=5, seed=3, promote="production")
    return root


async def wait_consumed(proc: ServiceProcess, at_least: float, timeout: float = 180) -> float:
    # A bound on a hang, not a speed check: a loaded machine may take minutes to assign and fill the partitions.
    deadline = time.monotonic() + timeout
    seen = consumed(proc)
    while seen < at_least and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = consumed(proc)
    return seen


async def test_a_killed_forecaster_resumes_from_its_checkpoint_and_loses_no_step(
    settings: Settings, model_dir: Path
) -> None:
    s = settings.replace(model_dir=model_dir)
    history = synthetic.generate(days=0.5, zones=ZONES, incident_rate_per_day=2.0, seed=8)
    msgs: list[tuple[bytes, Any]] = [(r["sensor_id"].encode(), r) for r in history.readings()]
    total, half = len(msgs), len(msgs) // 2
    chunk = (total - half) // 4

    first = ServiceProcess("forecaster", s, ENV).start()
    try:
        first.wait_ready(timeout=180)
        await produce(s, "readings.clean", msgs[:half])
        assert await wait_consumed(first, half) >= half
        await asyncio.sleep(3)  # a checkpoint now covers the first half
        await produce(s, "readings.clean", msgs[half : half + chunk])
        assert await wait_consumed(first, half + chunk) >= half + chunk
    finally:
        first.kill()  # SIGKILL: whatever was read since the last checkpoint is not recorded as read
    await produce(s, "readings.clean", msgs[half + chunk :])

    again = ServiceProcess("forecaster", s.replace(web_port=0), ENV).start()
    try:
        again.wait_ready(timeout=180)
        rest = total - half - chunk
        await wait_consumed(again, rest)
        await asyncio.sleep(3)  # anything re-read beyond the rest has arrived by now
        reread = consumed(again)
        assert rest <= reread <= total - half, (rest, reread, total - half)

        expected = offline(history, max(r["ts"] for _, r in msgs) - 10 * 60_000, model_dir)
        assert len(expected) > 100
        risks = await collect(
            s, "risk", lambda rs: len({(r["zone"], r["ts"]) for r in rs} & expected.keys()) >= len(expected), 120
        )
    finally:
        again.stop()
    served = {(r["zone"], r["ts"]) for r in risks}
    missing = sorted(expected.keys() - served)
    assert not missing, f"{len(missing)} zone steps without a risk record, first {missing[:5]}"


async def test_two_workers_split_the_readings_and_serve_what_one_would(settings: Settings, model_dir: Path) -> None:
    s = settings.replace(model_dir=model_dir)  # 2 partitions: one readings and one partials partition each
    history = synthetic.generate(days=0.5, zones=ZONES, incident_rate_per_day=4.0, seed=13)
    msgs: list[tuple[bytes, Any]] = [(r["sensor_id"].encode(), r) for r in history.readings()]
    workers = [
        ServiceProcess("forecaster", s.replace(web_port=0, data_dir=s.data_dir / f"worker-{i}"), ENV).start()
        for i in range(2)
    ]
    try:
        for w in workers:
            w.wait_ready(timeout=180)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the group has settled: each worker reads one partition
            details = [w.wait_ready(timeout=60)["readings"]["detail"] for w in workers]
            if sorted(details) == ["partitions [0], lag 0", "partitions [1], lag 0"]:
                break
            await asyncio.sleep(0.5)
        assert sorted(details) == ["partitions [0], lag 0", "partitions [1], lag 0"], details
        # an hour of event time at a time, as devices deliver: a partition must not run hours ahead of the other
        t0, sent = msgs[0][1]["ts"], 0
        hours: dict[int, list[tuple[bytes, Any]]] = {}
        for key, value in msgs:
            hours.setdefault((value["ts"] - t0) // 3_600_000, []).append((key, value))
        for _hour, chunk in sorted(hours.items()):
            await produce(s, "readings.clean", chunk)
            sent += len(chunk)
            deadline = time.monotonic() + 60
            while sum(consumed(w) for w in workers) < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.2)

        expected = offline(history, max(r["ts"] for _, r in msgs) - 10 * 60_000, model_dir)
        risks = await collect(
            s, "risk", lambda rs: len({(r["zone"], r["ts"]) for r in rs} & expected.keys()) >= len(expected), 120
        )
        counts = [consumed(w) for w in workers]
        # any worker answers for any zone: one that does not hold it forwards to the one that does
        zones = sorted({r["zone"] for r in risks})
        for zone in zones:
            answers = [httpx.get(f"{w.url}/zones/{zone}", headers=AUTH, timeout=20) for w in workers]
            assert [a.status_code for a in answers] == [200, 200], (zone, [a.text for a in answers])
            assert answers[0].json() == answers[1].json() and answers[0].json()["zone"] == zone
        for w in workers:
            missing = httpx.get(f"{w.url}/zones/no-such-zone", headers=AUTH, timeout=20)
            assert missing.status_code == 404 and "no-such-zone" in missing.json()["error"]
            assert httpx.get(f"{w.url}/zones/{zones[0]}", timeout=20).status_code == 401
    finally:
        for w in workers:
            w.stop()
    assert sum(counts) == len(msgs) and min(counts) > 0, counts  # each reading read once, by one of the two
    served = {(r["zone"], r["ts"]): r for r in risks}
    assert not expected.keys() - served.keys()
    for key, want in expected.items():
        got = served[key]
        assert got["incident_type"] == want["incident_type"], key
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-4), key
