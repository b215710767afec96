"""The published protocols on real recordings (SKAB pump rig, BATADAL C-Town SCADA), through fit/score.

    python -m services.detector evaluate-real --skab ../shared/datasets/skab-dev \
        --batadal ../shared/datasets/batadal-dev [--json OUT]

SKAB (Katser & Kozitsin, Skoltech Anomaly Benchmark): per labelled file, the first
400 rows are written to a training CSV and the rest to a test CSV; the detector is
fitted on one and scores the other exactly as ``fit`` / ``score`` do; TP/FP/FN/TN are
pooled over all files. F1 = TP / (TP + (FP + FN)/2), false-alarm rate FAR = FP / (FP + TN),
missed-alarm rate MAR = FN / (FN + TP). A file without labels (``anomaly-free.csv``) is
scored the same way and reported apart: every flag there is a false alarm.

BATADAL (Taormina et al. 2018, "The Battle of the Attack Detection Algorithms"): fitted
on ``dataset03.csv`` (a normal year), scored on ``dataset04.csv`` (labelled attacks).
S = g·S_TTD + (1-g)·S_CLF with g = 0.5; S_TTD = 1 - mean over attacks of TTD/ΔT (TTD the
hours from an attack's start to its first flag, ΔT its duration, TTD = ΔT if never flagged);
S_CLF = (TPR + TNR) / 2.
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

from services.detector.model import ModelConfig
from services.detector.offline import DataError, fit_csv, offline_config, score_csv
from services.detector.offline.evaluation.evaluate import confusion

SKAB_TRAIN_ROWS = 400
SKAB_TIME = "datetime"
BATADAL_TIME = "DATETIME"
BATADAL_LABEL = "ATT_FLAG"

#: Published results, quoted beside ours in docs/detector.md.
PUBLISHED = {
    "skab": {
        "Conv-AE": {"f1": 0.78, "far": 0.136},
        "MSET": {"f1": 0.78, "far": 0.397},
        "PCA T²+Q": {"f1": 0.76, "far": 0.266},
        "LSTM-AE": {"f1": 0.74},
        "Isolation Forest": {"f1": 0.29},
    },
    "batadal": {"best S (competition)": {"s": 0.970}, "autoencoder": {"f1": 0.78, "precision": 0.90, "recall": 0.69}},
}


def rates(c: dict[str, int]) -> dict[str, float]:
    """The SKAB figures of a confusion count: F1, precision, recall, FAR, MAR, TPR, TNR."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    f1 = tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0
    out = {
        "f1": f1,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "far": fp / (fp + tn) if fp + tn else 0.0,
        "mar": fn / (fn + tp) if fn + tp else 0.0,
    }
    out["tnr"] = 1.0 - out["far"]
    return {k: round(v, 4) for k, v in out.items()}


