"""One long stream (one sensor) through `python -m services.detector score`, against River's HalfSpaceTrees.

A synthetic pump-rig stream (8 metrics, one row a second, daily cycle, noise, a few faults) is written
as CSV; ``fit`` learns on the first ``--train`` rows and the rest is scored, in one run:

* ``score_cli``: ``python -m services.detector score`` as a user runs it (process start, imports, CSV
  read and write included), in a child process, with the kernels built ahead of time (``build-kernels``,
  run once before the rounds and not timed, as the JIT kernels' cache is filled before them);
* ``score_cli_jit``: the same command with ``--jit``: numba's JIT kernels from their cache;
* ``score_cli_baseline`` (with ``--baseline DIR``): the same command of another checkout (say the
  commit before a change), in alternate rounds of the same run;
* ``score``: the same ``score_file`` in this process (what the detector itself costs per row);
* ``score_numpy_reference``: the same rows through the numpy reference of the per-reading recurrences
  (``RollingState.run_reference``, ``AnomalyModel._persist_reference``: the code before the compiled
  kernels), on the first ``--reference-rows`` rows (it is slow);
* ``river_hst``: River's ``HalfSpaceTrees`` (default settings) scoring and learning the same rows one at a
  time (``score_one`` then ``learn_one``), the usual streaming baseline. River comes from the ``bench``
  optional dependencies; without it the comparison is reported as missing.

Each timing is the median of ``--rounds``, interleaved. Target: the command >= 2x River on the same rows.
``startup_cpu_s`` says where a command's fixed cost goes: the interpreter alone, with numpy, and with
numba and the kernels loaded from their cache (median CPU seconds of child processes).
Writes bench/results/detector_stream.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.detector.model import AnomalyModel  # noqa: E402
from services.detector.offline import fit_csv, read_columns, score_file, score_frame  # noqa: E402
from services.detector.state import RollingState  # noqa: E402

METRICS = ("vibration1", "vibration2", "current", "pressure", "temperature", "thermocouple", "voltage", "flow")
BASE = np.array([0.21, 0.27, 2.2, 0.38, 90.0, 26.9, 238.0, 122.0])


def stream_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    daily = 1 + 0.05 * np.sin(2 * np.pi * t / 86_400)[:, None]
    x = BASE * daily * (1 + rng.normal(0, 0.01, (rows, len(METRICS))))
    for start in range(rows // 3, rows, rows // 4):  # a few faults: a pressure drop, a stuck flow reading
        x[start : start + 300, 3] *= 0.8
        x[start + 500 : start + 700, 7] = x[start + 500, 7]
    ts = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(t, unit="s")
    frame = pd.DataFrame(np.round(x, 5), columns=list(METRICS))
    frame.insert(0, "timestamp", ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
    frame.to_csv(path, index=False)


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (the CLI runs as a child)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    started, cpu = time.perf_counter(), cpu_now()
    fn(*args, **kwargs)
    return time.perf_counter() - started, cpu_now() - cpu


def score_reference(model: AnomalyModel, x: np.ndarray, ts: np.ndarray) -> None:
    """score_frame with the numpy reference recurrences (the code before the kernels)."""
    rolling = model.rolling
    rolling.run = rolling.run_reference  # type: ignore[method-assign]
    model._persist = model._persist_reference  # type: ignore[method-assign]
    try:
        score_frame(model, x, ts)
    finally:
        del rolling.run, model._persist
    assert type(rolling).run is RollingState.run


def river_rows(values: np.ndarray) -> Any:
    try:
        from river import anomaly
    except ImportError:
        return None
    rows = [dict(zip(METRICS, r, strict=True)) for r in values.tolist()]

    def run() -> None:
        hst = anomaly.HalfSpaceTrees(seed=42)
        for row in rows:
            hst.score_one(row)
            hst.learn_one(row)

    return run


#: Child processes that measure the fixed cost of a command's start-up.
STARTUP = {
    "python": "pass",
    "python_numpy": "import numpy",
    "python_numpy_numba": "import numba",
    "python_model_jit_kernels_loaded": "from services.detector import kernels; kernels.warm_up()",
    "python_model_built_kernels_loaded": "from services.detector import compiled; compiled.use_ahead_of_time(); "
    "from services.detector import kernels; kernels.warm_up()",
}


def main() -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=60_000, help="rows scored")
    p.add_argument("--train", type=int, default=5_000, help="rows fitted on first")
    p.add_argument("--reference-rows", type=int, default=4_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another checkout whose `detector score` runs in alternate rounds")
    args = p.parse_args()
    load_at_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    train, test, model_dir = tmp / "train.csv", tmp / "test.csv", tmp / "model"
    stream_csv(train, args.train, seed=1)
    stream_csv(test, args.rows, seed=2)
    model = fit_csv(train, model_dir)
    stream = read_columns(test)
    x, ts = stream.matrix(model.metrics), stream.ts
    score_file(test, model_dir, tmp / "warm.csv")  # the kernels' first (cached) load is not timed
    cli = ["-m", "services.detector", "score", "--data", str(test), "--model-dir", str(model_dir)]
    commands = {"score_cli": (ROOT, cli), "score_cli_jit": (ROOT, [*cli, "--jit"])}
    if args.baseline is not None:
        commands["score_cli_baseline"] = (args.baseline.resolve(), cli)
    out = tmp / "out.csv"

    def command(where: Path, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(where)}
        subprocess.run([sys.executable, *argv], cwd=where, env=env, check=True, capture_output=True)

    command(ROOT, ["-m", "services.detector", "build-kernels"])  # once per install: not timed
    for where, argv in commands.values():  # the JIT kernels compile on their first run: not timed
        command(where, [*argv, "--output", str(out)])
    river = river_rows(stream.matrix(METRICS))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    times.update({"score": [], "score_numpy_reference": [], "river_hst": []})
    startup: dict[str, list[float]] = {name: [] for name in STARTUP}
    rows = {name: args.rows for name in times}
    rows["score_numpy_reference"] = args.reference_rows
    n = args.reference_rows
    for _ in range(args.rounds):
        for name, (where, argv) in commands.items():
            times[name].append(timed(command, where, [*argv, "--output", str(out)]))
        times["score"].append(timed(score_file, test, model_dir, out))
        ref = AnomalyModel.load(model_dir)
        times["score_numpy_reference"].append(timed(score_reference, ref, x[:n], ts[:n]))
        if river is not None:
            times["river_hst"].append(timed(river))
        for name, code in STARTUP.items():
            startup[name].append(timed(command, ROOT, ["-c", code])[1])
    # The machine is shared: CPU seconds are the steadier measure (wall seconds are reported too).
    per_s = {k: round(rows[k] / statistics.median(c for _, c in v)) for k, v in times.items() if v}
    per_wall_s = {k: round(rows[k] / statistics.median(w for w, _ in v)) for k, v in times.items() if v}
    result: dict[str, Any] = {
        "rows_per_cpu_s": per_s,
        "rows_per_wall_s": per_wall_s,
        "seconds_wall_cpu": {k: [(round(w, 3), round(c, 3)) for w, c in v] for k, v in times.items()},
        "startup_cpu_s": {k: round(statistics.median(v), 3) for k, v in startup.items()},
        "rows": rows,
        "metrics": len(METRICS),
        "load_avg_1m_at_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
        "cores": os.cpu_count(),
        "note": "score_cli includes the process start, imports and the CSV read and write; score is the same "
        "score_file in process, as River is measured; startup_cpu_s is the fixed cost under every command",
    }
    if "river_hst" in per_s:
        result["score_vs_river"] = round(per_s["score"] / per_s["river_hst"], 2)
        result["score_cli_vs_river"] = round(per_s["score_cli"] / per_s["river_hst"], 2)
        result["target_met"] = result["score_cli_vs_river"] >= 2.0
        for name in ("score_cli_jit", "score_cli_baseline"):
            if name in per_s:
                result[f"{name}_vs_river"] = round(per_s[name] / per_s["river_hst"], 2)
    else:
        result["river_hst"] = "not installed (pip install -e '.[bench]')"
    result["kernel_speedup"] = round(per_s["score"] / per_s["score_numpy_reference"], 1)
    return result


if __name__ == "__main__":
    out = main()
    path = ROOT / "bench" / "results" / "detector_stream.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"detector score, one stream: {out['rows_per_cpu_s']} rows per CPU second -> {path}")
