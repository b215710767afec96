"""The fault suite: the whole pipeline on its own stack, broken on purpose, loses nothing and recovers by itself.

One private stack instance (``tests/stack_instance.py``) for the module: these tests stop Kafka and Redis,
which must never happen to the stack the rest of ``make test`` uses. The four services run as processes,
the simulator sends in real time, and the ledger (``tests/faults.py``) accounts for every reading sent.
The tests run in file order on the same pipeline; each accounts only for the readings it sent itself.
Every figure is printed as a ``FAULTS`` line; docs/reliability.md holds the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.forecaster.offline import synthetic
from services.forecaster.settings import ForecasterSettings
from shared.settings import Settings
from shared.topics import create_all
from tests.faults import Ledger, Pipeline, SimulatorRun, account, notifications
from tests.helpers import ROOT, produce
from tests.integration.test_alerts_harness import WebhookReceiver, anomaly, until
from tests.stack_instance import StackInstance

SERVICES = ["ingest", "detector", "forecaster", "alerts"]


def report(scenario: str, started: float, **figures: object) -> None:
    print(f"FAULTS {scenario} " + json.dumps({**figures, "wall_s": round(time.monotonic() - started, 1)}))


def train_small_model(model_dir: Path) -> None:
    """The forecaster is ready only with a model: a small one is enough to exercise its crash path."""
    from services.forecaster.offline.training import train

    history = synthetic.generate(days=1.0, zones={"water": 2, "energy": 1}, incident_rate_per_day=6.0, seed=21)
    train(history, ForecasterSettings(), model_dir, epochs=1, seed=3, promote="production")


@pytest.fixture(scope="module")
async def pipeline(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pipeline]:
    root = tmp_path_factory.mktemp("faults")
    stack = StackInstance(root / "stack")
    settings = stack.settings(
        Settings.from_env().replace(
            topic_prefix="faults.", data_dir=root / "data", model_dir=root / "models", partitions=2
        )
    )
    # The stack boots while the forecaster's model trains: both take tens of seconds.
    booting = stack.start_up()
    receiver = await WebhookReceiver().start()
    ledger: Ledger | None = None
    pipe: Pipeline | None = None
    try:
        await asyncio.to_thread(train_small_model, settings.model_dir)
        out, _ = await asyncio.to_thread(booting.communicate, timeout=300)
        if booting.returncode != 0:
            pytest.fail(f"the fault suite's own stack could not start:\n{out}", pytrace=False)
        await create_all(settings, out=open("/dev/null", "w"))
        await stack.warm_up(settings, "readings.raw")
        ledger = Ledger(settings)
        await ledger.start()
        pipe = Pipeline(stack, settings, root, receiver, ledger)
        await pipe.start(SERVICES)
        yield pipe
    finally:
        if pipe is not None:
            pipe.stop_all()
        if ledger is not None:
            await ledger.stop()
        await receiver.stop()
        if booting.poll() is None:
            booting.kill()
        await asyncio.to_thread(stack.down)


@pytest.mark.timeout(720)  # includes the module's set-up: the stack, a model, four services (about 3 minutes)
async def test_kafka_stopped_for_20s_while_the_simulator_sends_loses_no_reading(pipeline: Pipeline) -> None:
    started = time.monotonic()
    run = SimulatorRun(pipeline.settings, pipeline.workdir, count=5000, rate=125, seed=101).start()
    try:
        await asyncio.sleep(8)
        stopping = time.monotonic()
        await asyncio.to_thread(pipeline.stack.stop, "kafka")
        stopped = time.monotonic()
        await asyncio.sleep(20)
        starting = time.monotonic()
        await asyncio.to_thread(pipeline.stack.up)
        back = time.monotonic()
        sim = await run.finished(timeout=180)
    finally:
        run.kill()
    result = await pipeline.drained(run.expected, timeout=180)
    report(
        "kafka_down_20s",
        started,
        **result.row(),
        kafka_stop_s=round(stopped - stopping, 1),
        kafka_down_s=round(starting - stopped, 1),
        kafka_start_s=round(back - starting, 1),
        simulator=sim["delivery"],
        caught_up_after_kafka_back_s=round(pipeline.caught_up_at - back, 1),
    )
    assert sim["messages"] == len(run.expected)
    assert sim["delivery"]["delivered"] == sim["delivery"]["sent"] == len(run.expected), sim["delivery"]
    assert result.lost == 0, f"{result.lost} readings lost, e.g. {result.missing_examples}"
    for name in SERVICES:
        assert pipeline.procs[name].proc.poll() is None, f"{name} died:\n{pipeline.procs[name].tail()}"


@pytest.mark.timeout(300)
async def test_a_wiped_table_store_is_recovered_from_the_changelog(pipeline: Pipeline) -> None:
    started = time.monotonic()
    sensors = sorted({sid for sid, _ in pipeline.ledger.scores})[:40]
    assert sensors, "the detector has scored nothing yet"

    def states() -> dict[str, dict]:
        return {s: pipeline.get("detector", f"/detector/state/{s}").json() for s in sensors}

    before = states()
    pipeline.procs["detector"].stop()  # SIGTERM: the worker checkpoints on the way out; then its disk is lost
    store = pipeline.settings.data_dir / "detector"
    assert (store / "tables").is_dir()
    shutil.rmtree(store)
    wiped = time.monotonic()
    await pipeline.restart("detector")
    detector_s = time.monotonic() - wiped
    after = states()

    # The alerts worker: after the wipe it still knows what it notified, so the same news is not told again.
    def told(zone: str, since: int) -> list:
        return [h for h in pipeline.receiver.hits[since:] if h.json["groupLabels"].get("zone") == zone]

    known = [(b"wipe-known", anomaly("wipe-known-s1", "wipe-known", site="wipe"))]
    await produce(pipeline.settings, "anomalies", known)
    await until(lambda: told("wipe-known", 0), 60, "the notification of the alert before the wipe")
    await asyncio.sleep(3)  # its delivery result is in the outbox table
    hits = len(pipeline.receiver.hits)
    pipeline.procs["alerts"].stop()
    shutil.rmtree(pipeline.settings.data_dir / "alerts")
    wiped = time.monotonic()
    await pipeline.restart("alerts")
    alerts_s = time.monotonic() - wiped
    fresh = [(b"wipe-new", anomaly("wipe-new-s1", "wipe-new", site="wipe"))]
    await produce(pipeline.settings, "anomalies", known + fresh)
    await until(lambda: told("wipe-new", hits), 60, "the notification of a new alert after the wipe")
    await asyncio.sleep(3)
    renotified = [h.json["groupLabels"]["zone"] for h in pipeline.receiver.hits[hits:]]
    report(
        "table_store_wiped",
        started,
        sensors_compared=len(sensors),
        states_equal=sum(before[s] == after[s] for s in sensors),
        detector_ready_after_wipe_s=round(detector_s, 1),
        alerts_ready_after_wipe_s=round(alerts_s, 1),
        notified_after_wipe=renotified,
    )
    assert after == before
    assert "wipe-known" not in renotified, "an alert notified before the wipe was notified again"


@pytest.mark.timeout(240)
async def test_webhook_down_longer_than_all_retries_goes_to_the_dlq_and_resend_delivers_it(
    pipeline: Pipeline,
) -> None:
    started = time.monotonic()
    receiver = pipeline.receiver
    zones = [f"dlq-{i}" for i in range(3)]
    dlq_before = len(pipeline.ledger.dlq)
    await receiver.stop()  # nothing listens on the receiver's port any more
    down_at = time.monotonic()
    await produce(pipeline.settings, "anomalies", [(z.encode(), anomaly(f"{z}-s1", z, site="dlq")) for z in zones])

    def dead_lettered() -> list[dict]:
        return [d for d in pipeline.ledger.dlq[dlq_before:] if d["notification"]["groupLabels"].get("zone") in zones]

    await until(lambda: len(dead_lettered()) >= len(zones), 60, "the notifications on alerts.dlq")
    await asyncio.sleep(1)
    dlq = pipeline.ledger.dlq[dlq_before:]
    first_hit = len(receiver.hits)
    await receiver.start()  # the receiver is back on the same port
    down_s = time.monotonic() - down_at
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.alerts", "resend-dlq"],
        cwd=ROOT,
        env={**os.environ, **pipeline.procs["alerts"].env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    resent = receiver.hits[first_hit:]
    delivered = {h.headers["Idempotency-Key"] for h in resent if h.status < 300}
    lost = {d["id"] for d in dlq} - delivered
    told = notifications(resent)
    report(
        "webhook_down_dlq_resend",
        started,
        dead_lettered=len(dlq),
        attempts=sorted({d["attempts"] for d in dlq}),
        receiver_down_s=round(down_s, 1),
        resent=len(delivered),
        lost=len(lost),
        duplicate_notifications=told.duplicate_ids,
    )
    assert {d["notification"]["groupLabels"]["zone"] for d in dead_lettered()} == set(zones)
    assert all(d["attempts"] == 4 for d in dlq), "each went to the DLQ after its last attempt"
    assert not lost, f"DLQ notifications not delivered by resend-dlq: {lost}"
    assert told.duplicate_ids == 0
    assert f"{len(dlq)} sent, 0 failed" in done.stdout


def risk_gaps(risk: list[dict], since_ms: int, step_ms: int = 60_000) -> dict[str, list[int]]:
    """Per zone, the steps missing between its first and last risk record at or after ``since_ms``."""
    steps: dict[str, set[int]] = {}
    for r in risk:
        if r["ts"] >= since_ms:
            steps.setdefault(r["zone"], set()).add(r["ts"] // step_ms)
    gaps = {z: sorted(set(range(min(s), max(s) + 1)) - s) for z, s in steps.items()}
    return {z: g for z, g in gaps.items() if g}


@pytest.mark.timeout(420)
async def test_sigkill_of_each_service_under_load_loses_no_reading_and_repeats_no_notification(
    pipeline: Pipeline,
) -> None:
    started = time.monotonic()
    first_hit = len(pipeline.receiver.hits)
    since_ms = int(time.time() * 1000)
    run = SimulatorRun(pipeline.settings, pipeline.workdir, count=100_000, rate=100, seed=202).start()
    ready_again: dict[str, float] = {}
    try:
        for name in SERVICES:
            await asyncio.sleep(4)  # under load: the simulator has been sending for a while
            pipeline.procs[name].kill()
            killed = time.monotonic()
            await pipeline.restart(name)
            ready_again[name] = round(time.monotonic() - killed, 1)
        await asyncio.sleep(4)
        sim = await run.stop()
    finally:
        run.kill()
    stopped = time.monotonic()
    result = await pipeline.drained(run.expected, timeout=180)
    await asyncio.sleep(4)  # group intervals and outbox rescans after the last restart
    told = notifications(pipeline.receiver.hits[first_hit:])
    gaps = risk_gaps(pipeline.ledger.risk, since_ms)
    report(
        "sigkill_each_service",
        started,
        **result.row(),
        **told.row(),
        ready_again_after_kill_s=ready_again,
        caught_up_after_last_reading_s=round(pipeline.caught_up_at - stopped, 1),
        risk_records=sum(1 for r in pipeline.ledger.risk if r["ts"] >= since_ms),
        risk_gaps=gaps,
    )
    assert sim["messages"] == len(run.expected) > 0
    assert result.lost == 0, f"{result.lost} readings lost, e.g. {result.missing_examples}"
    assert told.distinct > 0, "the pipeline raised no alert: nothing was checked for duplicates"
    assert told.duplicate_ids == 0 and told.repeated_content == 0, told
    assert not gaps, f"zone steps without a risk record after the kills: {gaps}"


async def cache_keys(pipeline: Pipeline, kind: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(pipeline.settings.redis_url, socket_timeout=2)
    try:
        return len([k async for k in client.scan_iter(f"flowwatch:{pipeline.settings.topic_prefix}{kind}:*")])
    finally:
        await client.aclose()


@pytest.mark.timeout(420)
async def test_redis_down_for_60s_the_pipeline_keeps_scoring_and_recovers_by_itself(pipeline: Pipeline) -> None:
    started = time.monotonic()
    errors_metric = "flowwatch_cache_errors_total{"
    run = SimulatorRun(pipeline.settings, pipeline.workdir, count=100_000, rate=100, seed=303).start()
    try:
        await asyncio.sleep(4)
        assert await cache_keys(pipeline, "sensor") > 0, "the cache is written while Redis is up"
        errors_before = {s: pipeline.metric(s, errors_metric) for s in SERVICES}
        await asyncio.to_thread(pipeline.stack.stop, "redis")
        down_at = time.monotonic()
        await asyncio.sleep(8)  # the alerts service looks at Redis every 5 s
        scored_early = account(run.expected, pipeline.ledger).scored
        api_down = pipeline.get("alerts", "/v1/alerts")
        ready_down = pipeline.get("alerts", "/ready").json()
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        scored_late = account(run.expected, pipeline.ledger).scored
        errors_during = {s: pipeline.metric(s, errors_metric) for s in SERVICES}
        await asyncio.to_thread(pipeline.stack.up)  # Redis comes back empty (no persistence): it is a cache
        back = time.monotonic()
        down_s = back - down_at

        def alerts_recovered() -> bool:
            ready = pipeline.get("alerts", "/ready").json()
            return "unreachable" not in json.dumps(ready) and pipeline.get("alerts", "/v1/alerts").status_code == 200

        await until(alerts_recovered, 60, "the alerts service to see Redis again")
        deadline = time.monotonic() + 60
        while await cache_keys(pipeline, "sensor") == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        refilled = await cache_keys(pipeline, "sensor")
        recovery_s = time.monotonic() - back
        sim = await run.stop()
    finally:
        run.kill()
    result = await pipeline.drained(run.expected, timeout=180)
    report(
        "redis_down_60s",
        started,
        **result.row(),
        redis_down_s=round(down_s, 1),
        scored_while_down=scored_late - scored_early,
        cache_errors={s: errors_during[s] - errors_before[s] for s in SERVICES},
        alerts_api_while_down=api_down.status_code,
        recovered_after_redis_back_s=round(recovery_s, 1),
    )
    assert sim["messages"] == len(run.expected)
    assert scored_late > scored_early, "scoring stopped while Redis was down"
    for s in ("ingest", "detector"):
        assert errors_during[s] > errors_before[s], f"{s} did not count its cache misses"
    assert "unreachable" in json.dumps(ready_down["redis"]), ready_down
    # Without its Redis mirror the alerts API cannot list alerts: a 503 with the reason, never an empty 200.
    assert api_down.status_code == 503 and "Redis" in api_down.json()["error"], api_down.text
    assert refilled > 0, "the cache was not written again after Redis came back"
    assert result.lost == 0, f"{result.lost} readings lost, e.g. {result.missing_examples}"
