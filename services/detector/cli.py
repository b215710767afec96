"""Ops commands of the detector: the offline contract (fit, score) and model management.

Kept apart from the Faust app so `fit` and `score` start fast and never touch a broker.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import orjson

from services.detector.model import ModelConfig
from services.detector.offline import DataError, fit_csv, score_csv


def _config(path: Path | None) -> ModelConfig:
    if path is None:
        return ModelConfig()
    try:
        return ModelConfig.from_dict(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{path}: not a usable model config: {exc}") from None


def fit(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.detector fit", description="Fit the anomaly model on a CSV of normal operation."
    )
    parser.add_argument("--data", type=Path, required=True, help="training CSV: a time column and numeric sensors")
    parser.add_argument("--model-dir", type=Path, required=True, help="directory to write the model to")
    parser.add_argument("--time-column", default="timestamp", help="name of the ISO 8601 time column")
    parser.add_argument("--config", type=Path, help="JSON file overriding ModelConfig fields")
    args = parser.parse_args(argv)
    try:
        model = fit_csv(args.data, args.model_dir, args.time_column, _config(args.config))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"fitted on {model.trained_rows} rows of {len(model.metrics)} sensors; "
        f"ensemble threshold {model.threshold:.3f}; model in {args.model_dir}"
    )
    return 0


def score(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.detector score", description="Score a CSV with a fitted model (causal, in order)."
    )
    parser.add_argument("--data", type=Path, required=True, help="CSV to score, same sensor columns as training")
    parser.add_argument("--model-dir", type=Path, required=True, help="directory written by `fit`")
    parser.add_argument("--output", type=Path, required=True, help="CSV to write: timestamp,score,anomaly")
    parser.add_argument("--time-column", default="timestamp", help="name of the ISO 8601 time column")
    args = parser.parse_args(argv)
    try:
        out = score_csv(args.data, args.model_dir, args.output, args.time_column)
    except (DataError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flagged = int(out["anomaly"].sum())
    share = flagged / len(out) if len(out) else 0.0
    print(f"scored {len(out)} rows, {flagged} anomalous ({share:.1%}); wrote {args.output}")
    return 0


COMMANDS = {"fit": fit, "score": score}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return COMMANDS[argv[1]](argv[2:])
