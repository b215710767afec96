"""Alerts benchmark: anomalies/s one worker absorbs, and anomaly → webhook latency p50/p99.

Each round runs one real alerts worker (``python -m services.alerts worker``) on the local
stack with a fresh topic prefix and a local webhook receiver on 127.0.0.1:

* ``repeating``: 30,000 anomalies from 1,500 sensors in 100 zones (each sensor
  flagged 20 times) — what a bad hour looks like; written as record batches (a producer
  ``send`` per message was slower than the worker), timed until the worker has read and
  applied them all;
* ``flood``: 10,000 anomalies from 10,000 different sensors in 5 zones — the worst
  case for state (every anomaly a new alert until the rate limit folds them);
* latency: once the worker is quiet again, 200 anomalies, each the first of a new zone
  (a new group), produced one by one by a producer without linger (as the detector's);
  the time until the webhook receiver has the notification. group_wait is 0 here and the
  tick 100 ms, so this is the pipeline's own latency: add group_wait in production.

Each throughput round also reads the worker's CPU time (``/proc/<pid>/stat``): anomalies per CPU-second
are what a worker costs whatever share of the machine it got (the figure to compare on a loaded machine),
and ``worker_cpu_ms_per_sample`` is the worker's CPU per latency sample (an anomaly, its alert, its webhook).

Three rounds (``--rounds``); the result is the median over rounds of each round's figures.
``--baseline DIR`` runs another checkout's service (``git archive REV | tar -x -C DIR``) in
alternate rounds of the same run, so before and after share the machine's load. Writes
bench/results/alerts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
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

from bench.bench_latency_e2e import CodeProcess  # noqa: E402
from shared.batching import Outbox, PartitionMap  # noqa: E402
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


def metric(text: str, pattern: str) -> float | None:
    m = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(m.group(1)) if m else None


def progress(url: str) -> tuple[float, float | None]:
    """Anomalies read by the evaluate stage, and rule hits still waiting for the state stage (None: no metric)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    read = metric(text, r'flowwatch_events_in_total\{service="alerts",topic="anomalies"\}') or 0.0
    forwarded = metric(text, r'flowwatch_alerts_observations_total\{stage="forwarded"\}')
    applied = metric(text, r'flowwatch_alerts_observations_total\{stage="applied"\}')
    return read, None if forwarded is None else forwarded - (applied or 0.0)


