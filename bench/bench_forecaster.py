"""Forecaster benchmark: readings/s one worker sustains, and model latency per micro-batch (p50/p99).

Two measurements, written to bench/results/forecaster.json (medians of three rounds):

* ``pipeline``: the worker's whole per-reading path in one process and one thread, as
  the agents run it: orjson decode of the wire bytes -> stage 1 fold (2,000 readings per
  micro-batch) -> partials through the wire format -> stage 2 (zone state from and back
  to its table encoding, step closing, features, both TensorFlow models through
  ``tf.function``) -> risk records encoded. 12 zones, 57 sensors reporting every 10 s.
* ``worker``: one real ``python -m services.forecaster worker`` on the local stack with a
  fresh topic prefix: the readings are produced to readings.clean first, then the worker
  starts (it reads once its model is loaded) and drains the backlog. ``readings_per_s`` is
  end to end: readings / (first reading taken -> last expected risk record out);
  ``fold_readings_per_s`` is stage 1 alone (its ``events_in`` counter between 10 % and 90 %
  of the readings); ``inference_p99_ms_at_most`` is the upper bound of the worker's own
  inference-time histogram bucket holding the 99th percentile. Three rounds, medians.
* ``paced``: the same readings produced at 20,000/s into a running worker: whether it keeps
  up (readings behind the producer, sampled once a second; seconds to catch up after the
  last one) and the model time per stage-2 batch under steady load (histogram bounds).

Model latency per batch is the time in the two ``tf.function`` calls of each stage-2
batch (all zone steps closed by that batch), reported with the batch sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from services.forecaster.offline import synthetic  # noqa: E402
from services.forecaster.partials import fold  # noqa: E402
from services.forecaster.pipeline import ZoneProcessor  # noqa: E402
from services.forecaster.settings import ForecasterSettings  # noqa: E402
from services.forecaster.zonestate import ZoneState  # noqa: E402
from shared.codec import dumps, loads  # noqa: E402

ZONES = {"water": 8, "energy": 2, "gas": 2}
PACED_RATE = 20_000  # readings/s of the paced round: the target
BATCH = 2000
OUT = ROOT / "bench" / "results" / "forecaster.json"


class TimedModels:
    """The predictor, with the time of each model call recorded."""

    def __init__(self, predictor) -> None:
        self.p = predictor
        self.config = predictor.config
        self.version = predictor.version
        self.calls: list[tuple[str, int, float]] = []

    def risk(self, x: np.ndarray):
        t = time.perf_counter()
        out = self.p.risk(x)
        self.calls.append(("risk", len(x), time.perf_counter() - t))
        return out

    def forecast(self, x: np.ndarray):
        t = time.perf_counter()
        out = self.p.forecast(x)
        self.calls.append(("forecast", len(x), time.perf_counter() - t))
        return out


def train_model(model_dir: Path) -> None:
    from services.forecaster.offline.training import train

    history = synthetic.generate(days=2.0, zones=ZONES, incident_rate_per_day=6.0, seed=5)
    train(history, ForecasterSettings(), model_dir, epochs=5, seed=1, promote="production")


def pipeline_round(predictor, wire: list[bytes]) -> dict:
    settings = ForecasterSettings()
    models = TimedModels(predictor)
    processor = ZoneProcessor(predictor.config, settings, models, source_partitions=1)
    table: dict[str, bytes] = {}
    marks: dict[str, int] = {}
    risks = 0
    batch_model_s: list[float] = []
    batch_steps: list[int] = []
    t0 = time.perf_counter()
    for start in range(0, len(wire), BATCH):
        # stage 1: decode and fold one micro-batch
        items = [(loads(raw), 0, start + i) for i, raw in enumerate(wire[start : start + BATCH])]
        folded = fold(items, predictor.config.step_ms)
        sent = [dumps(p) for p in folded.partials.values()]
        for p, ts in folded.watermarks.items():
            marks[p] = max(ts, marks.get(p, -1))
        # stage 2: partials in, zone states from the table encoding, process, states and risks out
        partials = [loads(b) for b in sent]
        states = {z: ZoneState.from_bytes(table[z]) for z in (p["zone"] for p in partials) if z in table}
        n_calls = len(models.calls)
        out = processor.process(states, partials, dict(marks))
        calls = models.calls[n_calls:]
        if calls:
            batch_model_s.append(sum(c[2] for c in calls))
            batch_steps.append(max(c[1] for c in calls if c[0] == "risk") if any(c[0] == "risk" for c in calls) else 0)
        for z, st in states.items():
            table[z] = dumps(st.to_dict())
        risks += len([dumps(r.to_dict()) for r in out])
    elapsed = time.perf_counter() - t0
    return {
        "readings": len(wire),
        "seconds": elapsed,
        "readings_per_s": len(wire) / elapsed,
        "risk_records": risks,
        "model_ms_per_batch_p50": 1000 * float(np.percentile(batch_model_s, 50)),
        "model_ms_per_batch_p99": 1000 * float(np.percentile(batch_model_s, 99)),
        "zone_steps_per_batch_median": float(np.median(batch_steps)),
        "batches_with_model_calls": len(batch_model_s),
    }


def scrape(url: str) -> tuple[float, list[tuple[float, float]]]:
    """The worker's readings.clean events_in counter, and its inference histogram (le, cumulative count)."""
    import httpx

    consumed, buckets = 0.0, []
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith('flowwatch_events_in_total{service="forecaster",topic="readings.clean"}'):
            consumed = float(line.rsplit(" ", 1)[1])
        elif line.startswith("flowwatch_forecaster_inference_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    return consumed, buckets


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound (ms) of the histogram bucket holding quantile ``q``."""
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    return next(le for le, count in buckets if count >= q * total) * 1000


@contextlib.asynccontextmanager
async def bench_worker(model_dir: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Settings with a fresh topic prefix and its topics, and a forecaster process for them (started by the
    caller); everything is stopped and deleted afterwards."""
    from shared.settings import Settings
    from shared.topics import create_all
    from tests.helpers import ServiceProcess, delete_topics

    tmp = Path(tempfile.mkdtemp(prefix="bench-forecaster-"))
    s = Settings.from_env().replace(
        topic_prefix=f"b{uuid.uuid4().hex[:8]}.", data_dir=tmp / "data", model_dir=model_dir, partitions=4
    )
    await create_all(s, out=open(os.devnull, "w"))
    proc = ServiceProcess("forecaster", s)
    try:
        yield s, proc
    finally:
        proc.stop()
        await delete_topics(s)
        shutil.rmtree(tmp, ignore_errors=True)


async def paced_round(model_dir: Path, wire: list[tuple[bytes, bytes]], rate: int) -> dict:
    """Readings produced at ``rate``/s into a running worker: does it keep up, and model time per batch."""
    from aiokafka import AIOKafkaProducer

    async with bench_worker(model_dir) as (s, proc):
        proc.start()
        proc.wait_ready(timeout=240)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=5, max_batch_size=512 * 1024)
        await producer.start()
        topic = s.topic("readings.clean")
        chunk = max(1, rate // 20)  # every 50 ms
        behind: list[float] = []
        t0 = time.perf_counter()
        for i in range(0, len(wire), chunk):
            for key, value in wire[i : i + chunk]:
                await producer.send(topic, value, key=key)
            due = t0 + (i + chunk) / rate
            if (i // chunk) % 20 == 0:  # once a second: how far behind the producer the worker is
                behind.append((i + chunk) - scrape(proc.url)[0])
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await producer.flush()
        t_produced = time.perf_counter() - t0
        await producer.stop()
        while scrape(proc.url)[0] < len(wire) and time.perf_counter() - t0 < t_produced + 120:
            await asyncio.sleep(0.05)
        t_consumed = time.perf_counter() - t0
        _, buckets = scrape(proc.url)
        return {
            "rate_target_per_s": rate,
            "readings": len(wire),
            "produced_per_s": len(wire) / t_produced,
            "consumed_per_s": len(wire) / t_consumed,
            "caught_up_after_last_produce_s": t_consumed - t_produced,
            "readings_behind_median": statistics.median(behind) if behind else None,
            "readings_behind_max": max(behind) if behind else None,
            "inference_batches": buckets[-1][1] if buckets else 0,
            "inference_p50_ms_at_most": bucket_quantile(buckets, 0.5),
            "inference_p99_ms_at_most": bucket_quantile(buckets, 0.99),
        }


async def worker_round(model_dir: Path, wire: list[tuple[bytes, bytes]], expected_risks: int) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async with bench_worker(model_dir) as (s, proc):
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=20, max_batch_size=512 * 1024)
        await producer.start()
        t0 = time.perf_counter()
        for key, value in wire:
            await producer.send(s.topic("readings.clean"), value, key=key)
        await producer.flush()
        await producer.stop()
        t_produced = time.perf_counter() - t0
        proc.start()
        proc.wait_ready(timeout=240)

        def consumed() -> float:
            return scrape(proc.url)[0]

        n = len(wire)
        samples: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 600:
            c = consumed()
            samples.append((time.perf_counter(), c))
            if c >= n:
                break
            await asyncio.sleep(0.1)

        def first(at_least: float) -> tuple[float, float]:
            return next(sample for sample in samples if sample[1] >= at_least)

        t_first = next(t for t, c in samples if c > 0)
        t_last, _ = first(n)
        (t10, c10), (t90, c90) = first(0.1 * n), first(0.9 * n)
        consumer = AIOKafkaConsumer(
            s.topic("risk"), bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        got = 0
        while got < expected_risks and time.perf_counter() - t0 < 900:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        await consumer.stop()
        t_done = time.perf_counter()
        _, buckets = scrape(proc.url)
        return {
            "readings": len(wire),
            "produce_seconds": t_produced,
            "consume_seconds": t_last - t_first,
            "readings_per_s": n / max(1e-9, t_done - t_first),
            "fold_readings_per_s": (c90 - c10) / (t90 - t10),
            "drain_readings_per_s": n / max(1e-9, t_last - t_first),
            "inference_batches": buckets[-1][1] if buckets else 0,
            "inference_p99_ms_at_most": bucket_quantile(buckets, 0.99),
            "risk_records": got,
            "risk_records_expected": expected_risks,
            "seconds_until_last_risk": t_done - t_first,
        }


def main() -> int:
    from services.forecaster.offline.training import load_predictor

    model_dir = Path(tempfile.mkdtemp(prefix="bench-forecaster-models-"))
    try:
        t = time.perf_counter()
        train_model(model_dir)
        train_s = time.perf_counter() - t
        predictor, _ = load_predictor(model_dir, "forecaster", "production")
        history = synthetic.generate(days=1.0, zones=ZONES, step_s=10, incident_rate_per_day=4.0, seed=9)
        readings = list(history.readings())
        wire = [orjson.dumps(r) for r in readings]
        rounds = [pipeline_round(predictor, wire) for _ in range(3)]
        pipe = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        worker: dict = {}
        worker_rounds: list[dict] = []
        paced: dict = {}
        if "--no-worker" not in sys.argv:
            try:
                keyed = [(r["sensor_id"].encode(), w) for r, w in zip(readings, wire, strict=True)]
                worker_rounds = [
                    asyncio.run(worker_round(model_dir, keyed, int(pipe["risk_records"] * 0.95))) for _ in range(3)
                ]
                worker = {k: statistics.median(r[k] for r in worker_rounds) for k in worker_rounds[0]}
                paced = asyncio.run(paced_round(model_dir, keyed, PACED_RATE))
            except Exception as exc:  # noqa: BLE001 - report what failed instead of no numbers at all
                worker = {"error": f"{type(exc).__name__}: {exc}"}
        result = {
            "bench": "forecaster",
            "machine_cpus": os.cpu_count(),
            "zones": sum(ZONES.values()),
            "sensors": int(history.frame["sensor_id"].nunique()),
            "report_interval_s": 10,
            "step_s": predictor.config.step_s,
            "batch_readings": BATCH,
            "train_seconds": train_s,
            "pipeline": pipe,
            "pipeline_rounds": rounds,
            "worker": worker,
            "worker_rounds": worker_rounds,
            "paced": paced,
            "target_readings_per_s": 20_000,
        }
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(orjson.dumps({"pipeline": pipe, "worker": worker, "paced": paced}, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
