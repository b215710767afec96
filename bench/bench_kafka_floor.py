"""What one Python process can move through aiokafka at all: the ceiling for any flowwatch worker.

Issue 19 asks one ingest worker for 60,000 readings/s and one detector worker for 50,000. Every
worker reads a topic and writes another with aiokafka (a project choice), so what a process does
with *nothing else* to do bounds what a worker can do. This bench measures that ceiling on the
same readings the ingest bench sends, in one process, against the real broker:

* ``fetch``: ``getmany`` until the backlog is read (aiokafka's fetch, record-batch parsing and
  ``ConsumerRecord`` per message);
* ``fetch+json``: and ``orjson.loads`` of each value (every worker decodes what it reads);
* ``fetch+json+produce``: and ``orjson.dumps`` of each, collected per partition into an
  :class:`shared.batching.Outbox` (one ``BatchBuilder`` per topic-partition, the cheapest way
  aiokafka produces, what the services use) and flushed per fetch — a worker that does no work.

Each mode reads the same backlog (``--readings``, written once before) from the start, with a fresh
consumer, ``--rounds`` times in alternation. Reported per mode: readings/s over the wall clock,
readings per CPU-second of this process (what one uncontended core gives; the broker's own CPU is
not counted) and the CPU microseconds one reading costs. The ingest and detector benches' figures
per worker CPU-second compare directly with the last row.

Writes bench/results/kafka_floor.json (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import Clock, make_sensors, payload  # noqa: E402
from shared.batching import Outbox, start_output_producer  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import delete_topics, produce  # noqa: E402

MODES = ("fetch", "fetch+json", "fetch+json+produce")


async def read_all(
    settings: Settings, count: int, mode: str, outbox: Outbox | None, partitions: int
) -> tuple[float, float]:
    """Read the backlog once in ``mode``; (wall seconds, this process's CPU seconds)."""
    topic = settings.topic("readings.raw")
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        enable_auto_commit=False,
        group_id=None,
        # The pumps' fetch settings (shared.pump): big fetches, answered as soon as anything is there.
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out = settings.topic("readings.clean")
        seen = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while seen < count:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for tp, records in fetched.items():
                seen += len(records)
                if mode == "fetch":
                    continue
                values = [orjson.loads(r.value) for r in records]
                if outbox is not None:
                    for r, v in zip(records, values, strict=True):
                        outbox.add(out, tp.partition, r.key, orjson.dumps(v))
            if outbox is not None and outbox.count:
                await outbox.flush()
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    settings = Settings.from_env("ingest").replace(
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=args.partitions
    )
    await create_all(settings, out=open(os.devnull, "w"))
    try:
        sensors = make_sensors(args.sensors, rng)
        clock = Clock(int(time.time() * 1000) - 6 * 3600 * 1000)
        backlog = []
        for i in range(args.readings):
            s = sensors[i % len(sensors)]
            backlog.append((s["sensor_id"].encode(), payload(s, clock.tick(s["sensor_id"]), rng)))
        mean_bytes = statistics.fmean(len(v) for _, v in backlog)
        await produce(settings, "readings.raw", backlog)
        producer, _ = await start_output_producer(settings, "bench-floor", [settings.topic("readings.clean")])
        outbox = Outbox(producer)
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        try:
            for r in range(args.rounds):
                for mode in MODES:
                    wall, cpu = await read_all(
                        settings, args.readings, mode, outbox if mode.endswith("produce") else None, args.partitions
                    )
                    results[mode].append((wall, cpu))
                    print(
                        f"round {r + 1} {mode:>20}: {args.readings / wall:>9,.0f}/s, "
                        f"{args.readings / cpu:>9,.0f} per CPU-second, {cpu / args.readings * 1e6:5.1f} µs a reading",
                        flush=True,
                    )
        finally:
            await producer.stop()
    finally:
        await delete_topics(settings)
    modes = {}
    for mode, runs in results.items():
        walls = [args.readings / w for w, _ in runs]
        cpus = [args.readings / c for _, c in runs]
        modes[mode] = {
            "readings_per_s": round(statistics.median(walls)),
            "readings_per_cpu_second": round(statistics.median(cpus)),
            "cpu_us_per_reading": round(1e6 / statistics.median(cpus), 2),
            "rounds_readings_per_cpu_second": [round(c) for c in cpus],
        }
    return {
        "bench": "kafka_floor",
        "readings": args.readings,
        "mean_value_bytes": round(mean_bytes),
        "partitions": args.partitions,
        "rounds": args.rounds,
        "modes": modes,
        "machine_load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4, help="as bench_ingest.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/kafka_floor.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["modes"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
