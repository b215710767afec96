"""History and forecaster: CPU per reading at a steady rate of readings.clean (issue 19's side services).

Neither service is on the reading -> score path, yet at 5,000 readings/s they take CPU from it. This bench
writes readings shaped as ingest writes them (1,000 sensors in 20 zones, two metrics each, as
``bench_latency_e2e.py``'s load) straight to readings.clean at ``--rate`` for ``--warmup + --seconds``
seconds, with one real history worker and one real forecaster worker (with a small trained model) reading
them, and reports each worker's CPU seconds per second over the last ``--seconds`` (from /proc) and µs of
CPU per reading. Without ingest, the detector and alerts on the machine it is lighter than the e2e bench;
the services see the same readings.clean at the same rate.

``--baseline DIR`` runs another checkout's workers in alternate rounds (before/after in one run).
Writes bench/results/sinks_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency_e2e import CodeProcess, cpu_seconds, metrics_text, train_forecaster  # noqa: E402

from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import delete_topics  # noqa: E402

SERVICES = ("history", "forecaster")
# What history did in the window, from its /metrics: transactions (each one a few round trips) and rollup rows.
HISTORY_COUNTERS = {
    "batches": "flowwatch_history_batch_seconds_count",
    "rollup_rows": 'flowwatch_history_rows_total{table="rollups"}',
}


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def backend_pids(db: str) -> list[int]:
    """The PostgreSQL server processes serving the history worker (its sink and API connections)."""
    import asyncpg

    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass  # gone (a connection the worker closed): its CPU is not counted
    return total


async def produce(settings: Settings, rate: float, seconds: float, sensors: int) -> int:
    """readings.clean at ``rate`` for ``seconds``, each sensor strictly in time order, keyed by sensor."""
    rng = random.Random(7)
    fleet = [
        (f"e2e-z{i % 20:02d}-pipe{i:05d}", f"z{i % 20:02d}", rng.uniform(430, 620), rng.uniform(60, 240))
        for i in range(sensors)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks=1)
    await producer.start()
    topic = settings.topic("readings.clean")
    sent, nxt = 0, 0
    last_ts = [0] * sensors
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            for _ in range(int(elapsed * rate) - sent):
                i = nxt
                nxt = (nxt + 1) % sensors
                sensor, zone, pressure, flow = fleet[i]
                now = int(time.time() * 1000)
                ts = last_ts[i] = max(now, last_ts[i] + 1)
                value = orjson.dumps(
                    {
                        "sensor_id": sensor,
                        "ts": ts,
                        "site": "e2e",
                        "zone": zone,
                        "utility": "water",
                        "asset": "pipe",
                        "values": {
                            "pressure": round(pressure * (1 + rng.gauss(0, 0.01)), 3),
                            "flow": round(flow * (1 + rng.gauss(0, 0.01)), 3),
                        },
                        "units": {"pressure": "kPa", "flow": "m3/h"},
                        "quality": 1.0,
                        "extra": {},
                        "received_ms": now,
                        "source": "kafka",
                        "v": 1,
                    }
                )
                await producer.send(topic, value, key=sensor.encode())
                sent += 1
            await asyncio.sleep(0.002)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def one_round(args: argparse.Namespace, code: Path, label: str, models: Path, tmp: Path) -> dict[str, Any]:
    from tests.history_helpers import scratch_database

    prefix = f"sinks{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env().replace(topic_prefix=prefix, data_dir=tmp / prefix / "data", model_dir=models)
    await create_all(settings, out=open(os.devnull, "w"))
    procs: dict[str, CodeProcess] = {}
    try:
        async with scratch_database() as db:
            env = {"FLOWWATCH_HISTORY_DATABASE_URL": db, "FLOWWATCH_LOG_LEVEL": "WARNING"}
            for name in SERVICES:
                procs[name] = CodeProcess(name, settings, code, env).start()
            for p in procs.values():
                await asyncio.to_thread(p.wait_ready, 300)
            load_before = os.getloadavg()
            feed = asyncio.ensure_future(produce(settings, args.rate, args.warmup + args.seconds, args.sensors))
            await asyncio.sleep(args.warmup)
            pids = {n: p.proc.pid for n, p in procs.items() if p.proc}
            cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
            backends = await backend_pids(db)
            pg0 = cpu_of(backends)
            m0 = await asyncio.to_thread(metrics_text, procs["history"])
            t0 = time.monotonic()
            sent = await feed
            window = time.monotonic() - t0
            share = {n: (cpu_seconds(pids[n]) - c) / window for n, c in cpu0.items()}
            pg = (cpu_of(backends) - pg0) / window
            m1 = await asyncio.to_thread(metrics_text, procs["history"])
            per_s = {
                k: round((counter(m1, name) - counter(m0, name)) / window, 1) for k, name in HISTORY_COUNTERS.items()
            }
            load_after = os.getloadavg()
            dead = [n for n, p in procs.items() if p.proc and p.proc.poll() is not None]
    finally:
        for p in procs.values():
            p.stop()
        await delete_topics(settings)
        shutil.rmtree(tmp / prefix, ignore_errors=True)
    rate = sent / (args.warmup + args.seconds)
    return {
        "code": label,
        "readings_per_s": round(rate),
        "cpu_share": {n: round(v, 3) for n, v in share.items()},
        "us_per_reading": {n: round(v / rate * 1e6, 1) for n, v in share.items()},
        "postgres_backends_cpu_share": round(pg, 3),  # the server's side of the sink's writes
        "history_per_s": per_s,
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m_after": round(load_after[0], 2),
        "services_died": dead,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    try:
        models = Path(args.models) if args.models else tmp / "models"
        if not (models / "registry.json").exists() and not any(models.glob("*")):
            await asyncio.to_thread(train_forecaster, models)
        codes = [(ROOT, "now")] + ([(Path(args.baseline).resolve(), "before")] if args.baseline else [])
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            for code, label in codes if r % 2 == 0 else codes[::-1]:
                print(f"==> round {r + 1}/{args.rounds}: {label} ({code})", file=sys.stderr)
                result = await one_round(args, code, label, models, tmp)
                print(f"{label}: {orjson.dumps(result).decode()}", file=sys.stderr)
                rounds.append(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {"bench": "sinks_cpu", "rate": args.rate, "seconds": args.seconds, "rounds": rounds}
    for _, label in codes:
        mine = [r for r in rounds if r["code"] == label]
        out[label] = {
            n: {
                "cpu_share_median": round(statistics.median(r["cpu_share"][n] for r in mine), 3),
                "us_per_reading_median": round(statistics.median(r["us_per_reading"][n] for r in mine), 1),
            }
            for n in SERVICES
        }
        out[label]["history_postgres_backends_cpu_share_median"] = round(
            statistics.median(r["postgres_backends_cpu_share"] for r in mine), 3
        )
        out[label]["history_batches_per_s_median"] = statistics.median(r["history_per_s"]["batches"] for r in mine)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=5000.0, help="readings/s written to readings.clean")
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the measured window")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline", help="another checkout whose workers run in alternate rounds (before/after)")
    p.add_argument("--models", help="a model directory to reuse (else a small model is trained per run)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sinks_cpu.json")
    args = p.parse_args()
    out = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(orjson.dumps({k: out[k] for k in out if k in ("now", "before")}).decode())


if __name__ == "__main__":
    main()
