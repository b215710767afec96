"""Ingest throughput and latency with the real broker and one worker.

Throughput: ``--readings`` readings (realistic mix of utilities, assets, units and
timestamp formats, keyed by sensor_id as the simulator and the HTTP/MQTT doors key them)
are written to readings.raw *before* the worker starts; the worker then drains the
backlog. Readings/s = readings / (last - first readings.clean append time), so start-up
and the bench's own consumer are not counted. Repeated ``--rounds`` times (the worker is
stopped, a fresh backlog written, the worker restarted on its state); the median is reported.

The reference machine is shared (other services, tests and the broker run on the same two
cores), so each round also reports the worker's own CPU time (from /proc) over the drain:
``readings_per_worker_cpu_second`` is what one uncontended core would sustain if the broker
kept up, and ``machine_load_avg_1m_at_end`` says how busy the machine was.

Latency: readings are then produced at a steady ``--rate`` for ``--seconds``; the latency
of each is its readings.clean append time minus its readings.raw append time (the reading's
``received_ms``): decode, validate, state, produce and the micro-batch wait included.

``--baseline DIR`` runs another checkout's worker (``git archive REV | tar -x -C DIR``, with ``.venv``
linked) in the same run: each round writes one backlog to both workers' topics (each has its own topics
and state) and drains it with one, then the other, the order alternating round by round; the latency
phase runs on each too. Both are in the JSON (``baseline``, ``over_baseline``, ``over_baseline_cpu``).

Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_latency_e2e import CodeProcess  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import delete_topics, produce  # noqa: E402

ASSETS = [
    ("water", "pipe", {"pressure": (430, 620, "kPa"), "flow": (40, 260, "m3/h")}),
    ("water", "pump", {"flow": (120, 420, "m3/h"), "pressure": (620, 780, "kPa"), "current": (12, 140, "A"),
                       "power": (8, 90, "kW"), "vibration": (1, 3, "mm/s"), "bearing_temperature": (30, 60, "C")}),
    ("water", "reservoir", {"level": (3, 7, "m"), "temperature": (9, 15, "C")}),
    ("water", "quality_station", {"ph": (7.1, 7.8, "pH"), "turbidity": (0.1, 0.5, "NTU"), "chlorine": (0.3, 0.9, "mg/L"),
                                  "conductivity": (280, 720, "uS/cm"), "temperature": (9, 15, "C")}),
    ("energy", "meter", {"energy": (0.1, 2, "kWh"), "power": (6, 120, "kW"), "voltage": (226, 234, "V"), "current": (5, 60, "A")}),
    ("gas", "gas_station", {"pressure": (380, 720, "kPa"), "pressure_diff": (15, 60, "kPa"), "flow": (400, 3000, "m3/h"),
                            "temperature": (6, 13, "C"), "density": (0.7, 0.8, "kg/m3")}),
]  # fmt: skip
TARGET_PER_S = 60_000
DEVICE_UNITS = {"kPa": ("psi", 0.14503773773), "m3/h": ("L/s", 1 / 3.6), "kWh": ("Wh", 1000.0)}


def make_sensors(n: int, rng: random.Random) -> list[dict[str, Any]]:
    sensors = []
    for i in range(n):
        utility, asset, metrics = ASSETS[i % len(ASSETS)]
        sensors.append(
            {
                "sensor_id": f"site{i % 4}-z{i % 20:02d}-{asset}{i:05d}",
                "site": f"site{i % 4}",
                "zone": f"site{i % 4}-z{i % 20:02d}",
                "utility": utility,
                "asset": asset,
                "metrics": metrics,
                "device_units": rng.random() < 0.1,  # a few devices report psi / L/s / Wh
                "ts_format": rng.choices(["ms", "iso", "s"], weights=[8, 1, 1])[0],
            }
        )
    return sensors


def payload(sensor: dict[str, Any], ts_ms: int, rng: random.Random) -> bytes:
    values: dict[str, float] = {}
    units: dict[str, str] = {}
    for name, (lo, hi, unit) in sensor["metrics"].items():
        v = rng.uniform(lo, hi)
        if sensor["device_units"] and unit in DEVICE_UNITS:
            unit, scale = DEVICE_UNITS[unit]
            v *= scale
        values[name] = round(v, 3)
        units[name] = unit
    fmt = sensor["ts_format"]
    ts: Any = ts_ms
    if fmt == "iso":
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms / 1000)) + f".{ts_ms % 1000:03d}Z"
    elif fmt == "s":
        ts = ts_ms / 1000
    return orjson.dumps(
        {
            "sensor_id": sensor["sensor_id"],
            "ts": ts,
            "site": sensor["site"],
            "zone": sensor["zone"],
            "utility": sensor["utility"],
            "asset": sensor["asset"],
            "values": values,
            "units": units,
            "quality": 0.97,
        }
    )


class Clock:
    """Unique, increasing device timestamps per sensor (no accidental duplicates)."""

    def __init__(self, start_ms: int) -> None:
        self.next_ms: dict[str, int] = {}
        self.start_ms = start_ms

    def tick(self, sensor_id: str) -> int:
        ts = self.next_ms.get(sensor_id, self.start_ms)
        self.next_ms[sensor_id] = ts + 1000  # one reading per second per sensor, in device time
        return ts


async def drain(consumer: AIOKafkaConsumer, count: int, timeout: float) -> list[tuple[int, int]]:
    """(append time, received_ms) of ``count`` readings.clean messages."""
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500, max_records=10000)
        for records in batch.values():
            for r in records:
                out.append((r.timestamp, orjson.loads(r.value)["received_ms"]))
    if len(out) < count:
        raise RuntimeError(f"only {len(out)} of {count} readings reached readings.clean within {timeout}s")
    return out


def gc_pauses(url: str) -> tuple[float, int]:
    """Seconds and number of the worker's garbage collections since its pump started (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    seconds, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("flowwatch_gc_pause_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
        elif line.startswith("flowwatch_gc_pause_seconds_count{"):
            count += int(float(line.rsplit(" ", 1)[1]))
    return seconds, count


