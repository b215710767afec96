"""A poison reading on a real detector worker: set aside, the rest of its batch scored, never replayed into a crash.

The served model (``tests/poison_model.py``, pickled into the test's registry like any model)
raises on one value and kills the worker outright (SIGKILL to itself, as a segfault or the OOM
killer would) on another.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE
from shared.registry import ModelRegistry
from shared.settings import Settings
from tests.helpers import ServiceProcess, collect, produce
from tests.integration.test_detector_stream import FAST
from tests.poison_model import KILLS, RAISES, PoisonModel

pytestmark = pytest.mark.timeout(420)
ENV = {**FAST, "FLOWWATCH_DETECTOR_CHECKPOINT_S": "0.5", "FLOWWATCH_DETECTOR_SESSION_TIMEOUT_S": "8"}
T0 = 1_767_225_600_000


def install_poison_model(model_dir: Path) -> None:
    profile = ProfileSet.load(DEFAULT_PROFILES_FILE).by_name["pipe"]
    model = PoisonModel(profile.metrics, profile.model_config(2.5), name="pipe")
    registry = ModelRegistry(model_dir)
    with registry.create("detector-pipe", model.meta()) as target:
        model.save(target)
    registry.promote("detector-pipe", registry.last_created.version)


def reading(sensor: str, i: int, flow: float = 12.0) -> tuple[bytes, dict[str, Any]]:
    r = {
        "sensor_id": sensor,
        "ts": T0 + i * 1000,
        "site": "s1",
        "zone": "z1",
        "utility": "water",
        "asset": "pipe",
        "values": {"flow": flow, "pressure": 3.0},
    }
    return sensor.encode(), r


def scored(scores: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(s["sensor_id"], s["ts"]) for s in scores}


async def test_a_reading_that_raises_is_quarantined_and_the_rest_of_its_batch_is_scored(settings: Settings) -> None:
    install_poison_model(settings.model_dir)
    good = [reading(f"p{i % 4}", i) for i in range(40)]
    poison = reading("p9", 5, flow=RAISES)
    with ServiceProcess("detector", settings, ENV) as det:
        await produce(settings, "readings.clean", [*good[:20], poison, *good[20:]])
        want = scored([r for _, r in good])
        scores = await collect(settings, "scores", lambda got: want <= scored(got), timeout=120)
        assert want <= scored(scores)
        assert ("p9", poison[1]["ts"]) not in scored(scores)
        q = await collect(settings, "readings.quarantine", lambda got: len(got) >= 1, timeout=60)
        assert [x["sensor_id"] for x in q] == ["p9"]
        assert q[0]["payload"]["values"]["flow"] == RAISES  # the reading as it was, for a person to look at
        assert q[0]["reasons"] == ["processing failed twice: ValueError: this model cannot score a flow of 666"]
        assert det.proc is not None and det.proc.poll() is None
        det.wait_ready(timeout=30)


async def test_a_reading_that_kills_the_worker_is_set_aside_after_one_more_crash(settings: Settings) -> None:
    install_poison_model(settings.model_dir)
    good = [reading(f"p{i % 4}", i) for i in range(40)]
    killer = reading("p9", 5, flow=KILLS)
    await produce(settings, "readings.clean", [*good[:20], killer, *good[20:]])
    want = scored([r for _, r in good])

    deaths = starts = 0
    for _ in range(4):
        starts += 1
        det = ServiceProcess("detector", settings.replace(web_port=0), ENV).start()
        try:
            deadline = time.monotonic() + 120
            while det.proc is not None and det.proc.poll() is None and time.monotonic() < deadline:
                q = await collect(settings, "readings.quarantine", lambda got: len(got) >= 1, timeout=1)
                if q:
                    break
                await asyncio.sleep(0.5)
            if det.proc is not None and det.proc.poll() is not None:
                deaths += 1
                continue
            scores = await collect(settings, "scores", lambda got: want <= scored(got), timeout=120)
            assert want <= scored(scores), det.tail()
            det.wait_ready(timeout=60)
            break
        finally:
            det.stop()
    assert deaths == 2, f"the killer took down {deaths} workers (started {starts})"
    q = await collect(settings, "readings.quarantine", lambda got: len(got) >= 1, timeout=10)
    assert [x["sensor_id"] for x in q] == ["p9"]
    assert q[0]["reasons"] == ["the worker died while processing this message alone"]
    assert q[0]["payload"]["values"]["flow"] == KILLS
