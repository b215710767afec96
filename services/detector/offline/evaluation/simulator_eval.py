"""Precision and recall of the streaming detector on the simulator's labelled incidents.

    python -m services.detector.offline.evaluation.simulator_eval [--train-days 2] [--test-days 1] [--seed 7]

The simulator's network runs for a few days: the first days build every sensor's
rolling state and time-of-day profile and train one pooled model per profile,
the last day is scored. Everything goes through :class:`services.detector.pipeline.Scorer`,
the code the Faust agent runs, in micro-batches in delivery order, so this is
the streaming service minus Kafka. Reported: per reading precision, recall, F1
and false-alarm rate; per incident the share detected (at least one flagged
reading of an affected sensor during the incident) and the median delay.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from services.detector.offline.evaluation.evaluate import confusion, metrics
from services.detector.offline.training import fit_profile, profile_rows
from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE
from shared.records import Reading

META = ("sensor_id", "ts", "site", "zone", "utility", "asset")


def frame_readings(df: pd.DataFrame, metric_cols: list[str]) -> list[Reading]:
    values = df[metric_cols].to_numpy()
    meta = df[list(META)].astype({"ts": np.int64}).itertuples(index=False, name=None)
    out = []
    for (sid, ts, site, zone, utility, asset), row in zip(meta, values, strict=True):
        vals = {m: float(v) for m, v in zip(metric_cols, row, strict=True) if v == v}
        out.append(Reading(str(sid), int(ts), str(site), str(zone), str(utility), str(asset), vals))
    return out


def run(scorer: Scorer, readings: list[Reading], states: dict[str, bytes], batch: int = 2000) -> np.ndarray:
    flags = np.zeros(len(readings), dtype=bool)
    pos = 0
    for start in range(0, len(readings), batch):
        chunk = readings[start : start + batch]
        result = scorer.process(chunk, states.get)
        states.update(result.states)
        flagged = {(s.sensor_id, s.ts) for s in result.scores if s.is_anomaly}
        for i, r in enumerate(chunk):
            flags[pos + i] = (r.sensor_id, r.ts) in flagged
        pos += len(chunk)
    return flags


def report(test: pd.DataFrame, labels: list, truth: np.ndarray, flags: np.ndarray, profiles: ProfileSet) -> dict:
    """Per reading and per incident quality of one scoring run of the test period."""
    result: dict = {"pooled": metrics(confusion(truth, flags))}
    by_type: dict[str, list[float]] = {}
    delays: list[float] = []
    sid, ts = test["sensor_id"].astype(str).to_numpy(), test["ts"].to_numpy()
    for lab in labels:
        rows = np.isin(sid, lab.sensors) & (ts >= lab.start_ms) & (ts < lab.end_ms)
        if not rows.any():
            continue
        hit = flags & rows
        by_type.setdefault(lab.type, []).append(1.0 if hit.any() else 0.0)
        if hit.any():
            delays.append((ts[hit].min() - lab.start_ms) / 1000.0)
    # precision per flagged reading, counting a flag up to 10 minutes after its incident as explained
    explained = np.zeros(len(flags), dtype=bool)
    for lab in labels:
        explained |= np.isin(sid, lab.sensors) & (ts >= lab.start_ms) & (ts < lab.end_ms + 600_000)
    result["flag_precision_10min"] = round(float((flags & explained).sum() / max(flags.sum(), 1)), 4)
    result["incidents"] = {
        "count": sum(len(v) for v in by_type.values()),
        "detected": round(float(np.mean([x for v in by_type.values() for x in v])), 3) if by_type else 0.0,
        "median_delay_s": round(float(np.median(delays)), 1) if delays else None,
        "by_type": {k: {"count": len(v), "detected": round(float(np.mean(v)), 3)} for k, v in sorted(by_type.items())},
    }
    prof = profile_rows(test, profiles).to_numpy()
    result["profiles"] = {
        str(name): metrics(confusion(truth[prof == name], flags[prof == name])) for name in np.unique(prof)
    }
    return result


def evaluate(seed: int = 7, train_days: int = 2, test_days: int = 1, step: str = "60s") -> dict:
    from services.simulator import Network, SimConfig, Simulator

    started = time.perf_counter()
    sim = Simulator(Network.default(seed=seed), SimConfig(anomaly_fraction=0.05), seed=seed)
    t0 = pd.Timestamp("2024-03-04T00:00:00Z")
    train, _ = sim.history(t0.isoformat(), f"{train_days}d", step=step)
    test, labels = sim.history((t0 + pd.Timedelta(days=train_days)).isoformat(), f"{test_days}d", step=step)
    metric_cols = [c for c in train.columns if c not in META and train[c].dtype.kind == "f"]

    profiles = ProfileSet.load(DEFAULT_PROFILES_FILE)
    store = ModelStore(profiles)
    scorer = Scorer(store, emit_scores=True)
    states: dict[str, bytes] = {}
    run(scorer, frame_readings(train, metric_cols), states)  # warm the rolling state, statistical mode
    readings = frame_readings(test, metric_cols)
    truth = test["anomaly"].to_numpy(dtype=bool)
    result: dict = {"readings": len(readings)}
    # the same test day twice from the same state: the statistical detector alone, then trained models
    result["statistical"] = report(test, labels, truth, run(scorer, readings, dict(states)), profiles)
    train["_profile"] = profile_rows(train, profiles)
    for name in sorted(train["_profile"].unique()):
        part = train[train["_profile"] == name]
        store.set_trained(name, fit_profile(part, profiles.by_name[name]))
    result["trained"] = report(test, labels, truth, run(scorer, readings, dict(states)), profiles)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.detector.offline.evaluation.simulator_eval", description=__doc__
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-days", type=int, default=2)
    parser.add_argument("--test-days", type=int, default=1)
    parser.add_argument("--step", default="60s", help="simulator grid step (None: each sensor's own interval)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = evaluate(args.seed, args.train_days, args.test_days, None if args.step == "None" else args.step)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
