"""What 50 live browser clients cost the pipeline: reading → score p99 with and without the console's live feed.

The issue's criterion: 50 concurrent live clients on this 2-core machine must not raise the pipeline's
reading → score p99 by more than 10 %. One run, one pipeline: the five services ``make demo`` runs (ingest,
detector, forecaster, alerts, history; fresh topic prefix, scratch database) and a console worker start once,
and one load generator (its own process) writes ``--rate`` readings/s for the whole run, so every window
sees the same services, the same partitions and the same load. The run then alternates windows:

- **quiet**: the console is stopped (SIGSTOP: no CPU, no reads) and no client is connected;
- **live**: the console runs (reading every live topic, polling the services' ``/metrics`` for its pipeline
  screen) and ``--clients`` SSE clients (a process of their own, as browsers would be elsewhere) read
  ``/api/live`` — every event, admin Bearer token.

Each window starts after ``--settle`` seconds (the console catching up on what it missed, the clients
connecting) and measures ``--window`` seconds: the latency of every reading *sent* in it, from its send time
(its ``ts``) to its score record arriving at the bench's consumer. Pairs alternate their order (quiet→live,
live→quiet, ...) so a drift of the machine's load favours neither side. The result: per window p50/p99 and
CPU shares; per side the median of the windows' p99; their ratio (the criterion) and each pair's ratio.
The machine is shared: the JSON holds the 1-minute load average at every window. Writes
bench/results/console_live.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
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
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency_e2e import (  # noqa: E402
    ALERTS_CONFIG,
    SERVICES,
    CodeProcess,
    Receiver,
    cpu_seconds,
    summary,
    timed_consumer,
    train_forecaster,
    wait_reading,
)

from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import API_TOKEN, delete_topics  # noqa: E402

E2E = ROOT / "bench" / "bench_latency_e2e.py"


async def start_clients(url: str, n: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(E2E),
        "--sse",
        url,
        str(n),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "FLOWWATCH_BENCH_TOKEN": API_TOKEN},  # not on the command line
    )


async def stop_clients(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    proc.terminate()
    out, _ = await proc.communicate()
    return orjson.loads(out.splitlines()[-1]) if out else {"failed": "no report"}


def window_stats(arrivals: dict[str, list[tuple[int, float]]], lo: float, hi: float) -> dict[str, Any]:
    return {stage: summary([lat for ts, lat in arrivals[stage] if lo <= ts < hi]) for stage in ("clean", "scores")}


def median_of(windows: list[dict[str, Any]], stage: str, q: str) -> float | None:
    values = [w["latency_ms"][stage].get(q) for w in windows]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from tests.history_helpers import scratch_database

    tmp = Path(tempfile.mkdtemp(prefix="bench-console-live-"))
    prefix = f"cl{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env().replace(topic_prefix=prefix, data_dir=tmp / "data", model_dir=tmp / "models")
    await asyncio.to_thread(train_forecaster, tmp / "models")
    await create_all(settings, out=open(os.devnull, "w"))
    receiver = Receiver()
    await receiver.start()
    config = tmp / "alerts.yaml"
    config.write_text(ALERTS_CONFIG.format(url=f"http://127.0.0.1:{receiver.port}/hook"))
    procs: dict[str, CodeProcess] = {}
    clients: asyncio.subprocess.Process | None = None
    gen: asyncio.subprocess.Process | None = None
    stop = asyncio.Event()
    arrivals: dict[str, list[tuple[int, float]]] = {"clean": [], "scores": [], "anomalies": []}
    windows: list[dict[str, Any]] = []
    try:
        async with scratch_database() as db:
            env = {
                "FLOWWATCH_ALERTS_CONFIG_PATH": str(config),
                "FLOWWATCH_HISTORY_DATABASE_URL": db,
                "FLOWWATCH_LOG_LEVEL": "WARNING",
            }
            for name in SERVICES:
                procs[name] = CodeProcess(name, settings, ROOT, env).start()
            targets = ",".join(f"{n}={p.url}" for n, p in procs.items())
            console_env = {
                **env,
                "FLOWWATCH_CONSOLE_DATABASE_URL": db,
                "FLOWWATCH_CONSOLE_HISTORY_URL": procs["history"].url,
                "FLOWWATCH_CONSOLE_ALERTS_URL": procs["alerts"].url,
                "FLOWWATCH_CONSOLE_METRICS_TARGETS": targets,
            }
            console = procs["console"] = CodeProcess("console", settings, ROOT, console_env).start()
            for p in procs.values():
                await asyncio.to_thread(p.wait_ready, 300)
            for name in ("ingest", "detector"):
                await asyncio.to_thread(wait_reading, procs[name], 120)
            consumer = asyncio.ensure_future(timed_consumer(settings, stop, arrivals))
            await asyncio.sleep(1.0)
            total = args.warmup + args.pairs * 2 * (args.settle + args.window + 5) + 30
            gen = await asyncio.create_subprocess_exec(
                sys.executable,
                str(E2E),
                "--generate",
                settings.bootstrap_servers,
                settings.topic("readings.raw"),
                str(args.rate),
                str(total),
                str(args.sensors),
                str(args.spikes_per_s),
                stdout=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(args.warmup)
            assert console.proc is not None
            pids = {n: p.proc.pid for n, p in procs.items() if p.proc}
            for pair in range(args.pairs):
                for label in ("quiet", "live") if pair % 2 == 0 else ("live", "quiet"):
                    if label == "live":
                        os.kill(console.proc.pid, signal.SIGCONT)
                        clients = await start_clients(console.url, args.clients)
                    else:
                        os.kill(console.proc.pid, signal.SIGSTOP)
                    await asyncio.sleep(args.settle)
                    cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
                    if clients:
                        cpu0["sse_clients"] = cpu_seconds(clients.pid)
                    load = os.getloadavg()[0]
                    lo, t0 = time.time() * 1000, time.monotonic()
                    await asyncio.sleep(args.window)
                    hi, elapsed = time.time() * 1000, time.monotonic() - t0
                    cpu_pids = pids | ({"sse_clients": clients.pid} if clients else {})
                    cpu = {n: round((cpu_seconds(cpu_pids[n]) - c) / elapsed, 3) for n, c in cpu0.items()}
                    window: dict[str, Any] = {"pair": pair + 1, "side": label, "from_ms": int(lo), "to_ms": int(hi)}
                    window["seconds_with_clients"] = round(args.settle + elapsed, 1) if clients else 0
                    window.update(cpu_share=cpu, load_avg_1m=round(load, 2))
                    if clients:
                        window["clients"] = await stop_clients(clients)
                        clients = None
                    windows.append(window)
                    print(f"pair {pair + 1} {label}: load {load:.1f}", file=sys.stderr)
            os.kill(console.proc.pid, signal.SIGCONT)
            # The last window's readings reach the consumer (a loaded machine may lag by seconds).
            await asyncio.sleep(min(30.0, args.settle + 10))
            stop.set()
            await consumer
            for w in windows:
                w["latency_ms"] = window_stats(arrivals, w["from_ms"], w["to_ms"])
                print(f"{w['side']}: scores {w['latency_ms']['scores']}", file=sys.stderr)
    finally:
        stop.set()
        if gen and gen.returncode is None:
            gen.terminate()
            await gen.wait()
        if clients and clients.returncode is None:
            clients.terminate()
            await clients.wait()
        for p in procs.values():
            if p.proc and p.proc.poll() is None:
                os.kill(p.proc.pid, signal.SIGCONT)
            p.stop()
        await receiver.runner.cleanup()
        await delete_topics(settings)
        shutil.rmtree(tmp, ignore_errors=True)
    quiet = [w for w in windows if w["side"] == "quiet"]
    live = [w for w in windows if w["side"] == "live"]
    medians = {
        side: {stage: {q: median_of(ws, stage, q) for q in ("p50", "p99")} for stage in ("clean", "scores")}
        for side, ws in (("quiet", quiet), ("live", live))
    }
    ratio = {
        stage: {
            q: round(medians["live"][stage][q] / medians["quiet"][stage][q], 3)
            if medians["live"][stage][q] and medians["quiet"][stage][q]
            else None
            for q in ("p50", "p99")
        }
        for stage in ("clean", "scores")
    }
    pair_ratios = []
    for pair in range(1, args.pairs + 1):
        q = next(w for w in quiet if w["pair"] == pair)["latency_ms"]["scores"].get("p99")
        lv = next(w for w in live if w["pair"] == pair)["latency_ms"]["scores"].get("p99")
        pair_ratios.append(round(lv / q, 3) if q and lv else None)
    scores_p99 = ratio["scores"]["p99"]
    return {
        "criterion": "reading -> score p99 with the console and N live clients / without, at most 1.10",
        "ratio_live_over_quiet": ratio,
        "criterion_met": scores_p99 is not None and scores_p99 <= 1.10,
        "scores_p99_pair_ratios": pair_ratios,
        "median_of_windows_ms": medians,
        "console_cpu_share_live": [w["cpu_share"].get("console") for w in live],
        "clients_cpu_share_live": [w["cpu_share"].get("sse_clients") for w in live],
        "pipeline_cpu_share": {
            side: round(statistics.median(sum(v for n, v in w["cpu_share"].items() if n in SERVICES) for w in ws), 3)
            for side, ws in (("quiet", quiet), ("live", live))
            if ws
        },
        "live_clients": [w.get("clients") for w in live],
        "windows": windows,
        "setup": {
            "rate_per_s": args.rate,
            "sensors": args.sensors,
            "clients": args.clients,
            "pairs": args.pairs,
            "window_s": args.window,
            "settle_s": args.settle,
            "warmup_s": args.warmup,
            "services": SERVICES,
            "cores": os.cpu_count(),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """main(), cancelled cleanly on SIGTERM/SIGINT so workers, topics and the database are always cleaned up."""
    task = asyncio.ensure_future(main(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rate", type=float, default=500.0, help="readings/s written to readings.raw")
    # Each sensor spikes once (an anomaly, an alert: the live feed), after 20 readings: 1000 sensors at 3 spikes/s
    # keep anomalies and alerts flowing from 40 s to about 370 s, through the whole run.
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--spikes-per-s", type=float, default=3.0)
    p.add_argument("--pairs", type=int, default=5, help="pairs of windows (quiet, live); at least 3")
    p.add_argument("--window", type=float, default=20.0, help="measured seconds per window")
    p.add_argument("--settle", type=float, default=8.0, help="seconds before each window is measured")
    p.add_argument("--warmup", type=float, default=40.0, help="seconds of load before the first window")
    args = p.parse_args()
    if args.pairs < 3:
        p.error("--pairs: at least 3 (the result is a median over windows)")
    out = asyncio.run(run(args))
    path = ROOT / "bench" / "results" / "console_live.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    r = out["ratio_live_over_quiet"]["scores"]
    m = out["median_of_windows_ms"]
    print(
        f"reading -> score p99: quiet {m['quiet']['scores']['p99']} ms, live {m['live']['scores']['p99']} ms, "
        f"ratio {r['p99']} (pairs {out['scores_p99_pair_ratios']}); criterion met: {out['criterion_met']} -> {path}"
    )


if __name__ == "__main__":
    cli()