async def produce_all(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    futures = [await producer.send(topic, value, key=key) for key, value in messages]
    await producer.flush()
    await asyncio.gather(*futures)


async def produce_batched(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """A round's anomalies as record batches, each key on the partition Kafka's default partitioner gives it.

    ``producer.send`` per message took 1-2 s for 30,000 on this machine, beside the worker on the same two
    cores: the round could not be absorbed faster than the bench wrote it (docs/performance.md, third pass).
    """
    partition = PartitionMap(len(await producer.partitions_for(topic)))
    box = Outbox(producer)
    for key, value in messages:
        box.add(topic, partition(key), key, value)
    await box.flush()


async def applied(proc: ServiceProcess, timeout: float = 300, poll_s: float = 0.25) -> bool:
    """Wait until the state stage has applied every rule hit the evaluate stage sent on (False: no such metric)."""
    deadline = time.monotonic() + timeout
    while True:
        _, waiting = progress(proc.url)
        if waiting is None:
            return False
        if waiting <= 0:
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"the state stage still had {waiting} rule hits to apply after {timeout} s")
        await asyncio.sleep(poll_s)


def cpu_times(proc: ServiceProcess) -> tuple[float, float]:
    """CPU time (user, system) the worker process has used so far."""
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(proc: ServiceProcess) -> float:
    """CPU time (user + system) the worker process has used so far."""
    return sum(cpu_times(proc))


class Profile:
    """py-spy sampling the worker over one throughput round (``--profile DIR``): raw stacks, one file a round."""

    def __init__(self, proc: ServiceProcess, out: Path | None) -> None:
        self.proc, self.out, self.spy = proc, out, None

    def __enter__(self) -> Profile:
        if self.out is not None:
            assert self.proc.proc is not None
            spy = Path(sys.executable).with_name("py-spy")
            cmd = [str(spy), "record", "-p", str(self.proc.proc.pid), "-r", "250", "-f", "raw", "-o", str(self.out)]
            self.spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # py-spy attached before the round starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            self.spy.wait(timeout=30)


async def throughput_round(
    proc: ServiceProcess, producer: AIOKafkaProducer, topic: str, messages, profile: Path | None = None
) -> dict:
    """Seconds until the worker has absorbed the round: read it, and (where the metric exists) applied its hits.

    Also the worker's CPU seconds meanwhile (deliveries the round set off included): anomalies per CPU-second
    say what the worker costs whatever share of the machine it got.
    """
    with Profile(proc, profile):
        return await _throughput_round(proc, producer, topic, messages)


async def _throughput_round(proc: ServiceProcess, producer: AIOKafkaProducer, topic: str, messages) -> dict:
    before = progress(proc.url)[0]
    user_before, sys_before = cpu_times(proc)
    started = time.monotonic()
    await produce_batched(producer, topic, messages)
    produced_s = time.monotonic() - started
    deadline = time.monotonic() + 300
    while (read := progress(proc.url)[0]) - before < len(messages):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker read {read - before} of {len(messages)} in 300 s")
        # Rendering /metrics costs the worker CPU: polled hard only near the end, which it then times to ~20 ms.
        await asyncio.sleep(0.25 if read - before < 0.9 * len(messages) else 0.02)
    read_s = time.monotonic() - started
    state_measured = await applied(proc, poll_s=0.02)
    elapsed = time.monotonic() - started
    user, system = (a - b for a, b in zip(cpu_times(proc), (user_before, sys_before), strict=True))
    cpu = user + system
    return {"messages": len(messages), "seconds": round(elapsed, 3), "read_seconds": round(read_s, 3),
            "state_stage_measured": state_measured, "produce_seconds": round(produced_s, 3),
            "per_s": round(len(messages) / elapsed), "worker_cpu_s": round(cpu, 2),
            "worker_sys_cpu_s": round(system, 2),
            "per_cpu_s": round(len(messages) / cpu) if cpu > 0 else None}  # fmt: skip


async def quiet(receiver: Receiver, for_s: float = 3.0) -> None:
    """Wait until no notification has arrived for ``for_s`` (the rounds' notifications drained)."""
    last, quiet_since = receiver.count, time.monotonic()
    while time.monotonic() - quiet_since < for_s:
        await asyncio.sleep(0.25)
        if receiver.count != last:
            last, quiet_since = receiver.count, time.monotonic()


def quantiles(latencies: list[float], lost: int) -> dict:
    latencies = sorted(latencies)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "p50": round(statistics.median(latencies), 1) if latencies else None,
        "p90": round(q[89], 1),
        "p99": round(q[98], 1),
        "max": round(latencies[-1], 1) if latencies else None,
        "samples": len(latencies),
        "lost": lost,
    }


