"""``python -m services.<name> retrain``: read, fit, judge, gate, register with the model card, promote.

The service supplies a :class:`Trainer` (its ``offline/retrain.py``); everything else is here so that
both services take the same flags and write the same report:

1. read ``readings.clean`` by time (``--since``, ``--until``; or, ``--source history``, the history store's
   minute rollups: :mod:`shared.mlops.rollups`) and the ground truth (``labels``,
   ``feedback`` with the ``alerts`` they judge, confirmed ``reports``) from Kafka;
2. split by time: the most recent ``--holdout`` share of the window is never trained on;
3. ``--if-drifted``: stop here (decision ``skipped``) unless the held-out window drifted from production's
   training reference, or a running worker's latest event on ``drift`` says one of its groups drifted;
4. fit the candidate on the rest, evaluate candidate and production on the held-out window;
5. the gate (:mod:`shared.mlops.gate`) decides; the candidate is registered either way with its card
   (a rejected version keeps no alias); promoted: the alias moves and ``models`` hears of it.

Exit status: 0 when promoted, rejected or skipped; 2 when there is too little data or bad arguments;
1 when retraining failed otherwise. ``--report FILE`` gets the JSON in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from shared.mlops import drift as driftmod
from shared.mlops.card import CARD, write_card, write_json
from shared.mlops.frame import readings_frame
from shared.mlops.gate import Decision, GateConfig, Metrics, decide
from shared.mlops.source import TooLittleData, read_topics
from shared.mlops.truth import REPORT_LOOKBACK_MS, Truth, assemble
from shared.mlops.window import Window
from shared.registry import ModelRegistry, RegistryError, publish_event
from shared.topics import ALERTS, DRIFT, FEEDBACK, LABELS, READINGS_CLEAN, REPORTS

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


class Trainer(Protocol):
    """What a service supplies: its models per profile, how to fit, judge, save and find them."""

    service: str
    gate: GateConfig

    def fit(self, train: pd.DataFrame, truth: Truth, progress: bool) -> dict[str, Any]:
        """Candidate model per profile, from the training part (raises TooLittleData when it cannot)."""

    def production(self, registry: ModelRegistry) -> tuple[dict[str, Any], dict[str, str]]:
        """Models serving now per profile and their versions (the service's fallback when none is promoted)."""

    def evaluate(self, models: dict[str, Any], frame: pd.DataFrame, truth: Truth, split_ms: int) -> Metrics:
        """Metrics per profile on the rows from ``split_ms`` on (earlier rows only warm state up)."""

    def drift_columns(
        self, models: dict[str, Any], frame: pd.DataFrame, since_ms: int, truth: Truth
    ) -> dict[str, dict[str, np.ndarray]]:
        """What drift is tracked on, per profile (``{profile: {column: values}}``), of the rows from ``since_ms``
        on outside known incidents, as ``models`` see them (earlier rows may warm state up)."""

    def registry_name(self, profile: str) -> str: ...

    def history_frame(self, since_ms: int, until_ms: int) -> pd.DataFrame:
        """``--source history``: the window's readings from the history store (raises ValueError, with why,
        when the service cannot train on them)."""

    def save(self, model: Any, directory: Path) -> dict[str, Any]:
        """Write the model's files into ``directory``; returns metadata for the registry."""


def add_arguments(parser: argparse.ArgumentParser, settings: Any) -> None:
    parser.add_argument(
        "--since", default="7d", help="start of the window: a duration before --until (7d, 20m) or a time"
    )
    parser.add_argument("--until", default="now", help="end of the window: ISO 8601 time or epoch ms (default now)")
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="most recent share of the window kept out of training, to judge on"
    )
    parser.add_argument("--report", type=Path, help="also write the report (decision, reasons, metrics) to this JSON")
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir, help="model registry directory")
    parser.add_argument("--alias", default="production", help="alias a promoted candidate gets")
    parser.add_argument("--gate", type=Path, help="JSON overriding the gate rules (see docs/mlops.md)")
    parser.add_argument("--dry-run", action="store_true", help="judge only: register nothing, promote nothing")
    parser.add_argument("--no-publish", action="store_true", help="move the alias but send no models event")
    parser.add_argument(
        "--if-drifted", action="store_true", help="retrain only when the recent data drifted (PSI) from production's"
    )
    parser.add_argument(
        "--source",
        choices=("kafka", "history"),
        default="kafka",
        help="readings from readings.clean on Kafka, or the history store's minute rollups (forecaster only)",
    )
    parser.add_argument("--min-rows", type=int, default=1000, help="fewer readings in the window is an error")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())


