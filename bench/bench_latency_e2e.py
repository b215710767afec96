"""End-to-end latency on the whole stack: a reading's send → readings.clean, scores, anomalies and a webhook.

Every service ``make demo`` runs (ingest, detector, forecaster, alerts, history) is started as a worker on
the local stack with a fresh topic prefix, a scratch history database and a small forecaster model. A load
generator (its own process, as a device fleet would be) writes ``--rate`` readings/s of ``--sensors`` pipe
sensors to readings.raw, each stamped with its send time as its ``ts`` (epoch ms); every few hundred
milliseconds one sensor not seen anomalous before sends a spike. The bench's output topics (readings.clean,
scores, anomalies) are created with ``message.timestamp.type=LogAppendTime``, so each record carries the time
the broker appended it: a reading's latency to a stage is that append time - ``ts`` (``appended_ms``, what the
targets judge: the moment the output exists for any consumer). The bench also consumes those topics and reports
arrival here - ``ts`` (``latency_ms``): on a machine short of CPU the bench's own consumer falls behind, and
that shows only in the arrival figures. A local webhook receiver on a route with
``group_wait: 0`` (one group per sensor) takes arrival - ``startsAt`` (the anomalous reading's ts) of the
first notification of each alert. Readings sent during the first ``--warmup`` seconds (new sensors, JIT
compilation, Faust's first rebalance settling) are not counted.

``--rounds`` rounds, each on freshly started services; the result is the median over rounds of each
round's p50/p90/p99/max. ``--baseline DIR`` runs the services of another checkout (e.g. the commit before
a change, ``git archive REV | tar -x -C DIR``) in alternate rounds of the same run, so before and after
share the machine's load; both are reported, with the ratio. The machine is shared: the JSON holds the
load average before and after each round and every service's CPU share over the measured window.

``--sse URL N`` runs N SSE clients on a console's ``/api/live`` until SIGTERM (a process of its own, as
browsers would be elsewhere); bench/bench_console_live.py uses it for what the live feed costs the pipeline.

Writes bench/results/latency_e2e.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.settings import Settings  # noqa: E402
from shared.topics import ANOMALIES, READINGS_CLEAN, SCORES, create_all  # noqa: E402
from tests.helpers import ServiceProcess, delete_topics, free_port  # noqa: E402

SERVICES = ["ingest", "detector", "forecaster", "alerts", "history"]  # scripts/demo.py's
STAGES = ("clean", "scores", "anomalies", "webhook")
TARGETS_P99_MS = {"scores": 100.0, "webhook": 250.0}

ALERTS_CONFIG = """
global:
  shard_by: [site, zone]
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {{site: "{{site}}", zone: "{{zone}}", sensor: "{{sensor_id}}", severity: "{{severity}}"}}
    annotations: {{summary: "Anomaly on {{sensor_id}}"}}
    resolve_after: 10m
route:
  receiver: hook
  group_by: [site, zone, sensor, alertname]
  group_wait: 0s
  group_interval: 5m
  repeat_interval: 4h
receivers:
  - name: hook
    webhook_configs: [{{url: "{url}"}}]
