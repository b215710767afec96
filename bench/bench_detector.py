"""Detector throughput, micro-batch latency and the speed-up of micro-batching, with the real broker and one worker.

Everything on: trained ensemble models (z-score, PCA T²+Q, K-Means, LOF, IsolationForest)
for the pipe and pump profiles, per-sensor rolling state in the Faust table (changelog
included), scores for every reading, anomalies with reasons, zone aggregates and the
Redis cache.

Throughput: each of ``--rounds`` rounds writes ``--readings`` clean readings (``--sensors``
sensors, mostly pipes and some pumps, keyed by sensor_id) to readings.clean while the worker
is stopped, then starts it; it drains the backlog (its states from the rounds before restored
from its table). Readings/s = readings / (last - first ``scores`` append time) of the round,
so start-up and this script are not counted, and the script's producer never shares the
machine with a drain (until 2026-12-06 later rounds were written while the worker read them).
The worker's CPU time between those two instants (sampled every 50 ms) gives readings per
worker CPU-second, the steadier number on a shared machine. Medians of the rounds.

``--baseline DIR``: another checkout's worker (its own topics, state and models, trained by this
checkout's code) drains the same backlogs, the order alternating round by round, so before and
after share the machine's load; ``over_baseline`` and ``over_baseline_cpu`` are the ratios of
the medians.

Micro-batch latency: the worker's own processing time per micro-batch (decode, features,
ensemble, table writes, sends queued), p50 and p99 over the batches of the last round's worker
(``/detector/stats``; ``anomalies`` is that worker's count too).

Per-event: a worker with ``FLOWWATCH_DETECTOR_BATCH_SIZE=1`` (one reading per batch: one
feature step, one ensemble call, one table write each) drains ``--per-event-readings``
readings in the same run; speed-up = batched / per-event.

Writes bench/results/detector.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_ingest import CpuSampler  # noqa: E402
from bench_latency_e2e import CodeProcess  # noqa: E402

from services.detector.offline.training import fit_profile  # noqa: E402
from services.detector.profiles import ProfileSet  # noqa: E402
from services.detector.settings import DEFAULT_PROFILES_FILE  # noqa: E402
from shared.registry import ModelRegistry  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import AUTH, delete_topics  # noqa: E402

TARGET_PER_S = 50_000  # issue 19 (ensemble on, one worker, through the broker)
T0 = 1_717_200_000_000
STEP_MS = 10_000


def sensor_table(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pump = i % 10 == 0
        out.append(
            {
                "sensor_id": f"{'pump' if pump else 'pipe'}-{i:05d}",
                "zone": f"zone-{i % 40:02d}",
                "asset": "pump" if pump else "pipe",
                "base": {
                    "flow": rng.uniform(40, 400),
                    "pressure": rng.uniform(400, 700),
                    "current": rng.uniform(20, 120),
                    "power": rng.uniform(10, 90),
                    "vibration": rng.uniform(1, 3),
                    "bearing_temperature": rng.uniform(30, 60),
                },
            }
        )
    return out


METRICS = {
    "pipe": ("pressure", "flow"),
    "pump": ("flow", "pressure", "current", "power", "vibration", "bearing_temperature"),
}
UNITS = {
    "pressure": "kPa",
    "flow": "m3/h",
    "current": "A",
    "power": "kW",
    "vibration": "mm/s",
    "bearing_temperature": "C",
}


def reading(sensor: dict[str, Any], k: int, rng: np.random.Generator) -> dict[str, Any]:
    daily = 1 + 0.1 * np.sin(2 * np.pi * ((T0 + k * STEP_MS) % 86_400_000) / 86_400_000)
    values = {
        m: round(float(sensor["base"][m] * daily * (1 + rng.normal(0, 0.01))), 3) for m in METRICS[sensor["asset"]]
    }
    return {
        "sensor_id": sensor["sensor_id"],
        "ts": T0 + k * STEP_MS,
        "site": "bench",
        "zone": sensor["zone"],
        "utility": "water",
        "asset": sensor["asset"],
        "values": values,
        "units": {m: UNITS[m] for m in values},
        "v": 1,
    }


def train_models(settings: Settings, sensors: list[dict[str, Any]]) -> dict[str, str]:
    """Ensemble models for the pipe and pump profiles, registered and promoted before the worker starts."""
    rng = np.random.default_rng(1)
    rows = [
        {"sensor_id": s["sensor_id"], "asset": s["asset"], "ts": r["ts"], **r["values"]}
        for s in sensors[:200]
        for k in range(60)
        for r in [reading(s, k, rng)]
    ]
    frame = pd.DataFrame(rows)
    profiles = ProfileSet.load(DEFAULT_PROFILES_FILE)
    registry = ModelRegistry(settings.model_dir)
    versions = {}
    for name in ("pipe", "pump"):
        model = fit_profile(frame[frame["asset"] == name], profiles.by_name[name])
        with registry.create(f"detector-{name}", model.meta()) as target:
            model.save(target)
        version = registry.last_created.version
        registry.promote(f"detector-{name}", version, "production")
        versions[name] = version
    return versions


async def produce_backlog(settings: Settings, sensors: list[dict[str, Any]], rounds: range, seed: int) -> int:
    rng = np.random.default_rng(seed)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    n = 0
    try:
        topic = settings.topic("readings.clean")
        for k in rounds:
            for s in sensors:
                await producer.send(topic, orjson.dumps(reading(s, k, rng)), key=s["sensor_id"].encode())
                n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def scores_written(settings: Settings, expected: int, timeout: float, alive: Callable[[], bool]) -> int:
    """Wait until ``scores`` holds ``expected`` messages, the worker has died or ``timeout`` has passed; the count."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic("scores")
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        deadline = time.monotonic() + timeout
        while True:
            total = sum((await consumer.end_offsets(parts)).values())
            if total >= expected or time.monotonic() > deadline or not alive():
                return total
            await asyncio.sleep(0.25)
    finally:
        await consumer.stop()