def load_window(
    settings: Any, window: Window, progress: bool, history: Callable[[int, int], pd.DataFrame] | None = None
) -> tuple[pd.DataFrame, Truth, dict[str, int], list[dict[str, Any]]]:
    """The readings of the window (from Kafka, or ``history``), the ground truth that may concern them and the
    drift events (from Kafka)."""
    spans = {
        READINGS_CLEAN.name: (window.since_ms, window.until_ms),
        LABELS.name: (None, None),  # an incident may have started before the window
        FEEDBACK.name: (window.since_ms, None),  # verdicts come after the alert
        ALERTS.name: (window.since_ms - DAY_MS, None),
        REPORTS.name: (window.since_ms, window.until_ms + REPORT_LOOKBACK_MS),
        DRIFT.name: (None, None),  # the workers' latest verdicts, however old
    }
    if history is not None:
        del spans[READINGS_CLEAN.name]
    got = read_topics(settings, spans, progress)
    if history is not None:
        frame, unusable = history(window.since_ms, window.until_ms), 0
    else:
        frame, unusable = readings_frame(got[READINGS_CLEAN.name][0])
    frame = frame[(frame["ts"] >= window.since_ms) & (frame["ts"] < window.until_ms)].reset_index(drop=True)
    truth = assemble(got[LABELS.name][0], got[FEEDBACK.name][0], got[ALERTS.name][0], got[REPORTS.name][0]).within(
        window.since_ms, window.until_ms
    )
    undecodable = {t: bad for t, (_v, bad) in got.items() if bad}
    if unusable:
        undecodable["readings_unusable"] = unusable
    return frame, truth, undecodable, [e for e in got[DRIFT.name][0] if isinstance(e, dict)]


def production_reference(registry: ModelRegistry, names: dict[str, str], versions: dict[str, str]) -> dict[str, Any]:
    """The training reference kept in the card of each production version (profile -> column -> reference)."""
    out: dict[str, Any] = {}
    for profile, version in versions.items():
        try:
            mv = registry.load(names[profile], version, verified=False)
            card = orjson.loads((mv.path / CARD).read_bytes())
        except (RegistryError, OSError, orjson.JSONDecodeError):
            continue
        ref = (card.get("reference") or {}).get(profile)
        if ref:
            out[profile] = ref
    return out


def drifted_in_workers(events: list[dict[str, Any]], service: str) -> list[str]:
    """The groups (``profile (psi)``, ``zone (adwin)``) of ``service`` whose latest event on the ``drift`` topic
    (the running workers' monitors, :mod:`shared.mlops.monitor`) says ``drifted``."""
    latest: dict[tuple[str, str], str] = {}
    for e in events:  # one partition: in the order they were published
        if e.get("service") == service:
            latest[(str(e.get("group")), str(e.get("kind")))] = str(e.get("status"))
    return sorted(f"{g} ({k})" for (g, k), status in latest.items() if status == "drifted")


def skip_reason(drift: dict[str, Any], workers: list[str] | None = None) -> str | None:
    """Why ``--if-drifted`` need not retrain (None: retrain). Only a measured absence of drift skips: without
    a reference to compare with (no production model, or one without a card) the retrain goes ahead, and so it
    does when a running worker last said a group drifted (``workers``, from :func:`drifted_in_workers`)."""
    if workers:
        return None
    if drift.get("level") in ("stable", "moderate"):
        return f"no drift: largest PSI {drift['max_psi']:.3f} is under {drift['threshold']}"
    return None


