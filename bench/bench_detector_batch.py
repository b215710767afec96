"""The detector's fixed cost per micro-batch: CPU time of one ``Scorer.process`` call at 1, 10, 100 and 2,000 readings.

What a micro-batch costs whatever its size decides whether batches may be small (no fill wait: the reading
goes as soon as it is read) without the detector spending its CPU on per-batch overhead. Measured in-process,
no broker: the scorer as the worker builds it (drift monitor on), readings of 2,000 pipe and pump sensors
round-robin (bench_detector's fleet), each size scored repeatedly against the states the earlier batches left;
the median CPU time per call, the garbage collector set as the worker's pump sets it. Two model sets:
``statistical`` (no trained model: the z-score detector, what the end-to-end bench runs) and ``ensemble``
(pipe and pump models trained as bench_detector trains them: z-score, PCA, K-Means, LOF, IsolationForest).

``--baseline DIR`` measures another checkout (``git archive REV | tar -x -C DIR``) too, each variant in a
process of its own, alternating, so before and after share the machine's load. Writes
bench/results/detector_batch.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1, 10, 100, 2000)


def measure(code: Path, repeats: int) -> dict[str, Any]:
    """In a process whose imports come from ``code``: median CPU seconds per ``Scorer.process`` call by size."""
    sys.path[:0] = [str(code), str(code / "bench")]  # the checkout's own fleet and readings
    import bench_detector as bd
    import numpy as np
    import pandas as pd

    from services.detector import kernels
    from services.detector.offline.training import fit_profile
    from services.detector.pipeline import ModelStore, Scorer
    from services.detector.profiles import ProfileSet
    from services.detector.settings import DetectorSettings
    from shared.mlops.monitor import DriftMonitor
    from shared.records import Reading

    ds = DetectorSettings()
    kernels.warm_up()
    sensors = bd.sensor_table(2000)
    profiles = ProfileSet.load(ds.profiles_file)
    out: dict[str, Any] = {}
    for models in ("statistical", "ensemble"):
        store = ModelStore(profiles, ds.zscore_threshold)
        if models == "ensemble":
            rng = np.random.default_rng(1)
            frame = pd.DataFrame(
                {"sensor_id": s["sensor_id"], "asset": s["asset"], "ts": r["ts"], **r["values"]}
                for s in sensors[:200]
                for k in range(60)
                for r in [bd.reading(s, k, rng)]
            )
            for name in ("pipe", "pump"):
                store.set_trained(name, fit_profile(frame[frame["asset"] == name], profiles.by_name[name]))
        monitor = DriftMonitor(
            "detector", ds.drift_window_s * 1000, ds.drift_reference_s * 1000, ds.drift_bucket_s * 1000
        )
        scorer = Scorer(store, ds.aggregate_window_s * 1000, ds.reason_metrics, ds.emit_scores, False, monitor)
        rng = np.random.default_rng(5)
        memory: dict[str, Any] = {}
        # the collector as the worker's pump sets it (shared.pump): start-up objects frozen, young generation large.
        # Without it every batch pays full collections over the models' and libraries' objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        position = [0, 100]

        def batch(n: int, position: list[int] = position, rng: Any = rng) -> list[Reading]:
            rows = []
            for _ in range(n):
                i = position[0]
                position[0] = (i + 1) % len(sensors)
                position[1] += i == 0
                rows.append(Reading.from_dict(bd.reading(sensors[i], position[1], rng)))
            return rows

        per_size = {}
        for n in SIZES:
            times = []
            for _ in range(max(8, repeats // n)):
                readings = batch(n)
                t0 = time.process_time()
                result = scorer.process(readings, memory.get)
                times.append(time.process_time() - t0)
                memory.update(result.states)
            cpu = statistics.median(times[3:])
            per_size[str(n)] = {
                "ms_per_batch": round(cpu * 1000, 3),
                "us_per_reading": round(cpu / n * 1e6, 1),
                "readings_per_cpu_s": round(n / cpu) if cpu else None,
            }
        out[models] = per_size
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", help="another checkout measured alternately (before/after)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2000, help="readings per size and round (at least 8 batches)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detector_batch.json")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one variant, JSON on stdout
    args = p.parse_args()
    if args.measure:
        print(orjson.dumps(measure(Path(args.measure), args.repeats)).decode())
        return 0
    variants = [("now", ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
    load = []
    for r in range(args.rounds):
        for label, code in variants if r % 2 == 0 else variants[::-1]:
            run = subprocess.run(
                [sys.executable, __file__, "--measure", str(code), "--repeats", str(args.repeats)],
                capture_output=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(code)},
            )
            rounds[label].append(orjson.loads(run.stdout.splitlines()[-1]))
            load.append(round(os.getloadavg()[0], 2))
    median = {
        label: {
            models: {
                size: {
                    key: round(statistics.median(r[models][size][key] for r in rs), 3)
                    for key in ("ms_per_batch", "us_per_reading", "readings_per_cpu_s")
                }
                for size in rs[0][models]
            }
            for models in rs[0]
        }
        for label, rs in rounds.items()
    }
    result = {
        "benchmark": "detector_batch",
        "what": "CPU time of one Scorer.process call (no broker) by micro-batch size, median of rounds",
        "median_of_rounds": median,
        "rounds": rounds,
        "load_avg_1m": load,
        "cores": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    for label, models in median.items():
        for name, sizes in models.items():
            print(
                f"{label} {name}: "
                + "; ".join(f"{n}: {v['ms_per_batch']} ms ({v['us_per_reading']} us/reading)" for n, v in sizes.items())
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