class CpuSampler:
    """The worker's CPU time (user+system, from /proc) sampled every 50 ms, to normalise for a busy machine."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _cpu(self) -> float | None:
        try:
            fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self._tick

    def _run(self) -> None:
        while not self._stop.is_set():
            cpu = self._cpu()
            if cpu is not None:
                self.samples.append((time.time(), cpu))
            self._stop.wait(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_at(self, t: float) -> float:
        before = [c for ts, c in self.samples if ts <= t]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0.0)

    def cpu_between(self, start: float, end: float) -> float:
        return self.cpu_at(end + 0.05) - self.cpu_at(start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Variant:
    """One checkout's worker with topics, state and a readings.clean reader of its own (``--baseline``: two)."""

    def __init__(self, label: str, code: Path, args: argparse.Namespace, work: Path) -> None:
        self.label = label
        self.code = code
        self.settings = Settings.from_env("ingest").replace(
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", data_dir=work / label, partitions=args.partitions
        )
        env = {
            "FLOWWATCH_INGEST_MQTT_ENABLED": "false",
            "FLOWWATCH_INGEST_MAX_AGE_S": "0",  # the backlog is stamped hours ago on purpose
            "FLOWWATCH_LOG_LEVEL": "WARNING",
        }
        self.proc = CodeProcess("ingest", self.settings, code, env)
        self.consumer = AIOKafkaConsumer(
            self.settings.topic("readings.clean"),
            bootstrap_servers=self.settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        self.rounds: list[float] = []
        self.per_cpu_s: list[float] = []
        self.loads: list[float] = []
        self.gc_s: list[float] = []
        self.gc_n: list[int] = []
        self.latencies: list[float] = []
        self.metrics_text = ""

    async def start(self) -> None:
        await create_all(self.settings, out=open("/dev/null", "w"))
        await self.consumer.start()

    async def round(self, r: int, messages: list[tuple[bytes, bytes]]) -> None:
        """Drain ``messages`` written while the worker is down (restarting also replays its recovery)."""
        proc, n = self.proc, len(messages)
        proc.stop()
        await produce(self.settings, "readings.raw", messages)
        proc.start()
        sampler = CpuSampler(proc.proc.pid)  # type: ignore[union-attr]
        sampler.start()
        await asyncio.to_thread(proc.wait_ready, 180)
        got = await drain(self.consumer, n, timeout=300)
        sampler.stop()
        pauses, collections = await asyncio.to_thread(gc_pauses, proc.url)
        self.gc_s.append(pauses)
        self.gc_n.append(collections)
        stamps = [t for t, _ in got]
        first, last = min(stamps) / 1000, max(stamps) / 1000
        seconds = last - first
        cpu = sampler.cpu_between(first, last)
        self.rounds.append(n / seconds)
        self.per_cpu_s.append(n / cpu if cpu > 0 else 0.0)
        self.loads.append(os.getloadavg()[0])
        print(
            f"round {r + 1} {self.label}: {n} readings in {seconds:.2f}s = {self.rounds[-1]:,.0f}/s; "
            f"worker CPU {cpu:.2f}s = {self.per_cpu_s[-1]:,.0f} readings per CPU-second; "
            f"garbage collections {collections} taking {pauses:.2f}s; load {self.loads[-1]:.2f}",
            flush=True,
        )

    async def latency(self, args: argparse.Namespace, backlog: Any) -> None:
        """Readings at a steady rate below capacity: readings.clean append time - readings.raw append time."""
        proc = self.proc
        if proc.proc is None or proc.proc.poll() is not None:
            proc.start()
            await asyncio.to_thread(proc.wait_ready, 180)
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=1)
        await producer.start()
        try:
            total = int(args.rate * args.seconds)
            topic = self.settings.topic("readings.raw")
            started = time.monotonic()
            step = 0.01
            sent = 0
            while sent < total:
                due = min(total, int((time.monotonic() - started) * args.rate) + 1)
                for key, value in backlog(due - sent):
                    await producer.send(topic, value, key=key)
                sent = due
                await asyncio.sleep(step)
            await producer.flush()
            got = await drain(self.consumer, total, timeout=120)
            self.latencies = [(t - received) / 1000 for t, received in got]
        finally:
            await producer.stop()
        self.metrics_text = httpx.get(f"{proc.url}/metrics", timeout=5).text
        proc.stop()

    async def close(self) -> None:
        await self.consumer.stop()
        self.proc.stop()
        await delete_topics(self.settings)

    def report(self) -> dict[str, Any]:
        latencies = self.latencies
        return {
            "code": str(self.code),
            "throughput_per_s": [round(x) for x in self.rounds],
            "throughput_median_per_s": round(statistics.median(self.rounds)),
            "readings_per_worker_cpu_second": [round(x) for x in self.per_cpu_s],
            "readings_per_worker_cpu_second_median": round(statistics.median(self.per_cpu_s)),
            "machine_load_avg_1m_after_each_round": self.loads,
            # the collector's pauses over the worker's life since its pump started (start-up and drain)
            "gc_collections": self.gc_n,
            "gc_pause_seconds": [round(x, 3) for x in self.gc_s],
            "latency_readings": len(latencies),
            "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "latency_max_ms": round(max(latencies) * 1000, 2),
            "worker_duplicates_total": _metric(self.metrics_text, "flowwatch_ingest_duplicates_total"),
            "worker_quarantined_total": _metric(self.metrics_text, "flowwatch_ingest_quarantined_total"),
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    sensors = make_sensors(args.sensors, rng)
    clock = Clock(int(time.time() * 1000) - 6 * 3600 * 1000)

    def backlog(n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(n):
            s = sensors[i % len(sensors)]
            out.append((s["sensor_id"].encode(), payload(s, clock.tick(s["sensor_id"]), rng)))
        return out

    variants = [Variant("now", ROOT, args, work)]
    if args.baseline:
        variants.insert(0, Variant("baseline", args.baseline.resolve(), args, work))
    load_at_start = os.getloadavg()[0]
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        for v in variants:
            await v.start()
        for r in range(args.rounds):
            # The same backlog for every variant of a round, which alternate in order round by round.
            messages = backlog(args.readings)
            for v in variants if r % 2 == 0 else variants[::-1]:
                await v.round(r, messages)
        for v in variants:
            await v.latency(args, backlog)
    finally:
        for v in variants:
            await v.close()
        shutil.rmtree(work, ignore_errors=True)
    now = variants[-1].report()
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "what": "readings/s from readings.raw to readings.clean, one worker, real broker; latency raw->clean",
        "readings_per_round": args.readings,
        "rounds": args.rounds,
        "sensors": args.sensors,
        "partitions": args.partitions,
        **{k: v for k, v in now.items() if k != "code"},
        "started_at": started_at,
        "machine_load_avg_1m_at_start": load_at_start,
        "machine_load_avg_1m_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "latency_rate_per_s": args.rate,
        # issue 19 item 4: native readings, one worker, through the broker (by the wall clock)
        "target_per_s": TARGET_PER_S,
        "target_met": now["throughput_median_per_s"] >= TARGET_PER_S,
    }
    if args.baseline:
        base = variants[0].report()
        result["baseline"] = base
        result["over_baseline"] = round(now["throughput_median_per_s"] / base["throughput_median_per_s"], 3)
        result["over_baseline_cpu"] = round(
            now["readings_per_worker_cpu_second_median"] / base["readings_per_worker_cpu_second_median"], 3
        )
    return result


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000, help="readings per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sensors", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=5_000, help="readings/s for the latency phase")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ingest.json")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (git archive REV | tar -x -C DIR) whose worker runs the same rounds, alternating",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
