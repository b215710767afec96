"""The detector's command line: ``worker``, the offline contract (fit, score) and model management.

The ops commands never import the Faust app: `fit` and `score` start fast and never touch a broker.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from services.detector.settings import ENV_PREFIX, DetectorSettings
from shared.cli import Command, ServiceCli, settings_command

# the model (numpy, the kernels) is imported by the commands that use it: `score` first chooses how its
# kernels load (services.detector.compiled)
if TYPE_CHECKING:
    from services.detector.model import ModelConfig


def _config(path: Path | None) -> ModelConfig:
    from services.detector.offline import DataError, offline_config

    if path is None:
        return offline_config()
    try:
        return offline_config(orjson.loads(path.read_bytes()))
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
    from services.detector.offline import DataError, fit_csv

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
    parser.add_argument(
        "--jit", action="store_true", help="numba's JIT kernels even when `build-kernels` has built them"
    )
    args = parser.parse_args(argv)
    if not args.jit:
        from services.detector import compiled

        compiled.use_ahead_of_time()
    from services.detector.offline import DataError, score_file

    try:
        out = score_file(args.data, args.model_dir, args.output, args.time_column)
    except (DataError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flagged = int(out.anomaly.sum())
    share = flagged / len(out) if len(out) else 0.0
    print(f"scored {len(out)} rows, {flagged} anomalous ({share:.1%}); wrote {args.output}")
    return 0


def build_kernels(argv: list[str]) -> int:
    from services.detector import compiled

    path = compiled.build()
    print(f"kernels built ahead of time: {path} (`score` loads them without numba)")
    return 0


def train(argv: list[str]) -> int:
    from services.detector.offline.training import fit_profile, profile_rows, read_history
    from services.detector.profiles import ProfileError, ProfileSet
    from services.detector.settings import DetectorSettings
    from shared.registry import ModelRegistry, publish_event
    from shared.settings import Settings

    settings = Settings.from_env("detector")
    ds = DetectorSettings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m services.detector train",
        description="Train each profile's streaming model on a history of readings and register it.",
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="long frame (.parquet or .csv): sensor_id, ts, metrics"
    )
    parser.add_argument("--profile", action="append", help="profile(s) to train; default: every profile in the data")
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir, help="model registry directory")
    parser.add_argument("--profiles-file", type=Path, default=ds.profiles_file)
    parser.add_argument("--promote", metavar="ALIAS", help="point ALIAS (e.g. production) at the new versions")
    parser.add_argument("--publish", action="store_true", help="announce promotions on the models topic")
    args = parser.parse_args(argv)
    try:
        profiles = ProfileSet.load(args.profiles_file)
        df = read_history(args.data)
    except (ProfileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    df["_profile"] = profile_rows(df, profiles)
    wanted = args.profile or sorted(df["_profile"].unique())
    registry = ModelRegistry(args.model_dir)
    failed = 0
    for name in wanted:
        if name not in profiles.by_name:
            print(f"error: no profile {name!r} in {args.profiles_file}", file=sys.stderr)
            failed += 1
            continue
        try:
            model = fit_profile(df[df["_profile"] == name], profiles.by_name[name], ds.zscore_threshold)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        with registry.create(f"{ds.model_prefix}{name}", model.meta()) as target:
            model.save(target)
        version = registry.last_created.version
        line = f"{ds.model_prefix}{name} {version}: {model.trained_rows} readings, threshold {model.threshold:.3f}"
        if args.promote:
            event = registry.promote(f"{ds.model_prefix}{name}", version, args.promote)
            line += f", {args.promote} -> {version}"
            if args.publish:
                import asyncio

                asyncio.run(publish_event(settings, event))
                line += " (published)"
        print(line)
    return 1 if failed else 0


def retrain(argv: list[str]) -> int:
    from services.detector.offline.retrain import DetectorTrainer
    from shared.mlops.flow import main as run
    from shared.settings import Settings

    return run(DetectorTrainer, Settings.from_env("detector"), argv, "python -m services.detector retrain")


def evaluate_real(argv: list[str]) -> int:
    from services.detector.offline.evaluation.real import main as run

    return run(argv)


CLI = ServiceCli(
    "detector",
    "The detector: every clean reading scored for anomalies by its profile's streaming model.",
    {
        "fit": Command(fit, "fit the anomaly model on a CSV of normal operation"),
        "score": Command(score, "score a CSV with a fitted model (causal, in order)"),
        "build-kernels": Command(
            build_kernels,
            "compile the scoring kernels ahead of time (a C compiler): `score` then starts without numba",
            options=False,
        ),
        "train": Command(train, "train each profile's streaming model on a history of readings and register it"),
        "retrain": Command(retrain, "the scheduled retrain: window, train, gate, promote"),
        "evaluate-real": Command(evaluate_real, "evaluate on the real labelled recordings"),
        "settings": settings_command(DetectorSettings, ENV_PREFIX, "detector"),
    },
    app="services.detector.app",
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