class Variant:
    """One checkout's worker, with topics, state and models of its own (``--baseline``: two, drained alternately)."""

    def __init__(self, label: str, code: Path, base: Settings, work: Path, partitions: int) -> None:
        self.label = label
        self.code = code
        self.settings = base.replace(
            topic_prefix=f"bd{uuid.uuid4().hex[:8]}.",
            data_dir=work / label,
            model_dir=work / f"{label}-models",
            partitions=partitions,
        )
        self.produced = 0
        self.throughput: list[float] = []
        self.per_cpu_s: list[float] = []
        self.loads: list[float] = []
        self.stats: dict[str, Any] = {}
        self.ready: dict[str, Any] = {}

    async def drain(self, sensors: list, k: range, seed: int, env: dict[str, str], timeout: float) -> None:
        """Write one backlog while the worker is stopped, start it, wait until every reading is scored, measure.

        The worker restarts for every round (as bench_ingest's does): the bench's own producer then never shares
        the machine with a drain it measures. Readings/s by the scores' append times; the worker's CPU between the
        first and the last of them (start-up and recovery not counted).
        """
        n = len(k) * len(sensors)
        self.produced += await produce_backlog(self.settings, sensors, k, seed=seed)
        det = CodeProcess("detector", self.settings, self.code, env)
        det.start()
        try:
            sampler = CpuSampler(det.proc.pid)  # type: ignore[union-attr]
            sampler.start()
            try:
                alive = lambda: det.proc is not None and det.proc.poll() is None  # noqa: E731
                total = await scores_written(self.settings, self.produced, timeout, alive)
            finally:
                sampler.stop()
            if total < self.produced:
                raise RuntimeError(f"only {total} of {self.produced} readings scored within {timeout}s:\n{det.tail()}")
            total, first, last = await round_span(self.settings, self.produced - n)
            if total != self.produced:  # a reading scored twice, or a short read, would shift the round's span
                raise RuntimeError(f"read back {total} scores for {self.produced} readings: the span would be wrong")
            cpu = sampler.cpu_between(first / 1000, last / 1000)
            if cpu <= 0:
                raise RuntimeError(f"no CPU time sampled for the {self.label} worker between its first and last score")
            self.throughput.append(n / max((last - first) / 1000.0, 1e-3))
            self.per_cpu_s.append(n / cpu)
            self.loads.append(round(os.getloadavg()[0], 2))
            await asyncio.to_thread(det.wait_ready, 120)
            self.stats = httpx.get(f"{det.url}/detector/stats", headers=AUTH, timeout=10).json()
            self.ready = httpx.get(f"{det.url}/ready", timeout=10).json()
        finally:
            det.stop()
        print(
            f"{self.label}: {n} readings, {self.throughput[-1]:,.0f}/s, {self.per_cpu_s[-1]:,.0f} per worker "
            f"CPU-second, load {self.loads[-1]}",
            file=sys.stderr,
            flush=True,
        )


