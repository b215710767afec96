"""Stopping the detector and starting it on an empty disk restores every sensor's rolling state from the changelog."""

from __future__ import annotations

import shutil

import httpx

from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE
from tests.helpers import AUTH, ServiceProcess, consume, produce
from tests.integration.test_detector_stream import FAST, readings


async def test_rolling_state_survives_a_restart_on_a_fresh_disk(settings):
    data, _ = readings(sensors=4, n=120, seed=3)
    first, rest = data[: 4 * 100], data[4 * 100 :]
    det = ServiceProcess("detector", settings, FAST)
    with det:
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in first])
        assert len(await consume(settings, "scores", len(first), timeout=90)) == len(first)
        before = {f"p{s}": httpx.get(f"{det.url}/detector/state/p{s}", headers=AUTH).json() for s in range(4)}
    assert all(b["readings"] == 100 for b in before.values()), before

    # a new machine: no local rocksdb, only the changelog topic on the broker
    assert (settings.data_dir / "detector" / "tables").is_dir()
    shutil.rmtree(settings.data_dir / "detector", ignore_errors=True)
    with ServiceProcess("detector", settings.replace(web_port=0), FAST) as again:
        after = {f"p{s}": httpx.get(f"{again.url}/detector/state/p{s}", headers=AUTH).json() for s in range(4)}
        assert after == before

        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in rest])
        scores = await consume(settings, "scores", len(data), timeout=90)
        final = httpx.get(f"{again.url}/detector/state/p0", headers=AUTH).json()
    assert final["readings"] == 120

    # the scores after the restart are exactly those of an uninterrupted run
    reference = Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE))).process(data, {}.get).scores
    expected = {(s.sensor_id, s.ts): s.score for s in reference[len(first) :]}
    got = {(s["sensor_id"], s["ts"]): s["score"] for s in scores if (s["sensor_id"], s["ts"]) in expected}
    assert got == expected


async def test_a_killed_worker_replays_from_its_last_checkpoint_with_the_same_scores(settings):
    data, _ = readings(sensors=4, n=150, seed=4)
    first, rest = data[: 4 * 100], data[4 * 100 :]
    # a short session: the killed worker's partitions go to the new one in seconds, not a minute
    env = {**FAST, "FLOWWATCH_DETECTOR_CHECKPOINT_S": "0.5", "FLOWWATCH_DETECTOR_SESSION_TIMEOUT_S": "8"}
    det = ServiceProcess("detector", settings, env)
    with det:
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in first])
        assert len(await consume(settings, "scores", len(first), timeout=90)) == len(first)
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in rest[:100]])
        det.kill()  # SIGKILL: no checkpoint on the way out, maybe mid-batch
    with ServiceProcess("detector", settings.replace(web_port=0), env) as again:
        await produce(settings, "readings.clean", [(r.sensor_id.encode(), r) for r in rest[100:]])
        scores = await consume(settings, "scores", len(data) + 1_000, timeout=10)
        final = httpx.get(f"{again.url}/detector/state/p0", headers=AUTH).json()
    assert final["readings"] == 150  # every reading counted once, replays included
    reference = Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE))).process(data, {}.get).scores
    expected = {(s.sensor_id, s.ts): s.score for s in reference}
    got: dict[tuple[str, int], set[float]] = {}
    for s in scores:
        got.setdefault((s["sensor_id"], s["ts"]), set()).add(s["score"])
    assert set(got) == set(expected)  # nothing lost
    assert all(values == {expected[key]} for key, values in got.items())  # replayed scores are identical
