"""Retrain benchmark: how long ``python -m services.detector retrain`` takes on a simulated stream, and what it
decides. Writes bench/results/retrain.json.

Puts ``HOURS`` (default 6) of the simulator's default network (seed 3, 60 s steps: 276 sensors, about
99,000 readings, 11 labelled incidents) on readings.clean and labels of a fresh topic prefix, with record times
in the last hours, then runs the detector's retrain twice in a fresh registry: on the whole window (judged
against the statistical detector) and on its last 40 minutes (judged against the first run's promoted models).
Records each run's stage seconds (read, fit, evaluate, total, wall) and its decision with the metrics per profile.
``--forecaster`` also times the forecaster's retrain on the same window (about two minutes more).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.forecaster.offline.history import History  # noqa: E402
from services.simulator.simulator import Simulator  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import create_all  # noqa: E402
from tests.helpers import delete_topics  # noqa: E402
from tests.mlops_helpers import produce_history  # noqa: E402

OUT = ROOT / "bench" / "results" / "retrain.json"
HOURS = float(os.environ.get("BENCH_RETRAIN_HOURS", "6"))


def run(service: str, settings: Settings, model_dir: Path, report: Path, *args: str) -> dict:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), "FLOWWATCH_MODEL_DIR": str(model_dir)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "retrain", "--report", str(report), "--no-progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.monotonic() - t0
    out = orjson.loads(report.read_bytes())
    return {
        "args": list(args),
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "seconds": out.get("seconds"),
        "decision": out.get("decision"),
        "reasons": out.get("reasons"),
        "rows": (out.get("data") or {}).get("rows"),
        "metrics": out.get("metrics"),
        "drift": {k: (out.get("drift") or {}).get(k) for k in ("level", "max_psi")},
    }


def main() -> int:
    settings = Settings.from_env().replace(topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=2)
    now = int(time.time() * 1000) // 60_000 * 60_000
    sim = Simulator(seed=3).history(now - int(HOURS * 3_600_000), f"{HOURS}h", step="60s")
    history = History(sim.frame, list(sim.labels))
    result: dict = {"hours": HOURS, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        asyncio.run(create_all(settings, out=open(os.devnull, "w")))
        t0 = time.monotonic()
        result["readings"] = asyncio.run(produce_history(settings, history))
        result["produce_s"] = round(time.monotonic() - t0, 1)
        with tempfile.TemporaryDirectory() as tmp:
            models, since = Path(tmp) / "models", f"{HOURS + 1}h"
            result["detector_full"] = run("detector", settings, models, Path(tmp) / "a.json", "--since", since)
            result["detector_40m"] = run(
                "detector", settings, models, Path(tmp) / "b.json", "--since", "40m", "--holdout", "0.5"
            )
            if "--forecaster" in sys.argv:
                result["forecaster_full"] = run("forecaster", settings, models, Path(tmp) / "c.json", "--since", since)
    finally:
        asyncio.run(delete_topics(settings))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    for key in ("detector_full", "detector_40m", "forecaster_full"):
        if key in result:
            r = result[key]
            print(f"{key}: {r['decision']} in {r['wall_s']} s ({r['seconds']}); {'; '.join(r['reasons'] or [])[:300]}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
