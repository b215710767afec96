"""The forecaster on the real stack: an injected leak is named before it ends, serving equals offline evaluation,
bad input is quarantined, a promotion hot-reloads the model, and zone state survives a restart on an empty disk.

One model is trained for the module (built-in synthetic history, seconds) and one worker serves the tests in
order; the last test replaces it with a fresh worker whose local table store is empty.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.forecaster.offline import synthetic
from services.forecaster.offline.history import History
from services.forecaster.partials import fold
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.settings import ForecasterSettings
from shared.cache import Cache
from shared.registry import ModelRegistry, publish_event
from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import AUTH, ServiceProcess, collect, consume, delete_topics, produce

HOUR_MS = 3_600_000
LEAK_ZONE = "water-z1"
LEAK_START_H, LEAK_HOURS = 26.0, 2.0  # 02:00 on the second day: night flow, with a day of profile behind it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.forecaster.offline.training import train

    root = tmp_path_factory.mktemp("forecaster-models")
    history = synthetic.generate(
        days=3.0, zones={"water": 3, "energy": 1, "gas": 1}, incident_rate_per_day=6.0, seed=11
    )
    train(history, ForecasterSettings(), root, epochs=30, seed=3, promote="production")
    return root


@pytest.fixture(scope="module")
def scenario() -> History:
    """Fresh zones (another seed) with one leak and nothing else going on."""
    return synthetic.generate(
        days=1.2,
        zones={"water": 2, "energy": 1, "gas": 1},
        incident_rate_per_day=0.0,
        planned=[(LEAK_ZONE, "leak", LEAK_START_H, LEAK_HOURS)],
        seed=99,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(stack: Settings, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    tmp = tmp_path_factory.mktemp("forecaster-stack")
    s = stack.replace(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.", data_dir=tmp / "data", model_dir=model_dir, partitions=2
    )
    await create_all(s, out=open("/dev/null", "w"))
    yield s
    await delete_topics(s)


@pytest.fixture(scope="module")
def worker(env: Settings) -> Any:
    holder: dict[str, ServiceProcess] = {}
    # no registry poll during the tests: a promotion must reach the worker through its `models` event
    proc = ServiceProcess("forecaster", env, {"FLOWWATCH_FORECASTER_MODEL_POLL_S": "3600"})
    proc.start()
    proc.wait_ready(timeout=180)
    holder["proc"] = proc
    yield holder
    holder["proc"].stop()


def messages(history: History, until_ms: int, from_ms: int = 0) -> list[tuple[bytes, dict]]:
    return [(r["sensor_id"].encode(), r) for r in history.readings() if from_ms <= r["ts"] < until_ms]


def consumed(proc: ServiceProcess) -> float:
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(
            f'flowwatch_events_in_total{{service="forecaster",topic="{proc.settings.topic("readings.clean")}"}}'
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def feed(settings: Settings, proc: ServiceProcess, msgs: list[tuple[bytes, dict]], chunk_ms: int) -> None:
    """Send readings in chunks of event time, each once the worker has read the previous one.

    Devices deliver at the pace of time; a replay as fast as possible lets a partition with few
    sensors run hours of event time ahead of one with many (see docs/forecaster.md, replays).
    """
    if not msgs:
        return
    t0 = msgs[0][1]["ts"]
    chunks: dict[int, list] = {}
    for key, value in msgs:
        chunks.setdefault((value["ts"] - t0) // chunk_ms, []).append((key, value))
    target = consumed(proc)
    for _k, chunk in sorted(chunks.items()):
        await produce(settings, "readings.clean", chunk)
        target += len(chunk)
        deadline = time.monotonic() + 60
        while consumed(proc) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.2)


def offline(history: History, until_ms: int, model_dir: Path) -> dict[tuple[str, int], dict]:
    """The same readings through the same pipeline in-process: what `evaluate` computes."""
    from services.forecaster.offline.training import load_predictor

    settings = ForecasterSettings()
    predictor, _ = load_predictor(model_dir, settings.model_name, settings.model_alias)
    processor = ZoneProcessor(predictor.config, settings, predictor)
    states: dict = {}
    marks: dict[str, int] = {}
    out = {}
    readings = [r for r in history.readings() if r["ts"] < until_ms]
    for start in range(0, len(readings), 2000):
        folded = fold(
            [(r, 0, start + i) for i, r in enumerate(readings[start : start + 2000])], predictor.config.step_ms
        )
        for p, ts in folded.watermarks.items():
            marks[p] = max(ts, marks.get(p, -1))
        for risk in processor.process(states, list(folded.partials.values()), dict(marks)):
            out[(risk.zone, risk.ts)] = risk.to_dict()
    return out


def leak_window(history: History) -> tuple[int, int]:
    label = next(lab for lab in history.labels if lab.zone == LEAK_ZONE)
    return label.start_ms, label.end_ms


async def test_an_injected_leak_is_named_with_its_zone_before_it_ends(
    env: Settings, worker: Any, scenario: History
) -> None:
    start, end = leak_window(scenario)
    until = start + HOUR_MS  # the leak runs two hours; we send its first hour only
    await feed(env, worker["proc"], messages(scenario, until), chunk_ms=2 * HOUR_MS)

    def leak_named(records: list[dict]) -> bool:
        return any(r["zone"] == LEAK_ZONE and r["incident_type"] == "leak" and r["ts"] > start for r in records)

    records = await collect(env, "risk", leak_named, timeout=240)
    assert leak_named(records), f"no leak record for {LEAK_ZONE} among {len(records)} risk records"
    first = min(r["ts"] for r in records if r["zone"] == LEAK_ZONE and r["incident_type"] == "leak" and r["ts"] > start)
    assert first < end
    hit = next(r for r in records if r["ts"] == first and r["zone"] == LEAK_ZONE)
    assert hit["probability"] >= 0.5
    assert hit["class_probs"]["leak"] == max(hit["class_probs"].values())
    assert hit["site"] == "site-water" and hit["utility"] == "water"
    assert {"actual", "expected"} <= set(hit["forecast"]["water.flow"])
    # The leak shows as flow over the forecast across the records that name it. Not required of the first one alone:
    # the model is trained here without op determinism, and one trained in the full run named the leak a minute
    # earlier, at 328.7 against 331.5 expected (its last minute under the forecast).
    flow = [
        r["forecast"]["water.flow"]
        for r in records
        if r["zone"] == LEAK_ZONE and r["incident_type"] == "leak" and start < r["ts"] < until
    ]
    excess = sorted(f["actual"] - f["expected"] for f in flow)
    assert sum(e > 0 for e in excess) > len(excess) / 2 and excess[len(excess) // 2] > 0, excess
    assert hit["top_features"] and hit["model_version"] == "forecaster:v1"
    # the latest risk of the zone is in Redis
    cache = Cache(env.redis_url, prefix=env.topic_prefix)
    try:
        deadline = time.monotonic() + 30
        latest = None
        while time.monotonic() < deadline:
            latest = await cache.get("risk", LEAK_ZONE)
            if latest and latest["ts"] >= first:
                break
            await asyncio.sleep(0.5)
    finally:
        await cache.close()
    assert latest is not None and latest["zone"] == LEAK_ZONE and latest["ts"] >= first


async def test_serving_gives_the_same_outputs_as_offline_evaluation(
    env: Settings, worker: Any, scenario: History, model_dir: Path
) -> None:
    start, _end = leak_window(scenario)
    until = start + HOUR_MS
    expected = offline(scenario, until, model_dir)
    # let the worker finish what the previous test sent
    served_list = await collect(env, "risk", lambda rs: len(rs) >= 0.97 * len(expected), timeout=180)
    served = {(r["zone"], r["ts"]): r for r in served_list}
    common = expected.keys() & served.keys()
    assert len(common) >= 0.97 * len(expected)
    mismatches = []
    for key in sorted(common):
        a, b = expected[key], served[key]
        if a["incident_type"] != b["incident_type"] or abs(a["probability"] - b["probability"]) > 1e-4:
            mismatches.append((key, a["incident_type"], b["incident_type"], a["probability"], b["probability"]))
        for metric, fa in a["forecast"].items():
            for k, v in fa.items():
                if abs(b["forecast"][metric][k] - v) > 1e-4 * max(1.0, abs(v)):
                    mismatches.append((key, metric, k, v, b["forecast"][metric][k]))
    assert not mismatches, mismatches[:5]


async def test_unusable_readings_are_quarantined_with_a_reason(env: Settings, worker: Any) -> None:
    await produce(
        env,
        "readings.clean",
        [(b"bad-1", b"{not json"), (b"bad-2", {"sensor_id": "bad-2", "ts": 1, "values": {"flow": 1.0}})],
    )
    got = await consume(env, "readings.quarantine", 2, timeout=60)
    assert len(got) == 2
    assert {g["source"] for g in got} == {"forecaster"}
    assert all(g["reasons"] and g["reasons"][0].startswith("forecaster:") for g in got)
    assert httpx.get(f"{worker['proc'].url}/health", timeout=5).status_code == 200


async def test_a_promotion_event_hot_reloads_the_model(env: Settings, worker: Any, model_dir: Path) -> None:
    registry = ModelRegistry(model_dir)
    v1 = registry.load("forecaster", alias="production")
    v2 = registry.save_dir("forecaster", v1.path, {k: v for k, v in v1.metadata.items() if k not in ("version",)})
    event = registry.promote("forecaster", v2.version, "production")
    await publish_event(env, event)
    deadline = time.monotonic() + 60
    detail = None
    while time.monotonic() < deadline:
        detail = httpx.get(f"{worker['proc'].url}/ready", timeout=5).json().get("model", {}).get("detail")
        if detail == f"forecaster:{v2.version}":
            break
        await asyncio.sleep(0.5)
    assert detail == f"forecaster:{v2.version}"


async def test_zone_state_is_recovered_on_an_empty_disk_and_serving_goes_on(
    env: Settings, worker: Any, scenario: History, model_dir: Path
) -> None:
    old = worker["proc"]
    before = httpx.get(f"{old.url}/zones/{LEAK_ZONE}", headers=AUTH, timeout=5).json()
    assert before["last_step_ts"] and before["incident"] is not None  # the leak is under way
    old.stop()
    fresh = ServiceProcess("forecaster", env.replace(data_dir=env.data_dir.parent / "data-after-restart"))
    worker["proc"] = fresh
    fresh.start()
    fresh.wait_ready(timeout=180)
    after = httpx.get(f"{fresh.url}/zones/{LEAK_ZONE}", headers=AUTH, timeout=5).json()
    for key in ("last_step_ts", "incident", "forecast_next", "sensors"):
        assert after[key] == before[key], key

    start, _end = leak_window(scenario)
    first_until, until = start + HOUR_MS, start + HOUR_MS + HOUR_MS // 2
    await feed(env, fresh, messages(scenario, until, from_ms=first_until), chunk_ms=2 * HOUR_MS)
    expected = offline(scenario, until, model_dir)
    late = {k: v for k, v in expected.items() if k[1] > first_until + 5 * 60_000}
    served_list = await collect(
        env,
        "risk",
        lambda rs: sum(1 for r in rs if (r["zone"], r["ts"]) in late) >= 0.97 * len(late),
        timeout=180,
    )
    served = {(r["zone"], r["ts"]): r for r in served_list}
    common = late.keys() & served.keys()
    assert len(common) >= 0.97 * len(late) > 0
    for key in common:
        assert served[key]["incident_type"] == late[key]["incident_type"], key
        assert served[key]["probability"] == pytest.approx(late[key]["probability"], abs=1e-4), key
        assert served[key]["loss"]["volume"] == pytest.approx(late[key]["loss"]["volume"], rel=1e-3, abs=1e-6), key