def retrain(trainer: Trainer, settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The whole flow; returns the report (its ``decision``: promoted, rejected, skipped)."""
    t0 = time.monotonic()
    say = (lambda msg: print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr)) if args.progress else log.info
    gate = trainer.gate
    if args.gate:
        gate = GateConfig.from_dict(orjson.loads(args.gate.read_bytes()), trainer.gate)
    window = Window.parse(args.since, args.until, args.holdout)
    where = "the history store's rollups" if args.source == "history" else settings.topic(READINGS_CLEAN.name)
    say(f"reading {where} from {window.describe()['since']} to {window.describe()['until']}")
    history = trainer.history_frame if args.source == "history" else None
    frame, truth, undecodable, drift_events = load_window(settings, window, args.progress, history)
    t_read = time.monotonic() - t0
    if len(frame) < args.min_rows:
        raise TooLittleData(
            f"{len(frame)} readings between {window.describe()['since']} and {window.describe()['until']} "
            f"(at least {args.min_rows} needed): widen --since, or lower --min-rows"
        )
    first_ms = int(frame["ts"].min())
    split = window.split_ms(first_ms, int(frame["ts"].max()))
    train = frame[frame["ts"] < split]
    holdout = frame[frame["ts"] >= split]
    say(
        f"{len(frame)} readings of {frame['sensor_id'].nunique()} sensors: {len(train)} to train on, "
        f"{len(holdout)} held out; ground truth {truth.counts}"
    )
    registry = ModelRegistry(args.model_dir)
    production, prod_versions = trainer.production(registry)
    names = {p: trainer.registry_name(p) for p in set(production) | set(prod_versions)}
    report: dict[str, Any] = {
        "service": trainer.service,
        "decision": "",
        "candidate": {},
        "production": prod_versions,
        "reasons": [],
        "data": {
            **window.describe(split),
            "rows": len(frame),
            "rows_train": len(train),
            "rows_holdout": len(holdout),
            "sensors": int(frame["sensor_id"].nunique()),
            "zones": int(frame["zone"].nunique()),
            "first_ms": int(frame["ts"].min()),
            "last_ms": int(frame["ts"].max()),
            "source": args.source,
            "label_sources": truth.sources,
            "truth": {
                "records": truth.counts,
                "rejected": truth.rejected,
                "incidents": len(truth.incidents),
                "false_alarm_verdicts": len(truth.false_alarms),
            },
            "undecodable": undecodable,
        },
        "gate": gate.to_dict(),
    }
    references = production_reference(registry, names, prod_versions)
    recent = trainer.drift_columns({p: m for p, m in production.items() if p in references}, frame, split, truth)
    report["drift"] = driftmod.compare(references, recent)
    report["drift"]["workers"] = drifted_in_workers(drift_events, trainer.service)
    say(
        f"drift against production's training data: {report['drift']['level']} (max PSI "
        f"{report['drift']['max_psi']}); drifted in the workers: {report['drift']['workers'] or 'none'}"
    )
    why_not = skip_reason(report["drift"], report["drift"]["workers"]) if args.if_drifted else None
    if why_not:
        report.update(decision="skipped", reasons=[why_not])
        return report

    t1 = time.monotonic()
    candidate = trainer.fit(train, truth.within(int(train["ts"].min()), split), args.progress)
    t_fit = time.monotonic() - t1
    say(f"fitted {len(candidate)} candidate models in {t_fit:.1f}s; evaluating on the held-out window")
    t2 = time.monotonic()
    cand_metrics = trainer.evaluate(candidate, frame, truth, split)
    judged = {p: production[p] for p in candidate if p in production}  # what the candidate would replace
    prod_metrics = trainer.evaluate(judged, frame, truth, split) if judged else None
    t_eval = time.monotonic() - t2
    decision: Decision = decide(cand_metrics, prod_metrics, gate)
    report.update(
        decision=decision.name,
        reasons=decision.reasons,
        improvements=decision.improvements,
        not_judged=decision.not_judged,
        metrics={"candidate": cand_metrics, "production": prod_metrics},
        # the reference leaves out the first quarter of training, while the sensors' baselines were still young
        reference=driftmod.references(trainer.drift_columns(candidate, train, (3 * first_ms + split) // 4, truth)),
    )
    say(f"gate: {decision.name}: {'; '.join(decision.reasons)[:500]}")
    report["seconds"] = {"read": round(t_read, 2), "fit": round(t_fit, 2), "evaluate": round(t_eval, 2)}
    if args.dry_run:
        report["decision"] = f"{decision.name} (dry run)"
        return report

    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the card is sealed with each model's files (sha256 in meta.json), so it is written before the
        # versions exist; its ``candidate`` says which profiles were registered together
        report["candidate"] = {p: "" for p in sorted(candidate)}
        plots = write_card(report, Path(tmp))
        for profile in sorted(candidate):
            meta: dict[str, Any] = {}
            with registry.create(trainer.registry_name(profile), meta) as target:
                meta.update(trainer.save(candidate[profile], target), retrain={"decision": decision.name, "card": CARD})
                for name in plots:
                    shutil.copyfile(Path(tmp) / name, target / name)
            versions[profile] = registry.last_created.version
    report["candidate"] = versions
    if decision.promoted:
        events = [registry.promote(trainer.registry_name(p), v, args.alias) for p, v in sorted(versions.items())]
        if not args.no_publish:
            asyncio.run(_publish_all(settings, events))
        report["published"] = not args.no_publish
        say(f"promoted to {args.alias}: {versions}")
    else:
        say(f"registered, not promoted: {versions}")
    report["seconds"]["total"] = round(time.monotonic() - t0, 2)
    return report


async def _publish_all(settings: Any, events: list[Any]) -> None:
    for event in events:
        await publish_event(settings, event)


def main(trainer_factory: Any, settings: Any, argv: list[str], prog: str) -> int:
    """The ``retrain`` command of a service: parse, run, report; the exit status as documented above."""
    parser = argparse.ArgumentParser(prog=prog, description="Retrain from the stream, judge, gate, promote.")
    add_arguments(parser, settings)
    args = parser.parse_args(argv)
    report: dict[str, Any]
    status = 0
    try:
        report = retrain(trainer_factory(), settings, args)
    except (TooLittleData, ValueError) as exc:
        report, status = {"decision": "failed", "reasons": [str(exc)]}, 2
    except Exception as exc:
        log.exception("retrain failed")
        report, status = {"decision": "failed", "reasons": [f"{type(exc).__name__}: {exc}"]}, 1
    if args.report:
        write_json(report, args.report)
    line = f"{report['decision']}: {'; '.join(report.get('reasons', []))[:1000]}"
    print(line if status == 0 else f"error: {line}", file=sys.stdout if status == 0 else sys.stderr)
    if report.get("candidate"):
        print(f"candidate versions: {report['candidate']}")
    return status
