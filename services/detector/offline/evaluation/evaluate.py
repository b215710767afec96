"""Evaluate the offline contract on rig-like recordings: per recording and pooled F1, precision, recall, FAR.

    python -m services.detector.offline.evaluation.evaluate [--recordings 16] [--seed 100] [--out results.json]

Each recording is written to CSV files and goes through exactly what the issue's
evaluation runs: ``fit`` on the training CSV, ``score`` on the test CSV, rows
compared with the labels. Scores are per row and pooled over all recordings,
like SKAB's. Two baselines from the literature run on the same files so the
difficulty of the synthetic set can be compared with published numbers:
IsolationForest and PCA T²+Q on standardised raw values, thresholds from the
training data, no smoothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sklearn.ensemble import IsolationForest

from services.detector.detectors import PCADetector
from services.detector.model import ModelConfig
from services.detector.offline import fit_csv, read_stream, score_csv
from services.detector.offline.evaluation import rig


def confusion(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    truth, pred = truth.astype(bool), pred.astype(bool)
    return {
        "tp": int((truth & pred).sum()),
        "fp": int((~truth & pred).sum()),
        "fn": int((truth & ~pred).sum()),
        "tn": int((~truth & ~pred).sum()),
    }


def metrics(c: dict[str, int]) -> dict[str, float]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = fp / (fp + tn) if fp + tn else 0.0
    return {"f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4), "far": round(far, 4)}


def _pool(confs: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(c[k] for c in confs) for k in ("tp", "fp", "fn", "tn")}


def baselines(train: Path, test: Path) -> dict[str, np.ndarray]:
    """Published-style baselines: fit on standardised raw training values, threshold from training."""
    xtr, _, _ = read_stream(train)
    xte, _, _ = read_stream(test)
    cols = list(xtr.columns)
    a, b = xtr.to_numpy(), xte[cols].to_numpy()
    mu, sd = a.mean(axis=0), a.std(axis=0) + 1e-9
    a, b = (a - mu) / sd, (b - mu) / sd
    forest = IsolationForest(random_state=0).fit(a)
    pca = PCADetector(variance=0.9).fit(a)
    return {"iforest": forest.predict(b) == -1, "pca_t2q": pca.score(b) > 1.0}


def evaluate(
    recordings: list[rig.Recording], workdir: Path, config: ModelConfig | None = None, with_baselines: bool = True
) -> dict:
    per: list[dict] = []
    confs: dict[str, list[dict[str, int]]] = {"detector": [], "iforest": [], "pca_t2q": []}
    for rec in recordings:
        train, test, _ = rig.write(rec, workdir)
        model_dir = workdir / f"{rec.name}-model"
        out = workdir / f"{rec.name}-out.csv"
        fit_csv(train, model_dir, config=config)
        scored = score_csv(test, model_dir, out)
        truth = rec.test["anomaly"].to_numpy()
        c = confusion(truth, scored["anomaly"].to_numpy())
        confs["detector"].append(c)
        row = {"recording": rec.name, "rows": len(truth), "anomalous": int(truth.sum()), **metrics(c)}
        row["incidents"] = rec.incidents
        if with_baselines:
            for name, pred in baselines(train, test).items():
                cb = confusion(truth, pred)
                confs[name].append(cb)
                row[name] = metrics(cb)
        per.append(row)
    pooled = {name: metrics(_pool(cs)) for name, cs in confs.items() if cs}
    return {"recordings": per, "pooled": pooled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.detector.offline.evaluation.evaluate", description=__doc__
    )
    parser.add_argument("--recordings", type=int, default=16)
    parser.add_argument("--seed", type=int, default=100, help="first recording's seed")
    parser.add_argument("--out", type=Path, help="write the full results as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the CSV files and models in this directory")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    recs = [rig.generate(args.seed + i) for i in range(args.recordings)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        result = evaluate(recs, workdir)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if not args.quiet:
        table = pd.DataFrame(
            [
                {
                    "recording": r["recording"],
                    "kinds": ",".join(i["kind"] for i in r["incidents"]),
                    "f1": r["f1"],
                    "precision": r["precision"],
                    "recall": r["recall"],
                    "far": r["far"],
                    "iforest_f1": r.get("iforest", {}).get("f1"),
                    "pca_f1": r.get("pca_t2q", {}).get("f1"),
                }
                for r in result["recordings"]
            ]
        )
        print(table.to_string(index=False))
        for name, m in result["pooled"].items():
            print(
                f"pooled {name:9s} F1 {m['f1']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  FAR {m['far']:.3f}"
            )
    if args.out:
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