"""


# --- the load generator (a process of its own: python bench/bench_latency_e2e.py --generate ...) -----------


async def generate(bootstrap: str, topic: str, rate: float, seconds: float, sensors: int, spikes_per_s: float) -> dict:
    rng = random.Random(7)
    fleet = [
        {
            "sensor_id": f"e2e-z{i % 20:02d}-pipe{i:05d}",
            "zone": f"z{i % 20:02d}",
            "base": {"pressure": rng.uniform(430, 620), "flow": rng.uniform(60, 240)},
        }
        for i in range(sensors)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    sent, spikes, next_sensor = 0, 0, 0
    spiked: set[int] = set()
    count = [0] * sensors
    started = time.monotonic()
    last_ts: dict[int, int] = {}
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            spike_due = int(elapsed * spikes_per_s) - spikes
            for _ in range(due):
                i = next_sensor
                next_sensor = (next_sensor + 1) % sensors
                s = fleet[i]
                ts = int(time.time() * 1000)
                ts = max(ts, last_ts.get(i, 0) + 1)  # one sensor's readings strictly in time order
                last_ts[i] = ts
                factor = 1.0
                count[i] += 1
                # a spike only on a sensor with history (the detector judges after 10 readings), once per sensor
                if spike_due > 0 and i not in spiked and count[i] > 20:
                    spiked.add(i)
                    spike_due -= 1
                    spikes += 1
                    factor = 1.6
                values = {
                    "pressure": round(s["base"]["pressure"] * (1 + rng.gauss(0, 0.01)), 3),
                    "flow": round(s["base"]["flow"] * (1 + rng.gauss(0, 0.01)) * factor, 3),
                }
                value = orjson.dumps(
                    {
                        "sensor_id": s["sensor_id"],
                        "ts": ts,
                        "site": "e2e",
                        "zone": s["zone"],
                        "utility": "water",
                        "asset": "pipe",
                        "values": values,
                        "units": {"pressure": "kPa", "flow": "m3/h"},
                    }
                )
                await producer.send(topic, value, key=s["sensor_id"].encode())  # queued; acks not awaited
                sent += 1
            await asyncio.sleep(0.002)
        await producer.flush()
    finally:
        await producer.stop()
    return {"sent": sent, "spikes": spikes, "seconds": round(time.monotonic() - started, 3)}


# --- the live clients (a process of their own: python bench/bench_latency_e2e.py --sse URL N) ---------------


async def sse_clients(url: str, n: int) -> dict:
    """N SSE clients on ``url``/api/live until SIGTERM; their received events and reported drops."""
    import signal

    headers = {"Authorization": f"Bearer {os.environ['FLOWWATCH_BENCH_TOKEN']}"}  # not on the command line
    events, dropped, failed = [0] * n, [0] * n, [0]

    async def one(i: int, http: httpx.AsyncClient) -> None:
        try:
            async with http.stream("GET", f"{url}/api/live", headers=headers) as response:
                response.raise_for_status()
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "dropped":
                        dropped[i] = orjson.loads(line[6:])["dropped"]
                    elif line.startswith("data: ") and event != "hello":
                        events[i] += 1
        except httpx.HTTPError:
            failed[0] += 1

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None), limits=httpx.Limits(max_connections=n)) as http:
        tasks = [asyncio.ensure_future(one(i, http)) for i in range(n)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": n,
        "failed": failed[0],
        "events": sum(events),
        "min_per_client": min(events),
        "dropped": sum(dropped),
    }


# --- the bench ----------------------------------------------------------------------------------------------


class CodeProcess(ServiceProcess):
    """A service worker run from another checkout (``code``); the bench's own when ``code`` is ROOT."""

    def __init__(self, service: str, settings: Settings, code: Path, extra_env: dict[str, str]) -> None:
        super().__init__(service, settings, extra_env={**extra_env, "PYTHONPATH": str(code)})
        self.code = code

    def start(self) -> CodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}", "worker", "--loglevel", "warn"],
            cwd=self.code,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


