"""Console live feed: 50 SSE clients on one console worker while anomalies flow at a steady rate.

A console worker (scratch database, bench-unique topic prefix) and ``--clients`` SSE clients on
``/api/live``; the bench produces ``--rate`` anomaly records per second for ``--seconds`` onto
``anomalies``, each stamped with its send time. Per client: records received, drops reported by
the server (``event: dropped``); over all: produce → browser latency p50/p99 (ms) and the console
worker's CPU over the run (from /proc) — the cost the live feed puts on the machine the pipeline
shares. The console reads the topics without a consumer group and never waits for a client, so it
cannot hold the pipeline back; its CPU is what it can take from it. Writes bench/results/console_live.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import API_TOKEN, ServiceProcess, delete_topics  # noqa: E402
from tests.history_helpers import scratch_database  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(url: str, stop: asyncio.Event, latencies: list[float], counts: list[int], drops: list[int]) -> None:
    i = len(counts)
    counts.append(0)
    drops.append(0)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as http:
        async with http.stream("GET", f"{url}/api/live?events=anomaly", headers=headers) as response:
            event = ""
            async for line in response.aiter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "anomaly":
                    record = orjson.loads(line[6:])
                    latencies.append(time.time() * 1000 - record["sent_ms"])
                    counts[i] += 1
                elif line.startswith("data: ") and event == "dropped":
                    drops[i] = orjson.loads(line[6:])["dropped"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=int, default=500, help="anomaly records per second")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    settings = Settings.from_env().replace(
        topic_prefix=f"b{uuid.uuid4().hex[:8]}.", partitions=2, data_dir=Path(tempfile.mkdtemp(prefix="bench-console-"))
    )
    await create_all(settings, out=open(os.devnull, "w"))
    async with scratch_database() as db:
        console = ServiceProcess("console", settings, extra_env={"FLOWWATCH_CONSOLE_DATABASE_URL": db}).start()
        try:
            await asyncio.to_thread(console.wait_ready, 180)
            stop = asyncio.Event()
            latencies: list[float] = []
            counts: list[int] = []
            drops: list[int] = []
            tasks = [
                asyncio.create_task(client(console.url, stop, latencies, counts, drops)) for _ in range(args.clients)
            ]
            await asyncio.sleep(3)  # every client connected and past its hello
            assert console.proc is not None
            cpu0, t0 = cpu_seconds(console.proc.pid), time.monotonic()
            producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=5)
            await producer.start()
            sent = 0
            try:
                while time.monotonic() - t0 < args.seconds:
                    tick = time.monotonic()
                    for _ in range(args.rate // 10):
                        record = {"sensor_id": f"s{sent % 300}", "ts": int(time.time() * 1000), "score": 0.9,
                                  "sent_ms": time.time() * 1000}  # fmt: skip
                        await producer.send(
                            settings.topic("anomalies"), orjson.dumps(record), key=b"k%d" % (sent % 300)
                        )
                        sent += 1
                    await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
                await producer.flush()
            finally:
                await producer.stop()
            await asyncio.sleep(3)  # the last records reach the clients
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(console.proc.pid) - cpu0
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            lat = np.array(latencies) if latencies else np.array([float("nan")])
            result = {
                "clients": args.clients,
                "rate_per_s": args.rate,
                "seconds": args.seconds,
                "records_sent": sent,
                "deliveries_expected": sent * args.clients,
                "deliveries": int(sum(counts)),
                "dropped_reported": int(sum(drops)),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
                "console_cpu_percent": round(100 * cpu / elapsed, 1),
                "machine_load_avg_1m": os.getloadavg()[0],
            }
        finally:
            console.stop()
            await delete_topics(settings)
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "console_live.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
