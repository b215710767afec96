"""The forecaster's command line: ``worker`` and the ops commands ``train``, ``evaluate``, ``retrain`` and ``settings``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.forecaster.settings import ENV_PREFIX, ForecasterSettings
from shared.cli import Command, ServiceCli, settings_command
from shared.settings import Settings


def _add_data_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="labelled history: long frame .parquet/.csv with labels beside it")
    src.add_argument("--simulate", metavar="DURATION", help="generate history with the simulator, e.g. 3d")
    src.add_argument(
        "--synthetic", metavar="DAYS", type=float, help="the small built-in synthetic history (tests, demos)"
    )
    p.add_argument("--start", default="2024-03-04T00:00:00Z", help="start of simulated history")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model-dir", type=Path, default=None, help="model registry (default FLOWWATCH_MODEL_DIR)")


def _history(args: argparse.Namespace, fs: ForecasterSettings):
    from services.forecaster.offline import history as hist

    if args.data is not None:
        return hist.load(args.data)
    if args.synthetic is not None:
        from services.forecaster.offline import synthetic

        return synthetic.generate(days=args.synthetic, step_s=fs.step_s, seed=args.seed)
    return hist.simulate(args.simulate, start=args.start, seed=args.seed)


def _settings(args: argparse.Namespace) -> tuple[Settings, ForecasterSettings, Path]:
    settings = Settings.from_env("forecaster")
    fs = ForecasterSettings.from_env()
    return settings, fs, args.model_dir or settings.model_dir


def train_cmd(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.forecaster train", description="Train, evaluate and register a model."
    )
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--warmup-hours", type=float, default=6.0, help="history spent warming up the zone baselines")
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="also write train-report.json here (the version dir always holds one, sealed with the model)",
    )
    p.add_argument("--promote", metavar="ALIAS", default=None, help="point ALIAS (e.g. production) at the new version")
    p.add_argument("--publish", action="store_true", help="with --promote: send the models event so workers reload now")
    args = p.parse_args(argv)
    settings, fs, model_dir = _settings(args)
    from services.forecaster.offline.training import train, write_report

    try:
        history = _history(args, fs)
        version, report = train(
            history,
            fs,
            model_dir,
            epochs=args.epochs,
            warmup_s=args.warmup_hours * 3600,
            seed=args.seed,
            promote=args.promote,
        )
    except (ValueError, FileNotFoundError) as exc:  # history or options it cannot use
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report_dir is not None:  # the version holds its own copy, sealed with it
        write_report(report, args.report_dir / "train-report.json")
    m = report["risk"]
    f = report["forecast"]["clean"]
    print(f"registered {version.name} {version.version} at {version.path}")
    print(
        f"risk: accuracy {m['model']['accuracy']} (class prior {m['class_prior']['accuracy']}), "
        f"macro F1 {m['model']['macro_f1']} (prior {m['class_prior']['macro_f1']}), "
        f"log loss {m['model']['log_loss']} (prior {m['class_prior']['log_loss']})"
    )
    print(
        f"forecast: MAE {f['mae']} (last value {f['mae_last_value']}); on {f['n_seasonal']} rows with a season of "
        f"history {f['mae_on_seasonal_rows']} (seasonal naive {f['mae_seasonal_naive']}); 80% interval coverage "
        f"{f['interval_coverage_80']}"
    )
    if args.promote and args.publish:
        from shared.registry import ModelRegistry, publish_event

        event = ModelRegistry(model_dir).promote(version.name, version.version, args.promote)
        asyncio.run(publish_event(settings, event))
        print(f"published: {version.name} {args.promote} -> {version.version}")
    return 0


def evaluate_cmd(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.forecaster evaluate",
        description="Replay history through the serving pipeline with a registered model; JSON report and PNG plots.",
    )
    _add_data_args(p)
    p.add_argument("--version", default=None, help="model version (default: the served alias, else the newest)")
    p.add_argument(
        "--out", type=Path, default=Path("forecaster-evaluation"), help="directory for evaluation.json and plots"
    )
    p.add_argument("--from-ms", type=int, default=None, help="score from this time (default: the model's test split)")
    args = p.parse_args(argv)
    _, fs, model_dir = _settings(args)
    from services.forecaster.offline.training import evaluate

    try:
        history = _history(args, fs)
        report = evaluate(history, fs, model_dir, args.out, version=args.version, from_ms=args.from_ms)
    except (ValueError, FileNotFoundError) as exc:  # history or options it cannot use
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:  # no model to evaluate
        print(f"error: {exc}", file=sys.stderr)
        return 1
    r, f = report["risk"], report["forecast"]["clean"]
    print(f"evaluated {report['model']['name']} {report['model']['version']} on {report['data']['records']} zone steps")
    print(
        f"risk: accuracy {r['model']['accuracy']} (class prior {r['class_prior']['accuracy']}), macro F1 "
        f"{r['model']['macro_f1']}, incident AUC {r['model']['incident']['auc']}, ECE {r['model']['calibration']['ece']}"
    )
    print(
        f"forecast: MAE {f['mae']} (last value {f['mae_last_value']}), 80% interval coverage {f['interval_coverage_80']}"
    )
    print(f"report: {args.out / 'evaluation.json'}; plots: {', '.join(report['plots'])}")
    return 0


def retrain_cmd(argv: list[str]) -> int:
    from services.forecaster.offline.retrain import ForecasterTrainer
    from shared.mlops.flow import main as run

    return run(ForecasterTrainer, Settings.from_env("forecaster"), argv, "python -m services.forecaster retrain")


CLI = ServiceCli(
    "forecaster",
    "The forecaster: per-zone risk of each incident type from the clean readings.",
    {
        "train": Command(train_cmd, "train, evaluate and register a model"),
        "evaluate": Command(evaluate_cmd, "replay history through the serving pipeline with a registered model"),
        "retrain": Command(retrain_cmd, "the scheduled retrain: window, train, gate, promote"),
        "settings": settings_command(ForecasterSettings, ENV_PREFIX, "forecaster"),
    },
    app="services.forecaster.app",
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
