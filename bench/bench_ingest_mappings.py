"""Payload mappings: throughput of a mapped door on one core, and the cost to the default (native) path.

In-process, one core, no broker: what ingest's CPU does per reading, which is what a mapping adds
to (the broker round trips are the same for every path and are measured by bench_ingest.py).

* ``default``: native readings (bench_ingest.py's realistic mix of utilities, units and timestamp
  formats) through the pipeline (:class:`BatchProcessor`: decode, validate, state, encode) in
  batches of 5,000 — the path every native reading takes.
* ``mapped:<name>``: messages in a mapping's format through the door (decode within the limits, the
  mapping, the native JSON it writes to readings.raw) and then the same pipeline: readings/s counts
  the readings the messages become (gas-station: 1 per message, building-energy 2, scada-wide 31).
* ``direct:<name>``: the Kafka source door's direct route (services/ingest/sources.py), the one
  bench_ingest_source.py's worker takes: the door decodes and maps, and hands the readings to the
  pipeline as dicts (not written as JSON where the mapping shows them within the limits), which does
  not parse them again.

``--baseline DIR`` also runs every mode on another checkout (``git archive <rev> | tar -x -C DIR``), in
the same rounds, so the ratios say what this code changed on each path. Every measurement runs in a
fresh subprocess, in interleaved rounds (the machine is shared); medians are reported, of readings/s
by the wall clock and per CPU-second of the process (the one to quote on a busy machine).

Writes bench/results/ingest_mappings.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("default", "mapped:gas-station", "mapped:building-energy", "mapped:scada-wide", "direct:gas-station")
BATCH = 5000


def _native_inputs(n: int, now_ms: int) -> list[bytes]:
    from bench.bench_ingest import Clock, make_sensors, payload

    rng = random.Random(7)
    sensors = make_sensors(2000, rng)
    clock = Clock(now_ms - 3_600_000)
    return [payload(s, clock.tick(s["sensor_id"]), rng) for s in (sensors[i % len(sensors)] for i in range(n))]


def _mapped_inputs(name: str, n_readings: int, now_ms: int) -> tuple[list[bytes], int]:
    """Messages in the mapping's format making about ``n_readings`` readings, and how many they make."""
    rng = random.Random(16)
    out: list[bytes] = []
    made = 0
    i = 0
    while made < n_readings:
        ts_s = (now_ms - 3_600_000) / 1000 + i // 50
        i += 1
        if name == "gas-station":
            local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_s + 4 * 3600)) + f".{i % 1000:03d}000"
            sensors = {
                "density_kg_m3": round(rng.uniform(0.7, 0.8), 4),
                "pressure_diff_kpa": round(rng.uniform(10, 20), 2),
                "pressure_kpa": round(rng.uniform(400, 600), 2),
                "temperature_c": round(rng.uniform(5, 30), 2),
                "hourly_flow_m3": round(rng.uniform(9000, 14000), 1),
                "total_flow_m3": 1_500_000.0 + i,
            }
            message: dict[str, Any] = {"timestamp": local, "location": f"station-{i % 50}", "sensors": sensors}
            made += 1
        elif name == "building-energy":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_s))
            message = {"timestamp": stamp, "building": f"Tower {i % 25}", "floor": i % 2,
                       "electricity_kwh": round(rng.uniform(1, 50), 3), "water_l": round(rng.uniform(10, 900), 1)}  # fmt: skip
            made += 2
        else:
            stamp = time.strftime("%d/%m/%y %H", time.gmtime(now_ms / 1000 - 3600 * (n_readings // 31 + 2 - i)))
            message = {"DATETIME": stamp, **{f"L_T{k}": round(rng.uniform(0.5, 6), 2) for k in range(1, 8)}}
            for k in range(1, 12):
                message[f"F_PU{k}"] = round(rng.uniform(0, 100), 2)
                message[f"S_PU{k}"] = rng.choice((0, 1))
            message |= {"F_V2": 1.0, "S_V2": 1, **{f"P_J{j}": round(rng.uniform(20, 90), 2) for j in range(280, 292)}}
            message["ATT_FLAG"] = 0
            made += 31
        out.append(json.dumps(message).encode())
    return out, made


def measure(mode: str, readings: int) -> dict[str, Any]:
    """One round of one mode in this process: readings/s through the door (if mapped) and the pipeline."""
    from services.ingest.pipeline import BatchProcessor, Inbound
    from services.ingest.rules import Rules
    from services.ingest.settings import IngestSettings
    from shared.batching import PartitionMap

    now_ms = int(time.time() * 1000)
    rules = Rules.load(IngestSettings(max_age_s=0))
    partition_of = PartitionMap(1)  # one worker owning every sensor: nothing forwarded
    processor = BatchProcessor(rules, partition_of=partition_of, load_state=lambda sid, msg: None)
    if mode == "default":
        values, made = _native_inputs(readings, now_ms), readings
        door = None
    elif mode.startswith("direct:"):
        import inspect

        from services.ingest import mappings
        from services.ingest.mappings import expand

        mapping = mappings.load()[mode.split(":", 1)[1]]
        values, made = _mapped_inputs(mapping.name, readings, now_ms)
        lazy = "lazy" in inspect.signature(expand).parameters  # False on a checkout from before (--baseline)

        def door(batch: list[bytes]) -> list[Any]:
            out: list[Any] = []
            for raw in batch:
                items, reasons, _ = expand(mapping, raw, rules, None, True) if lazy else expand(mapping, raw, rules)
                assert not reasons, reasons
                # as sources.owned_here hands them over: decoded, no offset
                out.extend(Inbound(i.value, None, 0, -1, now_ms, "kafka", None, False, (), i.decoded) for i in items)
            return out
    else:
        from services.ingest import mappings
        from services.ingest.mappings import expand

        mapping = mappings.load()[mode.split(":", 1)[1]]
        values, made = _mapped_inputs(mapping.name, readings, now_ms)

        def door(batch: list[bytes]) -> list[bytes]:
            out: list[bytes] = []
            for raw in batch:
                items, reasons, _ = expand(mapping, raw, rules)
                assert not reasons, reasons
                out.extend(i.value for i in items)
            return out

    # As the worker's pump does (shared/pump.py): long-lived objects frozen, young ones collected less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    clean = 0
    start = time.perf_counter()
    cpu = time.process_time()
    per_batch = BATCH if door is None else max(1, BATCH * len(values) // made)
    for offset in range(0, len(values), per_batch):
        chunk = values[offset : offset + per_batch]
        raw = door(chunk) if door is not None else chunk
        if mode.startswith("direct:"):
            batch = raw
        else:
            batch = [Inbound(v, None, 0, offset + k, now_ms) for k, v in enumerate(raw)]
        clean += len(processor.process(batch).clean)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert clean == made, f"{mode}: {clean} of {made} readings clean"
    return {"readings": made, "seconds": round(elapsed, 3), "readings_per_s": round(made / elapsed),
            "readings_per_cpu_s": round(made / cpu)}  # fmt: skip


def _round(mode: str, readings: int, code: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", mode, "--readings", str(readings)]
    done = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} on {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=100_000, help="readings per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to run every mode on too (the base)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ingest_mappings.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single measurement in this process (the rounds' child)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.readings)))
        return 0

    modes = [m for m in MODES if m in args.modes.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {}
    plan = [(mode, ROOT) for mode in modes]
    if args.baseline:  # interleaved: each round runs every mode on the baseline, then on this code
        plan = [(f"{mode}@baseline", args.baseline.resolve()) for mode in modes] + plan
    for r in range(args.rounds):
        for name, code in plan:
            result = _round(name.split("@")[0], args.readings, code)
            runs.setdefault(name, []).append(result)
            print(f"round {r + 1}/{args.rounds} {name:24s} {result['readings_per_s']:>8} readings/s", flush=True)
    medians = {name: statistics.median(x["readings_per_s"] for x in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(x["readings_per_cpu_s"] for x in rs) for name, rs in runs.items()}
    report: dict[str, Any] = {
        "what": "in-process readings/s on one core: (door + mapping +) decode, validate, state, encode",
        "readings_per_round": args.readings,
        "rounds": args.rounds,
        "median_readings_per_s": medians,
        "median_readings_per_cpu_s": cpu,
        "target_readings_per_s": 30_000,  # issue 16, through a mapping with one worker (bench_ingest_source.py)
        "mapped_over_default": {
            m: round(medians[m] / medians["default"], 3) for m in modes[1:] if "default" in medians
        },
        # On a shared machine the per-CPU-second ratios are the ones to quote (wall time swings with the load).
        "mapped_over_default_cpu": {m: round(cpu[m] / cpu["default"], 3) for m in modes[1:] if "default" in cpu},
        "machine_load_avg_1m_at_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    if args.baseline:
        report["over_baseline"] = {m: round(medians[m] / medians[f"{m}@baseline"], 3) for m in modes}
        report["over_baseline_cpu"] = {m: round(cpu[m] / cpu[f"{m}@baseline"], 3) for m in modes}
        report["baseline"] = str(args.baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
