"""Simulator benchmarks -> bench/results/simulator.json (medians over rounds).

- history: time to write 1,000,000 readings of history to Parquet (and generation alone, in memory);
- encode: raw device payloads (JSON bytes) per second;
- kafka: the sustained rate into the real broker with acks=all, as fast as possible and paced at a target rate.

Run: ``.venv/bin/python bench/bench_simulator.py`` (``make bench`` runs every bench script).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.simulator import FaultConfig, Network, SimConfig, Simulator  # noqa: E402
from services.simulator.encode import Encoder  # noqa: E402
from services.simulator.generator import Batch  # noqa: E402
from services.simulator.runner import Runner, RunOptions  # noqa: E402
from services.simulator.sinks import KafkaSink  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.timeutil import now_ms, parse_time_ms  # noqa: E402
from shared.topics import READINGS_RAW, create_all  # noqa: E402

START = "2024-03-04T00:00:00Z"
MILLION = 1_000_000


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _duration_for(sim: Simulator, readings: int) -> int:
    """Milliseconds of history that hold ``readings`` readings at the network's own intervals."""
    engine = sim.engine()
    t0 = parse_time_ms(START)
    ms = int(readings / engine.rate_per_s * 1000)
    while engine.count_between(t0, t0 + ms) < readings:
        ms += 1000
    return ms


def bench_history(rounds: int) -> dict[str, Any]:
    sim = Simulator(
        Network.default(7), SimConfig(anomaly_fraction=0.05, faults=FaultConfig.preset("realistic")), seed=7
    )
    duration = _duration_for(sim, MILLION)
    parquet_s, parquet_cpu, generate_s, rows, size = [], [], [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            fresh = Simulator(sim.network, sim.config, seed=7 + r)
            t, cpu = time.perf_counter(), time.process_time()
            summary = fresh.write_history(Path(tmp) / f"h{r}.parquet", START, duration / 1000)
            parquet_s.append(time.perf_counter() - t)
            parquet_cpu.append(time.process_time() - cpu)
            rows = summary["rows"]
            size = (Path(tmp) / f"h{r}.parquet").stat().st_size
            fresh = Simulator(sim.network, sim.config, seed=7 + r)
            t = time.perf_counter()
            n = sum(len(b) for b in fresh.batches(START, duration=duration / 1000))
            generate_s.append(time.perf_counter() - t)
    return {
        "readings": rows,
        "sensors": len(sim.network),
        "simulated_hours": round(duration / 3_600_000, 2),
        "parquet_seconds_median": _median(parquet_s),
        "parquet_seconds": [round(x, 3) for x in parquet_s],
        "parquet_readings_per_s_median": round(rows / statistics.median(parquet_s)),
        "parquet_cpu_seconds_median": _median(parquet_cpu),
        "parquet_mb": round(size / 1e6, 1),
        "generate_seconds_median": _median(generate_s),
        "generate_readings_per_s_median": round(n / statistics.median(generate_s)),
    }


def bench_encode(rounds: int) -> dict[str, Any]:
    sim = Simulator(Network.default(7), SimConfig(faults=FaultConfig.preset("realistic")), seed=7)
    batch = Batch.concat(list(sim.batches(START, duration="3h")))
    encoder = Encoder(sim.engine())
    rates, cpu_rates = [], []
    for _ in range(rounds):
        t, cpu = time.perf_counter(), time.process_time()
        payloads = encoder.encode(batch)
        rates.append(len(payloads) / (time.perf_counter() - t))
        cpu_rates.append(len(payloads) / (time.process_time() - cpu))
    return {
        "payloads": len(batch),
        "payloads_per_s_median": round(statistics.median(rates)),
        "payloads_per_cpu_s_median": round(statistics.median(cpu_rates)),
        "rounds": [round(r) for r in rates],
    }


async def _kafka_run(settings: Settings, sim: Simulator, options: RunOptions) -> dict[str, Any]:
    sink = KafkaSink(settings.bootstrap_servers, settings.topic(READINGS_RAW.name), [s.id for s in sim.network.sensors])
    await sink.start()
    try:
        report = await Runner(sim.engine(), sink, options).run()
    finally:
        await sink.stop()
    assert sink.stats.failed == 0 and sink.stats.delivered == report.messages, sink.stats
    return {"messages": report.messages, "wall_s": report.wall_s, "rate": report.messages / report.wall_s}


async def bench_kafka(rounds: int, count: int, paced_rate: float, paced_seconds: float) -> dict[str, Any]:
    settings = Settings.from_env().replace(topic_prefix=f"bench-sim-{uuid.uuid4().hex[:8]}.")
    await create_all(settings, out=open(os.devnull, "w"))
    try:
        network = Network.default(7)
        config = SimConfig(faults=FaultConfig.preset("realistic"))
        max_runs = []
        for r in range(rounds):
            sim = Simulator(network, config, seed=100 + r)
            max_runs.append(
                await _kafka_run(
                    settings, sim, RunOptions(start_ms=parse_time_ms(START), speed=None, max_messages=count)
                )
            )
        paced_sim = Simulator(
            network, SimConfig(faults=config.faults, interval_scale=network.natural_rate() / paced_rate), seed=9
        )
        paced = await _kafka_run(
            settings,
            paced_sim,
            RunOptions(start_ms=now_ms(), duration_ms=int(paced_seconds * 1000), speed=1.0),
        )
    finally:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)])
        finally:
            await admin.close()
    rates = [run["rate"] for run in max_runs]
    return {
        "broker": settings.bootstrap_servers,
        "acks": "all",
        "as_fast_as_possible": {
            "messages_per_run": count,
            "readings_per_s_median": round(statistics.median(rates)),
            "rounds": [round(x) for x in rates],
        },
        "paced": {
            "target_readings_per_s": paced_rate,
            "seconds": paced_seconds,
            "messages": paced["messages"],
            "achieved_readings_per_s": round(paced["rate"], 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kafka-count", type=int, default=300_000)
    parser.add_argument("--paced-rate", type=float, default=20_000)
    parser.add_argument("--paced-seconds", type=float, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "simulator.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "bench": "simulator",
        "host_cpus": os.cpu_count(),
        # Other work on the machine slows every figure; the CPU-time figures are less sensitive to it.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("==> history to Parquet", flush=True)
    results["history"] = bench_history(args.rounds)
    print(orjson.dumps(results["history"]).decode(), flush=True)
    print("==> payload encoding", flush=True)
    results["encode"] = bench_encode(args.rounds)
    print(orjson.dumps(results["encode"]).decode(), flush=True)
    print("==> into Kafka", flush=True)
    results["kafka"] = asyncio.run(bench_kafka(args.rounds, args.kafka_count, args.paced_rate, args.paced_seconds))
    print(orjson.dumps(results["kafka"]).decode(), flush=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