def episodes(truth: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of the runs of ``truth``."""
    t = np.r_[0, truth.astype(np.int8), 0]
    d = np.diff(t)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def batadal_score(truth: np.ndarray, pred: np.ndarray, gamma: float = 0.5) -> dict[str, float]:
    """BATADAL's S, S_TTD and S_CLF for hourly rows (rows are the time unit)."""
    ttd = []
    for start, end in episodes(truth):
        hits = np.flatnonzero(pred[start:end])
        duration = end - start
        ttd.append((hits[0] if len(hits) else duration) / duration)
    s_ttd = 1.0 - float(np.mean(ttd)) if ttd else 1.0
    r = rates(confusion(truth, pred))
    s_clf = (r["recall"] + r["tnr"]) / 2
    return {
        "s": round(gamma * s_ttd + (1 - gamma) * s_clf, 4),
        "s_ttd": round(s_ttd, 4),
        "s_clf": round(s_clf, 4),
        "attacks": len(ttd),
        "detected": int(sum(t < 1.0 for t in ttd)),
    }


def _pool(confs: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(c[k] for c in confs) for k in ("tp", "fp", "fn", "tn")}


def _fit_score(train: Path, test: Path, workdir: Path, time_column: str, config: ModelConfig | None) -> np.ndarray:
    model_dir = workdir / f"{test.stem}-model"
    out = workdir / f"{test.stem}-scored.csv"
    fit_csv(train, model_dir, time_column, config)
    return score_csv(test, model_dir, out, time_column)["anomaly"].to_numpy().astype(bool)


def _split(path: Path, workdir: Path, rows: int) -> tuple[Path, Path]:
    """The SKAB split: the first ``rows`` rows to a training CSV, the rest to a test CSV (same format)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    stem = f"{path.parent.name}-{path.stem}"
    train, test = workdir / f"{stem}-train.csv", workdir / f"{stem}-test.csv"
    train.write_text("".join(lines[: rows + 1]), encoding="utf-8")
    test.write_text(lines[0] + "".join(lines[rows + 1 :]), encoding="utf-8")
    return train, test


def skab(root: Path, workdir: Path, config: ModelConfig | None = None) -> dict:
    """SKAB's protocol over every CSV under ``root`` (labelled files pooled; unlabelled ones apart)."""
    files = sorted(root.rglob("*.csv"), key=lambda p: (str(p.parent), len(p.stem), p.stem))
    if not files:
        raise DataError(f"{root}: no CSV files")
    per, confs, unlabelled = [], [], []
    for path in files:
        full = pd.read_csv(path, sep=";")
        train, test = _split(path, workdir, SKAB_TRAIN_ROWS)
        pred = _fit_score(train, test, workdir, SKAB_TIME, config)
        name = str(path.relative_to(root))
        if "anomaly" not in full.columns:
            unlabelled.append(
                {"file": name, "rows": len(pred), "flagged": int(pred.sum()), "far": round(float(pred.mean()), 4)}
            )
            continue
        truth = full["anomaly"].to_numpy()[SKAB_TRAIN_ROWS:].astype(bool)
        c = confusion(truth, pred)
        confs.append(c)
        per.append({"file": name, "rows": len(truth), "anomalous": int(truth.sum()), **rates(c)})
    pooled = _pool(confs)
    return {"files": len(per), "pooled": {**rates(pooled), **pooled}, "per_file": per, "unlabelled": unlabelled}


def batadal(root: Path, workdir: Path, config: ModelConfig | None = None) -> dict:
    """Fit on dataset03 (normal year), score dataset04 (labelled attacks)."""
    train, test = root / "dataset03.csv", root / "dataset04.csv"
    pred = _fit_score(train, test, workdir, BATADAL_TIME, config)
    truth = pd.read_csv(test, skipinitialspace=True)[BATADAL_LABEL].to_numpy() == 1
    c = confusion(truth, pred)
    return {"rows": len(truth), "attack_rows": int(truth.sum()), **rates(c), **c, **batadal_score(truth, pred)}


def evaluate(skab_dir: Path | None, batadal_dir: Path | None, config: ModelConfig | None = None) -> dict:
    result: dict = {"published": PUBLISHED}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if skab_dir is not None:
            started = time.perf_counter()
            result["skab"] = skab(Path(skab_dir), workdir, config)
            result["skab"]["seconds"] = round(time.perf_counter() - started, 1)
        if batadal_dir is not None:
            started = time.perf_counter()
            result["batadal"] = batadal(Path(batadal_dir), workdir, config)
            result["batadal"]["seconds"] = round(time.perf_counter() - started, 1)
    return result


def summary(result: dict) -> str:
    lines = []
    if "skab" in result:
        p = result["skab"]["pooled"]
        lines.append(
            f"SKAB ({result['skab']['files']} files, pooled): F1 {p['f1']:.3f}  FAR {p['far']:.1%}  MAR {p['mar']:.1%}"
            f"  precision {p['precision']:.3f}  recall {p['recall']:.3f}"
        )
        for u in result["skab"]["unlabelled"]:
            lines.append(f"  {u['file']} (no anomalies): {u['flagged']} of {u['rows']} rows flagged ({u['far']:.1%})")
    if "batadal" in result:
        b = result["batadal"]
        lines.append(
            f"BATADAL dataset04: F1 {b['f1']:.3f}  precision {b['precision']:.3f}  recall {b['recall']:.3f}"
            f"  FAR {b['far']:.1%}  S {b['s']:.3f} (S_TTD {b['s_ttd']:.3f}, S_CLF {b['s_clf']:.3f})"
            f"  attacks detected {b['detected']}/{b['attacks']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.detector evaluate-real",
        description="Reproduce the SKAB and BATADAL evaluation protocols through fit/score.",
    )
    parser.add_argument("--skab", type=Path, help="directory of SKAB CSVs (e.g. ../shared/datasets/skab-dev)")
    parser.add_argument("--batadal", type=Path, help="directory holding dataset03.csv and dataset04.csv")
    parser.add_argument("--config", type=Path, help="JSON file overriding ModelConfig fields")
    parser.add_argument("--json", type=Path, help="write the full results here")
    args = parser.parse_args(argv)
    if args.skab is None and args.batadal is None:
        parser.error("give --skab and/or --batadal")
    config = offline_config(orjson.loads(args.config.read_bytes())) if args.config else None
    try:
        result = evaluate(args.skab, args.batadal, config)
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
