"""Alerts benchmark: anomalies/s one worker absorbs, and anomaly → webhook latency p50/p99.

Runs one real alerts worker (``python -m services.alerts worker``) on the local stack
with a fresh topic prefix, a local webhook receiver on 127.0.0.1, and writes
bench/results/alerts.json. Throughput is the median of three rounds:

* ``repeating``: 30,000 anomalies from 1,500 sensors in 100 zones (each sensor
  flagged 20 times) — what a bad hour looks like;
* ``flood``: 10,000 anomalies from 10,000 different sensors in 5 zones — the worst
  case for state (every anomaly a new alert until the rate limit folds them).

Latency: 200 anomalies, each the first of a new zone (a new group), produced one by
one; the time until the webhook receiver has the notification. group_wait is 0 here
and the tick 100 ms, so this is the pipeline's own latency: add group_wait in production.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from aiohttp import web
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.codec import dumps, loads  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import ServiceProcess, delete_topics, free_port  # noqa: E402

CONFIG = """
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {{site: "{{site}}", zone: "{{zone}}", utility: "{{utility}}", sensor: "{{sensor_id}}", severity: "{{severity}}"}}
    annotations: {{summary: "Anomaly on {{sensor_id}}", description: "{{reason}}"}}
    resolve_after: 10m
    rate_limit: {{max_alerts: 50, per: 1m, collapse_by: [site, zone]}}
route:
  receiver: hook
  group_by: [site, zone, alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: hook
    webhook_configs: [{{url: "{url}"}}]
"""


def anomaly(sensor: str, zone: str, ts: int) -> dict:
    return {
        "sensor_id": sensor,
        "ts": ts,
        "site": "bench",
        "zone": zone,
        "utility": "water",
        "asset": "pipe",
        "score": 0.9,
        "threshold": 0.5,
        "model_version": "bench",
        "reason": "bench",
        "severity": "warning",
    }


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, float] = {}  # zone -> first arrival (epoch s)
        self.count = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = loads(await request.read())
        self.count += 1
        zone = body["groupLabels"].get("zone", "")
        self.arrivals.setdefault(zone, time.time())
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


def consumed(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    m = re.search(r'flowwatch_events_in_total\{service="alerts",topic="anomalies"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


async def produce_all(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    futures = [await producer.send(topic, value, key=key) for key, value in messages]
    await producer.flush()
    await asyncio.gather(*futures)


async def throughput_round(proc: ServiceProcess, producer: AIOKafkaProducer, topic: str, messages) -> dict:
    before = consumed(proc.url)
    started = time.monotonic()
    await produce_all(producer, topic, messages)
    produced_s = time.monotonic() - started
    deadline = time.monotonic() + 300
    while consumed(proc.url) - before < len(messages):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker consumed {consumed(proc.url) - before} of {len(messages)} in 300 s")
        await asyncio.sleep(0.25)  # rendering /metrics costs the worker CPU: do not poll hard
    elapsed = time.monotonic() - started
    return {"messages": len(messages), "seconds": round(elapsed, 3), "produce_seconds": round(produced_s, 3),
            "per_s": round(len(messages) / elapsed)}  # fmt: skip


async def main() -> dict:
    base = Settings.from_env("alerts")
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    settings = base.replace(topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", data_dir=tmp / "data", partitions=4)
    await create_all(settings, out=open(os.devnull, "w"))
    receiver = Receiver()
    await receiver.start()
    config = tmp / "alerts.yaml"
    config.write_text(CONFIG.format(url=f"http://127.0.0.1:{receiver.port}/hook"))
    proc = ServiceProcess(
        "alerts",
        settings,
        extra_env={
            "FLOWWATCH_ALERTS_CONFIG_PATH": str(config),
            "FLOWWATCH_ALERTS_TICK_INTERVAL_S": "0.1",
            "FLOWWATCH_ALERTS_BATCH_WITHIN_S": "0.01",
            "FLOWWATCH_LOG_LEVEL": "WARNING",
        },
    )
    proc.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10, max_batch_size=512 * 1024)
    await producer.start()
    topic = settings.topic("anomalies")
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        now = int(time.time() * 1000)
        await produce_all(producer, topic, [(b"warm", dumps(anomaly("warm", "warm", now)))])
        await asyncio.sleep(2)

        repeating, flood = [], []
        for r in range(3):
            msgs = [
                (f"r{r}-s{s}".encode(), dumps(anomaly(f"r{r}-s{s}", f"r{r}-z{s % 100}", now)))
                for _ in range(20)
                for s in range(1500)
            ]
            repeating.append(await throughput_round(proc, producer, topic, msgs))
            print(f"round {r} repeating: {repeating[-1]}", file=sys.stderr)
            msgs = [(f"f{r}-s{s}".encode(), dumps(anomaly(f"f{r}-s{s}", f"f{r}-z{s % 5}", now))) for s in range(10_000)]
            flood.append(await throughput_round(proc, producer, topic, msgs))
            print(f"round {r} flood: {flood[-1]}", file=sys.stderr)
        # Let the rounds' notifications drain: latency is measured on an idle worker.
        last, quiet_since = receiver.count, time.monotonic()
        while time.monotonic() - quiet_since < 3:
            await asyncio.sleep(0.25)
            if receiver.count != last:
                last, quiet_since = receiver.count, time.monotonic()

        latencies = []
        for i in range(200):
            zone = f"lat{i}"
            sent = time.time()
            await produce_all(producer, topic, [(zone.encode(), dumps(anomaly(f"lat-{i}", zone, int(sent * 1000))))])
            deadline = time.monotonic() + 10
            while zone not in receiver.arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if zone in receiver.arrivals:
                latencies.append((receiver.arrivals[zone] - sent) * 1000)
        slowest = sorted(range(len(latencies)), key=lambda i: -latencies[i])[:5]
        print(f"slowest samples (index, ms): {[(i, round(latencies[i])) for i in slowest]}", file=sys.stderr)
        latencies.sort()
        q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
        result = {
            "anomalies_per_s": statistics.median(r["per_s"] for r in repeating),
            "anomalies_per_s_flood": statistics.median(r["per_s"] for r in flood),
            "latency_ms": {
                "p50": round(statistics.median(latencies), 1),
                "p99": round(q[98], 1),
                "max": round(latencies[-1], 1),
                "deciles": [round(x, 1) for x in statistics.quantiles(latencies, n=10)],
                "samples": len(latencies),
                "lost": 200 - len(latencies),
            },
            "rounds": {"repeating": repeating, "flood": flood},
            "webhook_notifications": receiver.count,
            "setup": {
                "workers": 1,
                "partitions": settings.partitions,
                "tick_interval_s": 0.1,
                "group_wait_s": 0,
                "cores": os.cpu_count(),
                "note": "median of 3 rounds; throughput includes producing the round",
            },
        }
    finally:
        await producer.stop()
        proc.stop()
        await receiver.runner.cleanup()
        await delete_topics(settings)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


async def run() -> dict:
    """main(), cancelled cleanly on SIGTERM/SIGINT so the worker and topics are always cleaned up."""
    import signal

    task = asyncio.ensure_future(main())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


if __name__ == "__main__":
    out = asyncio.run(run())
    path = ROOT / "bench" / "results" / "alerts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(out).decode() + "\n")
    print(
        f"alerts: {out['anomalies_per_s']:.0f} anomalies/s (repeating), {out['anomalies_per_s_flood']:.0f}/s (flood); "
        f"anomaly→webhook p50 {out['latency_ms']['p50']} ms, p99 {out['latency_ms']['p99']} ms -> {path}"
    )