class Receiver:
    """The webhook: arrival - startsAt of the first notification of each alert."""

    def __init__(self) -> None:
        self.port = free_port()
        self.latencies: list[tuple[int, float]] = []  # (startsAt ms, latency ms)
        self.seen: set[str] = set()
        self.notifications = 0

    async def handle(self, request: web.Request) -> web.Response:
        now_ms = time.time() * 1000
        body = orjson.loads(await request.read())
        self.notifications += 1
        for a in body.get("alerts", []):
            if a["status"] == "firing" and a["fingerprint"] not in self.seen:
                self.seen.add(a["fingerprint"])
                starts = _parse_ms(a["startsAt"])
                self.latencies.append((starts, now_ms - starts))
        return web.Response(text="ok")

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        """Serve on an event loop of its own thread: the bench's consumer decoding thousands of records in one
        turn of its loop must not hold a webhook (and its arrival time) up."""
        self.loop = asyncio.new_event_loop()
        up = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._serve())
            up.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
        self.thread.start()
        up.wait(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _parse_ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def wait_reading(proc: ServiceProcess, timeout: float) -> bool:
    """Until the service's pump reads its partitions (its /ready detail names them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "partitions [" in httpx.get(f"{proc.url}/ready", timeout=2).text:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"{proc.service} still reads no partition after {timeout}s", file=sys.stderr)
    return False


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process now and at its peak (MiB), from /proc (Linux)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss" if key == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return out


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def metrics_text(proc: ServiceProcess) -> str:
    try:
        return httpx.get(f"{proc.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def histograms(proc: ServiceProcess, since: str = "") -> dict[str, Any]:
    """From the service's /metrics, since ``since`` (an earlier :func:`metrics_text`; its start when empty): its garbage collections (``flowwatch_gc_pause_seconds``),
    how long its pump's periodic checkpoints kept it from reading (``flowwatch_pump_checkpoint_hold_seconds``), how
    late its event loop ran a timer (``flowwatch_event_loop_lag_seconds``) and where its pump's batches spent their
    time (``flowwatch_pump_step_seconds``, per step): count, seconds, mean, p50/p99 (the bucket bound reached) and
    how many took over 10 / 50 / 100 ms."""
    text = metrics_text(proc)
    if not text:
        return {}
    out: dict[str, Any] = {}
    for metric, name in (
        ("flowwatch_gc_pause_seconds", "gc_pauses"),
        ("flowwatch_pump_checkpoint_hold_seconds", "checkpoint_holds"),
        ("flowwatch_event_loop_lag_seconds", "loop_lag"),
    ):
        out[name] = _histogram(text, metric, since=since)
    steps = {line.split('step="', 1)[1].split('"', 1)[0] for line in text.splitlines() if "_step_seconds_count" in line}
    for step in sorted(steps):
        out[f"pump_{step}"] = _histogram(text, "flowwatch_pump_step_seconds", f'step="{step}"', since)
    batch = _histogram(text, "flowwatch_batch_size", since=since)
    out["batch_size"] = (
        {"count": batch["count"], "mean": round(batch["seconds"] / batch["count"], 1)} if batch["count"] else {}
    )
    return out


def _histogram(text: str, metric: str, having: str = "", since: str = "") -> dict[str, Any]:
    """One histogram of a Prometheus exposition, its label sets summed (those with ``having`` only), less what
    the exposition ``since`` held."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    for sign, exposition in ((1.0, text), (-1.0, since)):
        for line in exposition.splitlines():
            if not line.startswith(metric) or having not in line:
                continue
            key, _, value = line.rpartition(" ")
            if key.startswith(f"{metric}_count"):
                count += sign * float(value)
            elif key.startswith(f"{metric}_sum"):
                total += sign * float(value)
            elif key.startswith(f"{metric}_bucket"):
                bound = float(key.split('le="', 1)[1].split('"', 1)[0])
                buckets[bound] = buckets.get(bound, 0.0) + sign * float(value)

    def quantile(q: float) -> float | None:
        return next((b * 1000 for b, n in sorted(buckets.items()) if n >= q * count), None) if count else None

    within = {b: buckets.get(b, 0.0) for b in (0.01, 0.05, 0.1)}
    return {
        "count": int(count),
        "seconds": round(total, 3),
        "mean_ms": round(total / count * 1000, 2) if count else None,
        "p50_le_ms": quantile(0.5),
        "p99_le_ms": quantile(0.99),
        **{f"over_{int(b * 1000)}ms": int(count - n) for b, n in within.items()},
    }


def summary(values: list[float]) -> dict[str, Any]:
    if len(values) < 2:
        return {"samples": len(values)}
    q = statistics.quantiles(values, n=100)
    return {
        "p50": round(statistics.median(values), 1),
        "p90": round(q[89], 1),
        "p99": round(q[98], 1),
        "max": round(max(values), 1),
        "samples": len(values),
    }


OUTPUT_STAGES = {"clean": READINGS_CLEAN, "scores": SCORES, "anomalies": ANOMALIES}


async def stamp_appends(settings: Settings) -> None:
    """The output topics take the broker's append time as each record's timestamp (this bench's topics only).

    No service reads these topics' record timestamps (ingest reads readings.raw's, which keeps CreateTime).
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), client_id="bench-e2e")
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    settings.topic(t.name),
                    # the whole set: AlterConfigs resets what it is not given to the broker's defaults
                    configs={**t.config(), "message.timestamp.type": "LogAppendTime"},
                )
                for t in OUTPUT_STAGES.values()
            ]
        )
    finally:
        await admin.close()


async def timed_consumer(
    settings: Settings, stop: asyncio.Event, out: dict[str, list[tuple[int, float, float]]]
) -> None:
    topics = OUTPUT_STAGES
    names = {settings.topic(t.name): stage for stage, t in topics.items()}
    tps = [
        TopicPartition(settings.topic(t.name), p) for t in topics.values() for p in range(t.partitions_for(settings))
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            # Small takes: the arrival time is stamped after aiokafka decoded the whole take.
            batch = await consumer.getmany(timeout_ms=50, max_records=1_000)
            now_ms = time.time() * 1000
            for tp, records in batch.items():
                stage = out[names[tp.topic]]
                for r in records:
                    ts = orjson.loads(r.value).get("ts")
                    if isinstance(ts, int):
                        # and when the broker appended it (LogAppendTime: stamp_appends)
                        stage.append((ts, now_ms - ts, r.timestamp - ts))
    finally:
        await consumer.stop()


def train_forecaster(model_dir: Path) -> None:
    """The forecaster is ready only with a model: a small one (as the fault tests train) is enough here."""
    from services.forecaster.offline import synthetic
    from services.forecaster.offline.training import train
    from services.forecaster.settings import ForecasterSettings

    history = synthetic.generate(days=1.0, zones={"water": 2, "energy": 1}, incident_rate_per_day=6.0, seed=21)
    train(history, ForecasterSettings(), model_dir, epochs=1, seed=3, promote="production")


async def one_round(args: argparse.Namespace, code: Path, label: str, models: Path, tmp: Path) -> dict[str, Any]:
    from tests.history_helpers import scratch_database

    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    base = Settings.from_env()
    settings = base.replace(topic_prefix=prefix, data_dir=tmp / prefix / "data", model_dir=models)
    await create_all(settings, out=open(os.devnull, "w"))
    await stamp_appends(settings)
    receiver = Receiver()
    receiver.start()
    config = tmp / prefix / "alerts.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(ALERTS_CONFIG.format(url=f"http://127.0.0.1:{receiver.port}/hook"))
    procs: dict[str, CodeProcess] = {}
    stop = asyncio.Event()
    arrivals: dict[str, list[tuple[int, float, float]]] = {s: [] for s in STAGES if s != "webhook"}
    try:
        async with scratch_database() as db:
            env = {
                "FLOWWATCH_ALERTS_CONFIG_PATH": str(config),
                "FLOWWATCH_HISTORY_DATABASE_URL": db,
                "FLOWWATCH_LOG_LEVEL": "WARNING",
                **dict(kv.split("=", 1) for kv in args.env),
                **(dict(kv.split("=", 1) for kv in args.env_now) if label == "now" else {}),
            }
            for name in SERVICES:
                procs[name] = CodeProcess(name, settings, code, env).start()
            for name in procs:
                await asyncio.to_thread(procs[name].wait_ready, 300)
            for name in ("ingest", "detector"):  # ready may mean "no partitions assigned" for a moment
                await asyncio.to_thread(wait_reading, procs[name], 120)
            consumer = asyncio.ensure_future(timed_consumer(settings, stop, arrivals))
            await asyncio.sleep(1.0)
            load_before = os.getloadavg()
            gen = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).resolve()),
                "--generate",
                settings.bootstrap_servers,
                settings.topic("readings.raw"),
                str(args.rate),
                str(args.warmup + args.seconds),
                str(args.sensors),
                str(args.spikes_per_s),
                stdout=asyncio.subprocess.PIPE,
            )
            started_ms = time.time() * 1000
            await asyncio.sleep(args.warmup)
            cpu0 = {n: cpu_seconds(p.proc.pid) for n, p in procs.items() if p.proc}
            metrics0 = {n: await asyncio.to_thread(metrics_text, p) for n, p in procs.items()}
            t0 = time.monotonic()
            out, _ = await gen.communicate()
            window_s = time.monotonic() - t0
            pids = {n: p.proc.pid for n, p in procs.items() if p.proc}
            cpu = {n: round((cpu_seconds(pids[n]) - c) / window_s, 3) for n, c in cpu0.items()}
            # every sensor has been seen by now (the generator cycles through the fleet): memory at this fleet size
            rss = {n: rss_mb(pid) for n, pid in pids.items()}
            held = {n: await asyncio.to_thread(histograms, p, metrics0[n]) for n, p in procs.items()}
            # Until the outputs stop coming (a loaded machine may still be working off a backlog).
            deadline = time.monotonic() + args.drain
            counts: tuple[int, ...] = ()
            while time.monotonic() < deadline:
                await asyncio.sleep(2.0)
                now_counts = (*(len(v) for v in arrivals.values()), len(receiver.latencies))
                if now_counts == counts:
                    break
                counts = now_counts
            stop.set()
            await consumer
            load_after = os.getloadavg()
            # and once the outputs have stopped (a service behind at the end of the load holds more by then)
            rss_drained = {n: rss_mb(pid) for n, pid in pids.items()}
            generated = orjson.loads(out.splitlines()[-1]) if out else {}
            lo = started_ms + args.warmup * 1000
            lats = {stage: [lat for ts, lat, _ in got if ts >= lo] for stage, got in arrivals.items()}
            appended = {stage: [at for ts, _, at in got if ts >= lo] for stage, got in arrivals.items()}
            lats["webhook"] = [lat for ts, lat in receiver.latencies if ts >= lo]
            dead = [n for n, p in procs.items() if p.proc and p.proc.poll() is not None]
            if args.samples:
                # every (send ts, latency) per stage, for a look at when the slow readings were sent (stalls)
                samples = {**arrivals, "webhook": receiver.latencies}
                Path(args.samples).mkdir(parents=True, exist_ok=True)
                (Path(args.samples) / f"{label}-{prefix}json").write_bytes(orjson.dumps(samples))
    finally:
        stop.set()
        for p in procs.values():
            p.stop()
            if args.logs:
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                shutil.copy(p.log_path, Path(args.logs) / f"{label}-{prefix}{p.service}.log")
        receiver.stop()
        await delete_topics(settings)
        shutil.rmtree(tmp / prefix, ignore_errors=True)
    result = {
        "code": label,
        "latency_ms": {stage: summary(v) for stage, v in lats.items()},
        # the reading's send → the broker's append of the output (LogAppendTime): the same path without the
        # bench's own consumer (a bench process short of CPU on a loaded machine shows up as the difference)
        "appended_ms": {stage: summary(v) for stage, v in appended.items()},
        "generated": generated,
        "webhook_notifications": receiver.notifications,
        "cpu_share": cpu,  # CPU seconds per second of each service over the measured window
        "rss_mb": rss,  # each service's resident memory (MiB) at the end of the load, and its peak
        "rss_mb_drained": rss_drained,
        # each service's GC pauses, checkpoint holds, event-loop lag and pump steps over the measured window
        "stalls": held,
        "received": {stage: len(got) for stage, got in arrivals.items()},  # whatever their send time
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m_after": round(load_after[0], 2),
        "services_died": dead,
    }
    shown = ("appended_ms", "latency_ms", "cpu_share", "stalls")
    print(f"{label}: " + orjson.dumps({k: result[k] for k in shown}).decode(), file=sys.stderr)
    return result


def complete(r: dict[str, Any]) -> bool:
    """A round whose pipeline ran (a worker that never got its partitions leaves a stage without samples)."""
    return all(r["latency_ms"][stage].get("samples", 0) >= 2 for stage in ("clean", "scores"))


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds_counted": sum(map(complete, rounds))}
    rounds = [r for r in rounds if complete(r)] or rounds
    for stage in STAGES:
        per = [r["latency_ms"].get(stage, {}) for r in rounds]
        # over the rounds that have the stage (a round behind enough to see no spike has no webhook sample)
        out[stage] = {
            q: round(statistics.median(p[q] for p in per if q in p), 1) if any(q in p for p in per) else None
            for q in ("p50", "p90", "p99", "max")
        }
        out[stage]["samples"] = sum(p.get("samples", 0) for p in per)
    out["appended_ms"] = {}
    for stage in STAGES[:-1]:
        per = [r.get("appended_ms", {}).get(stage, {}) for r in rounds]
        out["appended_ms"][stage] = {
            q: round(statistics.median(p[q] for p in per if q in p), 1) if any(q in p for p in per) else None
            for q in ("p50", "p90", "p99", "max")
        }
    out["rss_mb"] = {
        name: round(statistics.median(r["rss_mb"][name]["rss"] for r in rounds), 1)
        for name in SERVICES
        if all(r.get("rss_mb", {}).get(name, {}).get("rss") for r in rounds)
    }
    out["cpu_share"] = {
        name: round(statistics.median(r["cpu_share"][name] for r in rounds), 3)
        for name in SERVICES
        if all(name in r.get("cpu_share", {}) for r in rounds)
    }
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    variants = [("now", ROOT)]
    if args.baseline:
        variants.insert(0, ("baseline", Path(args.baseline).resolve()))
    try:
        models = tmp / "models"
        await asyncio.to_thread(train_forecaster, models)
        rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
        for r in range(args.rounds):
            for label, code in variants if r % 2 == 0 else variants[::-1]:
                print(f"==> round {r + 1}/{args.rounds}: {label} ({code})", file=sys.stderr)
                rounds[label].append(await one_round(args, code, label, models, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {
        "median_of_rounds_ms": {label: medians(rs) for label, rs in rounds.items()},
        "targets_p99_ms": TARGETS_P99_MS,
        "rounds": rounds,
        "setup": {
            "rate_per_s": args.rate,
            "sensors": args.sensors,
            "measured_s": args.seconds,
            "warmup_s": args.warmup,
            "spikes_per_s": args.spikes_per_s,
            "env": args.env,
            "env_now": args.env_now,
            "services": SERVICES,
            "cores": os.cpu_count(),
            "group_wait_s": 0,
            "note": "appended_ms = the broker's append time of the output (LogAppendTime) - the reading's send "
            "time; latency_ms = arrival at the bench's consumer (or the webhook receiver) - the send time; median "
            "over rounds of each round's quantiles; rounds of 'baseline' and 'now' alternate on the same machine; "
            "targets: scores by appended_ms, webhook by arrival at the receiver",
        },
    }
    now = result["median_of_rounds_ms"]["now"]
    judged = {**now["appended_ms"], "webhook": now["webhook"]}
    result["targets_met"] = {stage: (judged[stage]["p99"] or 1e9) < t for stage, t in TARGETS_P99_MS.items()}
    if args.baseline:
        before = result["median_of_rounds_ms"]["baseline"]
        result["speedup"] = {
            stage: {
                q: round(before[stage][q] / now[stage][q], 2) if before[stage][q] and now[stage][q] else None
                for q in ("p50", "p90", "p99")
            }
            for stage in STAGES
        }
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """main(), cancelled cleanly on SIGTERM/SIGINT so workers, topics and the database are always cleaned up."""
    import signal

    task = asyncio.ensure_future(main(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        bootstrap, topic, rate, seconds, sensors, spikes = sys.argv[2:8]
        done = asyncio.run(generate(bootstrap, topic, float(rate), float(seconds), int(sensors), float(spikes)))
        print(orjson.dumps(done).decode())
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--sse":
        print(orjson.dumps(asyncio.run(sse_clients(sys.argv[2], int(sys.argv[3])))).decode())
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=5000.0, help="readings/s written to readings.raw")
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of load before the measured window")
    p.add_argument("--drain", type=float, default=60.0, help="longest wait for the last outputs (seconds)")
    p.add_argument("--spikes-per-s", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--logs", help="directory to keep the services' logs in")
    p.add_argument("--samples", help="directory to write every (send ts, latency) per stage and round to")
    p.add_argument("--baseline", help="another checkout whose services run in alternate rounds (before/after)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every service (repeatable), e.g. lifting the new-sensor budgets for a large fleet",
    )
    p.add_argument(
        "--env-now",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for this checkout's rounds only: with --baseline naming a copy of this checkout, "
        "a setting's before/after in one run",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_e2e.json")
    args = p.parse_args()
    out = asyncio.run(run(args))
    path = args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    for label, m in out["median_of_rounds_ms"].items():
        print(
            f"e2e latency ({label}), appended: "
            + "; ".join(
                f"{s} p50 {m['appended_ms'][s]['p50']} / p99 {m['appended_ms'][s]['p99']} ms" for s in STAGES[:-1]
            )
            + f"; webhook p50 {m['webhook']['p50']} / p99 {m['webhook']['p99']} ms"
            + "; at the bench's consumer: "
            + "; ".join(f"{s} p50 {m[s]['p50']} / p99 {m[s]['p99']} ms" for s in STAGES[:-1])
            + f" -> {path}"
        )


if __name__ == "__main__":
    cli()
