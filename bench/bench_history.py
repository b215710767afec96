"""History: sink throughput and the p95 of every query endpoint over 30 days of the default network.

Load: the simulator's default network (seed 7) over ``--days`` days on a ``--step`` grid, as the
pipeline would have said it: every clean reading on readings.clean, incident readings as anomalies
(with scores), per-zone five-minute aggregates and risk records, a firing alert and an incident label
per simulated incident, quarantined inputs for the simulator's corrupt messages. All of it is
produced to Kafka first (a bench-unique topic prefix, a scratch database; whole per-partition batches,
keyed as the services key them, so 30 days take minutes), then one history worker
(`python -m services.history worker`, the real sink) drains the backlog.

Throughput: messages and readings per second from the first committed batch to the last (polled in
PostgreSQL's sink_offsets), so start-up is not counted; the worker's CPU seconds over the drain come
from /proc. The machine is shared: ``machine_load_avg_1m`` says how busy it was.

Queries: each endpoint is called ``--repeat`` times with realistic parameters over the loaded range;
p50/p95 in milliseconds, target p95 < 200 ms. Writes bench/results/history.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.simulator.frames import Vocab, to_frame  # noqa: E402
from services.simulator.simulator import Simulator  # noqa: E402
from services.simulator.units import METRICS  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import ServiceProcess, delete_topics  # noqa: E402
from tests.history_helpers import scratch_database  # noqa: E402

TOKEN = "bench-viewer-token-0123456789"
WINDOW_MS = 300_000
START = "2026-10-01T00:00:00Z"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BatchSender:
    """Records into per-partition batches sent whole (``send_batch``), partitioned by key like ``send``.

    The producer's per-message ``send`` (a future per record) is what made loading slow: this keeps
    the same topics, keys and partitions while handing the client a full batch at a time.
    """

    def __init__(self, producer: AIOKafkaProducer, settings: Settings) -> None:
        self.producer = producer
        self.settings = settings
        self.partitioner = DefaultPartitioner()
        self.partitions: dict[str, list[int]] = {}
        self.key_partition: dict[tuple[str, bytes], int] = {}
        self.open: dict[tuple[str, int], Any] = {}
        self.inflight: list[asyncio.Future[Any]] = []
        self.counts: dict[str, int] = {}
        self.unkeyed = 0

    async def _partition(self, topic: str, key: bytes | None) -> int:
        if topic not in self.partitions:
            self.partitions[topic] = sorted(await self.producer.partitions_for(self.settings.topic(topic)))
        all_partitions = self.partitions[topic]
        if key is None:  # spread evenly, as the producer does for unkeyed records
            self.unkeyed += 1
            return all_partitions[self.unkeyed % len(all_partitions)]
        cached = self.key_partition.get((topic, key))
        if cached is None:
            cached = self.key_partition[(topic, key)] = self.partitioner(key, all_partitions, all_partitions)
        return cached

    async def send(self, topic: str, key: bytes | None, value: dict[str, Any]) -> None:
        self.counts[topic] = self.counts.get(topic, 0) + 1
        partition = await self._partition(topic, key)
        data = orjson.dumps(value)
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = self.producer.create_batch()
        if batch.append(key=key, value=data, timestamp=None) is None:  # full: ship it, start the next
            await self._ship(topic, partition)
            batch = self.open[(topic, partition)] = self.producer.create_batch()
            batch.append(key=key, value=data, timestamp=None)

    async def _ship(self, topic: str, partition: int) -> None:
        batch = self.open.pop((topic, partition))
        self.inflight.append(await self.producer.send_batch(batch, self.settings.topic(topic), partition=partition))
        if len(self.inflight) >= 64:
            # Back-pressure, and a failed send fails the bench instead of vanishing.
            await asyncio.gather(*self.inflight)
            self.inflight.clear()

    async def flush(self) -> None:
        for topic, partition in list(self.open):
            await self._ship(topic, partition)
        await asyncio.gather(*self.inflight)
        self.inflight.clear()


async def load(settings: Settings, days: int, step: str) -> dict[str, Any]:
    """Produce the simulated history; returns counts and the range."""
    sim = Simulator(seed=7)
    engine = sim.engine(step)
    vocab = Vocab(engine)
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(), max_batch_size=1 << 20, request_timeout_ms=120_000, compression_type=None
    )
    await producer.start()
    out = BatchSender(producer, settings)
    send = out.send
    metric_names = list(METRICS)
    incident_seen: set[str] = set()
    volume: dict[str, float] = {}
    t0 = t1 = None
    try:
        for batch in sim.batches(START, duration=f"{days}d", step=step):
            df = to_frame(vocab, batch)
            ok = df[df["fault"].astype(str).isin(["", "noise", "late", "out_of_order"])]
            bad = df[df["fault"].astype(str) == "corrupt"]
            values = ok[metric_names].to_numpy()
            present = ~np.isnan(values)
            cols = [ok[c].astype(str).tolist() for c in ("sensor_id", "site", "zone", "utility", "asset")]
            rows = zip(*cols, ok["ts"].tolist(), ok["anomaly"].tolist(), values.tolist(), present.tolist(), strict=True)
            for sensor, site, zone, utility, asset, ts, anomalous, row, has in rows:
                vals = {m: v for m, v, h in zip(metric_names, row, has, strict=True) if h}
                reading = {
                    "sensor_id": sensor, "ts": ts, "site": site, "zone": zone, "utility": utility, "asset": asset,
                    "values": vals,
                }  # fmt: skip
                key = sensor.encode()
                await send("readings.clean", key, reading)
                if anomalous:
                    top = sorted(vals)[:3]
                    await send(
                        "anomalies",
                        key,
                        {**reading, "score": 0.8, "threshold": 0.5, "model_version": "bench", "severity": "warning",
                         "reason": f"{top[0] if top else 'value'} out of its usual range",
                         "top_metrics": [{"metric": m} for m in top]},
                    )  # fmt: skip
            for ts, sensor in zip(bad["ts"].tolist(), bad["sensor_id"].astype(str).tolist(), strict=True):
                await send(
                    "readings.quarantine",
                    None,
                    {"payload": "{corrupt", "source": "kafka", "reasons": ["json: not valid JSON"],
                     "received_ms": ts, "sensor_id": sensor},
                )  # fmt: skip
            # Per zone and five-minute window: the detector's aggregate and the forecaster's risk.
            windows = (
                ok.assign(window=(ok["ts"] // WINDOW_MS) * WINDOW_MS, kind=ok["incident_type"].astype(str))
                .groupby(["site", "zone", "utility", "window"], observed=True)
                .agg(
                    n=("anomaly", "size"),
                    k=("anomaly", "sum"),
                    flow=("flow", "mean"),
                    pressure=("pressure", "mean"),
                    kind=("kind", "max"),
                )
                .reset_index()
            )
            for site, zone, utility, window, n, k, flow, pressure, kind in windows.itertuples(index=False):
                site, zone, utility, window, k = str(site), str(zone), str(utility), int(window), int(k)
                means = {m: {"mean": v} for m, v in (("flow", flow), ("pressure", pressure)) if v == v}
                await send(
                    "aggregates",
                    f"{site}/{zone}/{utility}".encode(),
                    {"window_start": window, "window_end": window + WINDOW_MS, "site": site, "zone": zone,
                     "utility": utility, "count": int(n), "anomaly_count": k, "metrics": means},
                )  # fmt: skip
                p = min(1.0, 0.05 + 2 * k / n)
                kind = kind or "normal"
                ongoing = p >= 0.5 and kind != "normal"
                volume[zone] = volume.get(zone, 0.0) + (1.5 if ongoing else 0.0)
                mean_flow = flow if flow == flow else 0.0
                await send(
                    "risk",
                    zone.encode(),
                    {"site": site, "zone": zone, "utility": utility, "ts": window, "horizon_s": 900,
                     "probability": round(p, 4), "incident_type": kind if ongoing else "normal",
                     "forecast": {"flow": {"q10": mean_flow * 0.9, "q50": mean_flow, "q90": mean_flow * 1.1,
                                           "actual": mean_flow}},
                     "loss": {"ongoing": ongoing, "since_ms": 0, "volume": volume[zone], "cost": volume[zone] * 0.8,
                              "unit": "m3", "currency": "EUR"}},
                )  # fmt: skip
            incident_ids = ok["incident_id"].astype(str)
            for label in sorted(set(incident_ids.unique()) - incident_seen - {""}):
                incident_seen.add(label)
                rows_of = ok[incident_ids == label]
                first = rows_of.iloc[0]
                fp = f"bench-{label}"
                await send(
                    "alerts",
                    fp.encode(),
                    {"fingerprint": fp, "status": "firing", "starts_at": int(first["ts"]), "updated_at": int(first["ts"]),
                     "labels": {"sensor": str(first["sensor_id"]), "zone": str(first["zone"]), "site": str(first["site"]),
                                "kind": "anomaly"}},
                )  # fmt: skip
                await send(
                    "labels",
                    label.encode(),
                    {"incident_id": label, "type": str(first["incident_type"]), "start_ms": int(rows_of["ts"].min()),
                     "end_ms": int(rows_of["ts"].max()), "site": str(first["site"]), "zone": str(first["zone"]),
                     "utility": str(first["utility"]), "sensors": sorted({str(s) for s in rows_of["sensor_id"]})},
                )  # fmt: skip
            if len(ok):
                t0 = int(ok["ts"].min()) if t0 is None else t0
                t1 = int(ok["ts"].max())
        await out.flush()
    finally:
        await producer.stop()
    return {"counts": out.counts, "from": t0, "to": t1}


async def drain(settings: Settings, db: str, total: int) -> tuple[dict[str, Any], ServiceProcess]:
    import asyncpg

    worker = ServiceProcess(
        "history",
        settings,
        extra_env={"FLOWWATCH_HISTORY_DATABASE_URL": db, "FLOWWATCH_API_TOKENS": f"viewer:{TOKEN}:bench"},
    ).start()
    conn = await asyncpg.connect(db)
    first = None
    try:
        while True:
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
            try:
                done = int(await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets") or 0)
            except asyncpg.UndefinedTableError:
                done = 0
            now = time.perf_counter()
            if done and first is None:
                first = (now, done, _cpu_seconds(worker.proc.pid))
            if done >= total:
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    assert first is not None
    elapsed = now - first[0]
    cpu = _cpu_seconds(worker.proc.pid) - first[2]
    drained = total - first[1]
    return {
        "messages": total,
        "messages_per_s": round(drained / elapsed),
        "worker_cpu_s": round(cpu, 1),
        "messages_per_worker_cpu_s": round(drained / max(cpu, 1e-9)),
        "seconds": round(elapsed, 1),
    }, worker


def queries(worker: ServiceProcess, t0: int, t1: int, repeat: int) -> dict[str, Any]:
    import asyncio as _asyncio  # noqa: F401 - the HTTP client below is synchronous on purpose (one caller)

    headers = {"Authorization": f"Bearer {TOKEN}"}
    day = 86_400_000
    base = worker.url
    client = httpx.Client(headers=headers, timeout=60)
    episodes = client.get(f"{base}/v1/history/episodes", params={"from": t0, "to": t1, "limit": 1}).json()["items"]
    episode_id = episodes[0]["id"] if episodes else 1
    # A sensor and zone that measure flow (the metric asked for below).
    sensor, zone = "riverside-gas-gasstation01", "riverside-gas"
    # Episodes and losses of a zone that has some (an empty answer measures nothing).
    busy = max(
        client.get(f"{base}/v1/history/anomaly-rates", params={"by": "zone", "from": t0, "to": t1}).json()["rows"],
        key=lambda r: r["anomalies"],
    )["zone"]
    mid = t0 + (t1 - t0) // 2
    calls = {
        "anomaly-rates site,hour 30d": ("/v1/history/anomaly-rates", {"by": "site,hour", "from": t0, "to": t1}),
        "anomaly-rates zone,dow 30d": ("/v1/history/anomaly-rates", {"by": "zone,dow", "from": t0, "to": t1}),
        "series sensor 1d step 5m": ("/v1/history/series", {"sensor": sensor, "metric": "flow", "from": mid, "to": mid + day, "step": "5m"}),
        "series sensor 30d step 1h": ("/v1/history/series", {"sensor": sensor, "metric": "flow", "from": t0, "to": t1, "step": "1h"}),
        "series zone 7d step 1h + band": ("/v1/history/series", {"zone": zone, "metric": "flow", "from": mid, "to": mid + 7 * day, "step": "1h"}),
        "episodes page 30d": ("/v1/history/episodes", {"from": t0, "to": t1, "limit": 100}),
        "episodes filtered": ("/v1/history/episodes", {"from": t0, "to": t1, "zone": busy, "state": "closed", "limit": 50}),
        "episode detail": (f"/v1/history/episodes/{episode_id}", {}),
        "alerts 30d": ("/v1/history/alerts", {"from": t0, "to": t1, "limit": 100}),
        "zone losses 30d": (f"/v1/history/zones/{busy}/losses", {"from": t0, "to": t1}),
        "playback 1d step 15m": ("/v1/history/playback", {"from": mid, "to": mid + day, "step": "15m"}),
        "export anomalies 1d (csv)": ("/v1/history/export.csv", {"what": "anomalies", "from": mid, "to": mid + day}),
        "export series 30d 1h (csv)": ("/v1/history/export.csv", {"what": "series", "sensor": sensor, "metric": "flow", "from": t0, "to": t1, "step": "1h"}),
    }  # fmt: skip
    out: dict[str, Any] = {}
    for name, (path, params) in calls.items():
        times = []
        size = 0
        for _ in range(repeat):
            started = time.perf_counter()
            r = client.get(f"{base}{path}", params=params)
            times.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:300]}"
            size = len(r.content)
        times.sort()
        out[name] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
            "bytes": size,
        }
    client.close()
    return out


async def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--step", default="300s", help="sensor reporting grid of the simulated history")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    settings = Settings.from_env("history").replace(
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", data_dir=Path(f"/tmp/flowwatch-bench-history-{os.getpid()}")
    )
    await create_all(settings, out=open(os.devnull, "w"))
    worker = None
    try:
        started = time.perf_counter()
        loaded = await load(settings, args.days, args.step)
        load_s = time.perf_counter() - started
        total = sum(loaded["counts"].values())
        print(f"produced {total} messages in {load_s:.0f}s: {loaded['counts']}", flush=True)
        produce = {"seconds": round(load_s, 1), "messages_per_s": round(total / load_s)}
        async with scratch_database() as db:
            sink, worker = await drain(settings, db, total)
            readings = loaded["counts"]["readings.clean"]
            sink["readings_per_s"] = round(sink["messages_per_s"] * readings / total)
            print(f"sink: {sink}", flush=True)
            worker.wait_ready()
            result = {
                "bench": "history",
                "network": "default (seed 7)",
                "days": args.days,
                "step": args.step,
                "messages": loaded["counts"],
                "produce": produce,
                "sink": sink,
                "queries": queries(worker, loaded["from"], loaded["to"] + 1, args.repeat),
                "target_p95_ms": 200,
                "machine_load_avg_1m": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
            }
            worker.stop()
    finally:
        if worker is not None:
            worker.stop()
        await delete_topics(settings)
    result["queries_over_target"] = [n for n, q in result["queries"].items() if q["p95_ms"] >= 200]
    path = ROOT / "bench" / "results" / "history.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    asyncio.run(main())
