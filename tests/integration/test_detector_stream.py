"""The detector on the real stack: clean readings in; scores, anomalies with reasons, aggregates, cache out."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from services.detector.offline.training import fit_profile
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE
from shared.batching import kafka_partition
from shared.cache import Cache
from shared.records import Reading
from shared.registry import ModelRegistry, publish_event
from tests.helpers import AUTH, ServiceProcess, consume, produce

T0 = 1_700_000_000_000
INCIDENT = (150, 200)  # readings of the leak on the incident sensors
FAST = {"FLOWWATCH_DETECTOR_BATCH_WAIT_S": "0.05", "FLOWWATCH_DETECTOR_AGGREGATE_WINDOW_S": "60"}


def readings(sensors: int = 6, n: int = 200, seed: int = 0) -> tuple[list[Reading], set[tuple[str, int]]]:
    """Pipes of one zone; p0 and p1 see a leak (pressure falls, flow rises) for the last 50 readings."""
    rng = np.random.default_rng(seed)
    out, truth = [], set()
    for i in range(n):
        for s in range(sensors):
            pressure, flow = 480 + 3 * s + rng.normal(0, 3), 110 + rng.normal(0, 1.5)
            if s < 2 and INCIDENT[0] <= i < INCIDENT[1]:
                pressure -= 60
                flow += 20
                truth.add((f"p{s}", T0 + i * 5000))
            out.append(
                Reading(
                    sensor_id=f"p{s}",
                    ts=T0 + i * 5000,
                    site="north",
                    zone="north-dma1",
                    utility="water",
                    asset="pipe",
                    values={"pressure": round(pressure, 2), "flow": round(flow, 2)},
                    units={"pressure": "kPa", "flow": "m3/h"},
                )
            )
    return out, truth


async def wait_for(predicate, timeout: float = 60.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    return await predicate()


async def test_readings_are_scored_and_incidents_become_anomalies_with_reasons(settings):
    data, truth = readings()
    with ServiceProcess("detector", settings, FAST) as det:
        ready = httpx.get(f"{det.url}/ready").json()
        assert "statistical z-score detector only" in ready["models"]["detail"]
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in data] + [(b"p9", b"{oops")])

        scores = await consume(settings, "scores", len(data), timeout=90)
        assert len(scores) == len(data)
        assert {s["model_version"] for s in scores} == {"statistical"}

        anomalies = await consume(settings, "anomalies", 10_000, timeout=5)
        flagged = {(a["sensor_id"], a["ts"]) for a in anomalies}
        recall = len(flagged & truth) / len(truth)
        precision = len(flagged & truth) / max(len(flagged), 1)
        print(f"stream: recall {recall:.2f} precision {precision:.2f} of {len(truth)} incident readings")
        assert recall > 0.8 and precision > 0.8
        leak = next(a for a in anomalies if a["sensor_id"] == "p0" and a["ts"] == T0 + INCIDENT[0] * 5000)
        assert leak["reason"].startswith("pressure ") and "σ below its recent 4" in leak["reason"]  # noqa: RUF001
        assert leak["top_metrics"][0]["unit"] == "kPa"

        quarantined = await consume(settings, "readings.quarantine", 1, timeout=30)
        assert quarantined[0]["sensor_id"] == "p9" and quarantined[0]["source"] == "detector"

        aggregates = await consume(settings, "aggregates", 1000, timeout=10)
        assert aggregates, "closed windows are published"
        ordered = sorted(aggregates, key=lambda a: a["window_start"])
        assert {a["zone"] for a in ordered} == {"north-dma1"}
        assert ordered[0]["window_start"] == T0 - T0 % 60_000
        assert ordered[0]["count"] == 6 * ((ordered[0]["window_end"] - T0) // 5000)  # the stream starts mid-window
        assert all(a["count"] == 6 * 12 for a in ordered[1:])  # 60 s of 6 sensors every 5 s
        assert sum(a["anomaly_count"] for a in aggregates) > 0

        cache = Cache(settings.redis_url, prefix=settings.topic_prefix)
        try:
            latest = await cache.get("score", "p0")
            assert latest is not None and latest["ts"] == T0 + 199 * 5000
            assert int(await cache.client.get(cache.key("zone_anomalies", "north/north-dma1/water"))) >= len(flagged)
        finally:
            await cache.close()

        metrics = httpx.get(f"{det.url}/metrics").text
        assert 'flowwatch_detector_quarantined_total{reason="undecodable"} 1.0' in metrics


async def test_a_promoted_model_is_hot_swapped_without_restart(settings):
    data, _ = readings(n=120, seed=1)
    frame = pd.DataFrame(
        [{"sensor_id": r.sensor_id, "ts": r.ts, "asset": r.asset, **r.values} for r in data if r.ts < T0 + 150 * 5000]
    )
    profiles = ProfileSet.load(DEFAULT_PROFILES_FILE)
    model = fit_profile(frame, profiles.by_name["pipe"])
    registry = ModelRegistry(settings.model_dir)
    with ServiceProcess("detector", settings, {**FAST, "FLOWWATCH_DETECTOR_MODEL_POLL_S": "3600"}) as det:
        with registry.create("detector-pipe", model.meta()) as target:
            model.save(target)
        version = registry.last_created.version
        await publish_event(settings, registry.promote("detector-pipe", version, "production"))

        async def swapped():
            return httpx.get(f"{det.url}/detector/models", headers=AUTH).json()["serving"].get("pipe") == version

        assert await wait_for(swapped, 30), httpx.get(f"{det.url}/detector/models", headers=AUTH).json()
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in data[:60]])
        scores = await consume(settings, "scores", 60, timeout=60)
        assert {s["model_version"] for s in scores} == {version}
        ready = httpx.get(f"{det.url}/ready").json()
        assert f"pipe: {version}" in ready["models"]["detail"]


async def test_any_worker_answers_for_any_sensor_from_the_worker_that_holds_it(settings):
    """/detector/state/<id> on either of two workers: the one asked about a sensor of the other's partition
    forwards the request there (token checked first); a sensor nobody holds is a 404 from both."""
    data, _ = readings(sensors=8, n=20, seed=5)
    sensors = sorted({r.sensor_id for r in data})
    assert {kafka_partition(s.encode(), settings.partitions) for s in sensors} == {0, 1}  # both workers hold some
    workers = [
        ServiceProcess("detector", settings.replace(web_port=0, data_dir=settings.data_dir / f"w{i}"), FAST).start()
        for i in range(2)
    ]
    try:

        async def settled():  # each worker reads one readings partition
            details = [w.wait_ready(timeout=120)["readings"]["detail"] for w in workers]
            return sorted(d.split(",")[0] for d in details) == ["partitions [0]", "partitions [1]"]

        assert await wait_for(settled, 120)
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in data])
        assert len(await consume(settings, "scores", len(data), timeout=90)) == len(data)

        def state(w: ServiceProcess, sensor: str, headers=AUTH) -> httpx.Response:
            return httpx.get(f"{w.url}/detector/state/{sensor}", headers=headers, timeout=20)

        async def all_counted():
            return all(state(workers[0], s).json().get("readings") == 20 for s in sensors)

        assert await wait_for(all_counted, 60), [state(workers[0], s).json() for s in sensors]
        for sensor in sensors:
            answers = [state(w, sensor) for w in workers]
            assert [a.status_code for a in answers] == [200, 200], (sensor, [a.text for a in answers])
            assert answers[0].json() == answers[1].json() and answers[0].json()["sensor_id"] == sensor
        for w in workers:
            missing = state(w, "nobody-has-this-sensor")
            assert missing.status_code == 404 and missing.json()["error"] == "no state for this sensor"
            assert state(w, sensors[0], headers={}).status_code == 401  # refused here, never forwarded
            assert state(w, sensors[0], headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        for w in workers:
            w.stop()


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(all="ignore"):
        yield
