"""Readings/s through a payload mapping with one real ingest worker: the Kafka source door, end to end.

``--messages`` gas-station messages (issue 16's format: local time, the station as ``location``,
six unit-suffixed metrics; one reading each) are written to the mapping's source topic
``gas-station.raw`` *before* the worker starts; the worker then drains them: the source reader
(:mod:`services.ingest.sources`) decodes and maps each message and writes the reading to
readings.raw, the readings pump decodes, validates, admits and writes it to readings.clean — two
broker hops, all on the one worker. Readings/s = readings / (last - first readings.clean append
time), so start-up is not counted. Each of ``--rounds`` rounds writes a fresh backlog (later
timestamps) while the worker is down and restarts it; the median is reported.

The machine is shared (the broker runs on the same two cores), so each round also reports the
worker's own CPU time over the drain (from /proc): ``readings_per_worker_cpu_second`` is what one
uncontended core would sustain if the broker kept up. The in-process cost of the same path without
the broker is bench_ingest_mappings.py.

Writes bench/results/ingest_source.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import CpuSampler, drain, gc_pauses  # noqa: E402
from bench.bench_ingest_mappings import _mapped_inputs  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import ServiceProcess, delete_topics, produce  # noqa: E402

TARGET_PER_S = 30_000
SOURCE = "gas-station.raw"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-source-"))
    settings = Settings.from_env("ingest").replace(
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", data_dir=work / "data", partitions=args.partitions
    )
    await create_all(settings, out=open("/dev/null", "w"))
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:  # a source topic belongs to whoever writes it: here, the bench
        await admin.create_topics([NewTopic(settings.topic(SOURCE), args.partitions, settings.replication_factor)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        settings.topic("readings.clean"),
        **settings.kafka_client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    env = {
        "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
        "FLOWWATCH_INGEST_MAX_AGE_S": "0",  # the backlog is stamped hours ago on purpose
        "FLOWWATCH_LOG_LEVEL": "WARNING",
    }
    wall: list[float] = []
    per_cpu_s: list[float] = []
    gc_s: list[float] = []
    gc_n: list[int] = []
    start_ms = int(time.time() * 1000) - 24 * 3_600_000
    load_at_start = os.getloadavg()[0]
    await consumer.start()
    proc = ServiceProcess("ingest", settings, extra_env=env)
    try:
        for r in range(args.rounds):
            proc.stop()
            # Later device times each round: the same stations, new readings (not duplicates).
            messages, made = _mapped_inputs("gas-station", args.messages, start_ms + r * 3 * 3_600_000)
            await produce(settings, SOURCE, [(None, m) for m in messages])
            proc.start()
            assert proc.proc is not None
            sampler = CpuSampler(proc.proc.pid)
            sampler.start()
            await asyncio.to_thread(proc.wait_ready, 180)
            got = await drain(consumer, made, timeout=600)
            sampler.stop()
            pauses, collections = await asyncio.to_thread(gc_pauses, proc.url)
            stamps = [t for t, _ in got]
            first, last = min(stamps) / 1000, max(stamps) / 1000
            seconds = last - first
            cpu = sampler.cpu_between(first, last)
            wall.append(made / seconds)
            per_cpu_s.append(made / cpu if cpu > 0 else 0.0)
            gc_s.append(pauses)
            gc_n.append(collections)
            print(
                f"round {r + 1}: {made} readings in {seconds:.2f}s = {wall[-1]:,.0f}/s; "
                f"worker CPU {cpu:.2f}s = {per_cpu_s[-1]:,.0f} readings per CPU-second; "
                f"garbage collections {collections} taking {pauses:.2f}s",
                flush=True,
            )
    finally:
        await consumer.stop()
        proc.stop()
        await delete_topics(settings)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "ingest_source",
        "what": "readings/s through the gas-station mapping, Kafka source topic -> readings.clean, one worker",
        "messages_per_round": args.messages,
        "rounds": args.rounds,
        "partitions": args.partitions,
        "readings_per_s": [round(x) for x in wall],
        "readings_per_s_median": round(statistics.median(wall)),
        "readings_per_worker_cpu_second": [round(x) for x in per_cpu_s],
        "readings_per_worker_cpu_second_median": round(statistics.median(per_cpu_s)),
        # the collector's pauses over the worker's life since its pump started (start-up and drain)
        "gc_collections": gc_n,
        "gc_pause_seconds": [round(x, 3) for x in gc_s],
        # issue 16: through a mapping, one worker (by the wall clock)
        "target_per_s": TARGET_PER_S,
        "target_met": statistics.median(wall) >= TARGET_PER_S,
        "machine_load_avg_1m_at_start": load_at_start,
        "machine_load_avg_1m_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=150_000, help="gas-station messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ingest_source.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