async def one_round(code: Path, label: str, r: int, profile: Path | None = None) -> dict:
    """A fresh worker of checkout ``code``: the throughput rounds, then the latency samples on the quiet worker."""
    base = Settings.from_env("alerts")
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    settings = base.replace(topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", data_dir=tmp / "data", partitions=4)
    await create_all(settings, out=open(os.devnull, "w"))
    receiver = Receiver()
    await receiver.start()
    config = tmp / "alerts.yaml"
    config.write_text(CONFIG.format(url=f"http://127.0.0.1:{receiver.port}/hook"))
    env = {
        "FLOWWATCH_ALERTS_CONFIG_PATH": str(config),
        "FLOWWATCH_ALERTS_TICK_INTERVAL_S": "0.1",
        "FLOWWATCH_ALERTS_BATCH_WITHIN_S": "0.01",
        "FLOWWATCH_LOG_LEVEL": "WARNING",
    }
    proc = CodeProcess("alerts", settings, code, env)
    proc.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=10, max_batch_size=512 * 1024)
    await producer.start()
    single = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=0)
    await single.start()
    topic = settings.topic("anomalies")
    try:
        await asyncio.to_thread(proc.wait_ready, 300)  # a start-up at a load average of 13 took over 120 s
        now = int(time.time() * 1000)
        await produce_all(producer, topic, [(b"warm", dumps(anomaly("warm", "warm", now)))])
        await asyncio.sleep(2)
        msgs = [
            (f"r{r}-s{s}".encode(), dumps(anomaly(f"r{r}-s{s}", f"r{r}-z{s % 100}", now)))
            for _ in range(20)
            for s in range(1500)
        ]
        prof = profile / f"{label}-{r + 1}-repeating.raw" if profile else None
        repeating = await throughput_round(proc, producer, topic, msgs, prof)
        msgs = [(f"f{r}-s{s}".encode(), dumps(anomaly(f"f{r}-s{s}", f"f{r}-z{s % 5}", now))) for s in range(10_000)]
        prof = profile / f"{label}-{r + 1}-flood.raw" if profile else None
        flood = await throughput_round(proc, producer, topic, msgs, prof)
        await applied(proc)  # latency is measured on an idle worker: nothing left for the state stage
        await quiet(receiver)  # and the rounds' notifications delivered
        latencies = []
        cpu_before = cpu_seconds(proc)
        for i in range(200):
            zone = f"lat{i}"
            sent = time.time()
            await produce_all(single, topic, [(zone.encode(), dumps(anomaly(f"lat-{i}", zone, int(sent * 1000))))])
            deadline = time.monotonic() + 10
            while zone not in receiver.arrivals and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if zone in receiver.arrivals:
                latencies.append((receiver.arrivals[zone] - sent) * 1000)
        latency_cpu_ms = (cpu_seconds(proc) - cpu_before) * 1000 / 200
        slowest = sorted(range(len(latencies)), key=lambda i: -latencies[i])[:5]
        out = {
            "repeating": repeating,
            "flood": flood,
            "latency_ms": quantiles(latencies, 200 - len(latencies)),
            "worker_cpu_ms_per_sample": round(latency_cpu_ms, 2),  # an anomaly, its alert and its webhook
            "slowest_samples": [(i, round(latencies[i])) for i in slowest],
            "webhook_notifications": receiver.count,
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        print(f"{label} round {r + 1}: {dumps(out).decode()}", file=sys.stderr)
        return out
    finally:
        await producer.stop()
        await single.stop()
        proc.stop()
        await receiver.runner.cleanup()
        await delete_topics(settings)
        shutil.rmtree(tmp, ignore_errors=True)


def medians(rounds: list[dict]) -> dict:
    def med(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return round(statistics.median(got), 1) if got else None

    return {
        "anomalies_per_s": med([r["repeating"]["per_s"] for r in rounds]),
        "anomalies_per_cpu_s": med([r["repeating"].get("per_cpu_s") for r in rounds]),
        "anomalies_per_s_flood": med([r["flood"]["per_s"] for r in rounds]),
        "anomalies_per_cpu_s_flood": med([r["flood"].get("per_cpu_s") for r in rounds]),
        "worker_cpu_ms_per_latency_sample": med([r.get("worker_cpu_ms_per_sample") for r in rounds]),
        "loadavg_1m": med([r.get("loadavg_1m") for r in rounds]),
        "latency_ms": {q: med([r["latency_ms"][q] for r in rounds]) for q in ("p50", "p90", "p99", "max")},
        "lost": sum(r["latency_ms"]["lost"] for r in rounds),
    }


# The two stages' own CPU per anomaly, in one process, without Kafka, tables or deliveries: the repeating round's
# 30,000 anomalies through evaluate_batch (1,000 a batch, as the pump's fetches), then their internal messages
# through the state stage (32 messages a batch per partition, over overlays of dicts, each batch closed by the
# end-of-batch flush). CPU time, so the machine's other load changes it little. Run with the checkout on
# sys.path (the code measured); it uses only what both versions have.
STAGES = """
import json, sys, time
import yaml
from bench.bench_alerts import CONFIG, anomaly
try:
    from services.alerts import pipeline as P
except ImportError:  # before the alerts modules were renamed (processor.py -> pipeline.py)
    from services.alerts import processor as P
from services.alerts.config import parse_config
from services.alerts.evaluate import FloodGate, decode_internal, evaluate_batch, internal_messages
from services.alerts.overlay import Overlay
from services.alerts.settings import AlertsSettings
from shared.codec import dumps

config = parse_config(yaml.safe_load(CONFIG.format(url="http://127.0.0.1:1/hook")))
now = int(time.time() * 1000)
recs = [("anomalies", dumps(anomaly(f"s{i}", f"z{i % 100}", now))) for _ in range(20) for i in range(1500)]
gate, msgs = FloodGate(), []
t0 = time.process_time()
for i in range(0, len(recs), 1000):
    msgs += internal_messages(evaluate_batch(config, recs[i : i + 1000], 60, gate=gate), config, 4)
t1 = time.process_time()
tables = {n: {} for n in ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")}
schedule, pending, fuse = P.Schedule(), {}, getattr(P, "fuse", lambda values: values)
for i in range(0, len(msgs), 32):
    by_p = {}
    for p, v in msgs[i : i + 32]:
        by_p.setdefault(p, []).append(v)
    for p, vals in by_p.items():
        overlays = {n: Overlay(t) for n, t in tables.items()}
        proc = P.Processor(config, AlertsSettings(), **overlays, silences={}, schedule=schedule, pending_counts=pending)
        for v in fuse([decode_internal(v) for v in vals]):
            proc.handle(v, p, time.time())
        proc.handle({"type": "tick"}, p, time.time())
        for o in overlays.values():
            o.flush()
t2 = time.process_time()
print(json.dumps({"evaluate_per_s": round(len(recs) / (t1 - t0)), "state_per_s": round(len(recs) / (t2 - t1)),
                  "alerts": len(tables["alerts"]), "groups": len(tables["groups"])}))
"""


def stage_cpu(code: Path) -> dict:
    """One run of :data:`STAGES` over checkout ``code`` (its services, this bench's workload)."""
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    script = f"import sys; sys.path[:0] = [{str(code)!r}, {str(ROOT)!r}]\n" + STAGES
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=code, capture_output=True, check=True)
    return loads(out.stdout.splitlines()[-1])


async def main(args: argparse.Namespace) -> dict:
    variants = [("now", ROOT)]
    if args.baseline:
        variants.insert(0, ("baseline", Path(args.baseline).resolve()))
    rounds: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for r in range(args.rounds):
        for label, code in variants if r % 2 == 0 else variants[::-1]:
            rounds[label].append(await one_round(code, label, r, args.profile))
    by_variant = {label: medians(rs) for label, rs in rounds.items()}
    stages: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for r in range(args.stage_runs):
        for label, code in variants if r % 2 == 0 else variants[::-1]:
            stages[label].append(await asyncio.to_thread(stage_cpu, code))
    for label, runs in stages.items():
        by_variant[label]["stages_cpu"] = {
            k: statistics.median(run[k] for run in runs) for k in ("evaluate_per_s", "state_per_s")
        } if runs else {}  # fmt: skip
    now = by_variant["now"]
    result = {
        **{k: now[k] for k in ("anomalies_per_s", "anomalies_per_cpu_s", "anomalies_per_s_flood", "latency_ms")},
        "targets": {"latency_p99_ms": 50, "anomalies_per_s": 20_000},
        "median_of_rounds": by_variant,
        "rounds": rounds,
        "stage_runs": stages,
        "setup": {
            "workers": 1,
            "partitions": 4,
            "tick_interval_s": 0.1,
            "batch_within_s": 0.01,
            "group_wait_s": 0,
            "group_interval_s": 1,
            "cores": os.cpu_count(),
            "baseline": str(args.baseline or ""),
            "note": "median over rounds of each round's figures; a fresh worker per round; throughput includes "
            "producing the round; rounds of 'baseline' and 'now' alternate on the same machine",
        },
    }
    return result


async def run(args: argparse.Namespace) -> dict:
    """main(), cancelled cleanly on SIGTERM/SIGINT so the worker and topics are always cleaned up."""

    task = asyncio.ensure_future(main(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", help="another checkout whose service runs in alternate rounds (before/after)")
    p.add_argument(
        "--profile", type=Path, help="directory for py-spy's raw stacks of the worker in each throughput round"
    )
    p.add_argument("--stage-runs", type=int, default=5, help="in-process CPU-time runs of the two stages per variant")
    out = asyncio.run(run(p.parse_args()))
    path = ROOT / "bench" / "results" / "alerts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(out).decode() + "\n")
    print(
        f"alerts: {out['anomalies_per_s']:.0f} anomalies/s (repeating), {out['anomalies_per_s_flood']:.0f}/s (flood); "
        f"anomaly→webhook p50 {out['latency_ms']['p50']} ms, p99 {out['latency_ms']['p99']} ms -> {path}"
    )