async def round_span(settings: Settings, start_count: int) -> tuple[int, int, int]:
    """First and last append time of the scores after the first ``start_count`` (per partition by time)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic("scores")
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        stamps: list[int] = []
        for tp in parts:
            await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(parts)
        remaining = sum(ends.values())
        while remaining > 0:
            got = await consumer.getmany(timeout_ms=2000, max_records=50_000)
            if not got:
                break
            for records in got.values():
                stamps.extend(r.timestamp for r in records)
                remaining -= len(records)
        stamps.sort()
        later = stamps[start_count:]
        return len(stamps), later[0], later[-1]
    finally:
        await consumer.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env("detector")
    work = Path(tempfile.mkdtemp(prefix="bench-detector-"))
    sensors = sensor_table(args.sensors)
    out: dict[str, Any] = {
        "benchmark": "detector",
        "what": "readings/s from readings.clean to scores (+anomalies, aggregates, state table, Redis), one worker",
        "sensors": args.sensors,
        "partitions": args.partitions,
        "cpus": os.cpu_count(),
        "target_per_s": TARGET_PER_S,
        "env": args.env,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine_load_avg_1m_at_start": os.getloadavg()[0],
    }
    extra = dict(kv.split("=", 1) for kv in args.env)
    env = {"FLOWWATCH_DETECTOR_BATCH_SIZE": str(args.batch_size), "FLOWWATCH_LOG_LEVEL": "WARNING", **extra}
    variants = [Variant("now", ROOT, base, work, args.partitions)]
    if args.baseline:
        variants.insert(0, Variant("baseline", args.baseline.resolve(), base, work, args.partitions))
    per_sensor = max(1, args.readings // len(sensors))
    try:
        models = {}
        for v in variants:
            await create_all(v.settings, out=open(os.devnull, "w"))
            models[v.label] = train_models(v.settings, sensors)
        for r in range(args.rounds):
            # the same backlog for every variant of a round; the order alternates round by round
            for v in variants if r % 2 == 0 else variants[::-1]:
                await v.drain(sensors, range(r * per_sensor, (r + 1) * per_sensor), 10 + r, env, args.timeout)
        for v in variants:
            detail = v.ready["models"]["detail"]
            if not all(f"{name}: {version}" in detail for name, version in models[v.label].items()):
                raise RuntimeError(f"the {v.label} worker did not serve the trained models: {detail}")
        now = variants[-1]
        out["models"] = models["now"]
        out.update(
            readings_per_round=per_sensor * len(sensors),
            rounds=args.rounds,
            batch_size=args.batch_size,
            **report(now),
            anomalies=now.stats["anomalies"],
            models_detail=now.ready["models"]["detail"],
        )
        out["target_met"] = out["throughput_median_per_s"] >= TARGET_PER_S
        if args.baseline:
            then = variants[0]
            out["baseline"] = {"code": str(then.code), **report(then)}
            out["over_baseline"] = round(out["throughput_median_per_s"] / out["baseline"]["throughput_median_per_s"], 3)
            out["over_baseline_cpu"] = round(
                out["readings_per_worker_cpu_second_median"] / out["baseline"]["readings_per_worker_cpu_second_median"],
                3,
            )
        if args.per_event_readings > 0:
            # one reading per batch: one feature step, one ensemble call, one table write each
            single = Variant("per-event", ROOT, base, work, args.partitions)
            variants.append(single)  # its topics go with the others' whatever happens
            await create_all(single.settings, out=open(os.devnull, "w"))
            train_models(single.settings, sensors)
            env1 = {**env, "FLOWWATCH_DETECTOR_BATCH_SIZE": "1"}
            await single.drain(sensors, range(max(1, args.per_event_readings // len(sensors))), 10, env1, args.timeout)
            out.update(
                per_event_readings=single.produced,
                per_event_throughput_per_s=round(single.throughput[0]),
                per_event_readings_per_worker_cpu_second=round(single.per_cpu_s[0]),
                per_event_batch_seconds_p50=single.stats["batch_seconds_p50"],
                per_event_batch_seconds_p99=single.stats["batch_seconds_p99"],
                speedup_over_per_event=round(out["throughput_median_per_s"] / single.throughput[0], 1),
                speedup_over_per_event_cpu=round(out["readings_per_worker_cpu_second_median"] / single.per_cpu_s[0], 1),
            )
        out["machine_load_avg_1m_at_end"] = os.getloadavg()[0]
    finally:
        for v in variants:
            await delete_topics(v.settings)
        shutil.rmtree(work, ignore_errors=True)
    return out


def report(v: Variant) -> dict[str, Any]:
    """A variant's rounds; the batch times are its last round's worker's (``/detector/stats``)."""
    return {
        "throughput_per_s": [round(x) for x in v.throughput],
        "throughput_median_per_s": round(statistics.median(v.throughput)),
        "readings_per_worker_cpu_second": [round(x) for x in v.per_cpu_s],
        "readings_per_worker_cpu_second_median": round(statistics.median(v.per_cpu_s)),
        "load_avg_1m_after_rounds": v.loads,
        "batch_seconds_p50": v.stats["batch_seconds_p50"],
        "batch_seconds_p99": v.stats["batch_seconds_p99"],
        "batch_size_mean": v.stats["batch_size_mean"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=2000)
    parser.add_argument("--readings", type=int, default=100_000, help="readings per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--per-event-readings", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for every worker"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout's worker, drained alternately (before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detector.json")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
