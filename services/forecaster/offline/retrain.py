"""The forecaster's part of ``retrain`` (the flow is shared.mlops.flow): one model for every zone, fitted on
the training part of the window with its incidents as labels (labels, true-positive verdicts, confirmed
reports), judged against the production version by replaying the whole window through the serving pipeline
and scoring the risk records of the held-out part. Metrics (one profile, ``all``):

* ``macro_f1``, ``log_loss``, ``calibration_error`` (expected calibration error of the incident
  probability) of the risk classes;
* ``forecast_mae`` (relative: divided by the mean absolute actual, so zones weigh alike) and
  ``interval_coverage_error`` (distance of the 80 % interval's coverage from 0.8) of the forecast on steps
  without an incident.

Without a production version the candidate only has to meet the floors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.forecaster.classes import LABEL_TO_CLASS
from services.forecaster.offline.dataset import ZoneLabels, replay
from services.forecaster.offline.history import NON_METRIC, History
from services.forecaster.offline.training import evaluate_records, fit, load_predictor
from services.forecaster.settings import ForecasterSettings
from shared.mlops.gate import GateConfig, Metrics, Rule
from shared.mlops.source import TooLittleData
from shared.mlops.truth import Truth
from shared.records import IncidentLabel
from shared.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)

PROFILE = "all"
SEASON_S = 86400

#: The forecaster's gate (override with ``--gate FILE``; docs/mlops.md).
GATE = GateConfig(
    rules=(
        Rule("macro_f1", margin=0.02),
        Rule("log_loss", higher_is_better=False, margin_rel=0.05),
        Rule("calibration_error", higher_is_better=False, floor=0.2, margin=0.02),
        Rule("forecast_mae", higher_is_better=False, margin_rel=0.05),
        Rule("interval_coverage_error", higher_is_better=False, floor=0.3, margin=0.05),
    ),
)


def labels_of(truth: Truth) -> list[IncidentLabel]:
    """The incidents of the ground truth whose kind names a risk class, as the forecaster's labels (a verdict on a
    sensor anomaly says something was wrong, not what: it teaches the detector, not the risk classes)."""
    return [
        IncidentLabel(
            incident_id=i.ident or f"{i.source}-{i.zone}-{i.start_ms}",
            type=i.kind or "leak",
            start_ms=i.start_ms,
            end_ms=i.end_ms,
            site="",
            zone=i.zone,
            utility="",
            sensors=list(i.sensors),
        )
        for i in truth.incidents
        if (i.kind or "leak") in LABEL_TO_CLASS and i.zone  # a site-wide report names no zone to label
    ]


class ForecasterTrainer:
    service = "forecaster"

    def __init__(self, settings: ForecasterSettings | None = None, epochs: int = 40, seed: int = 7):
        self.settings = settings or ForecasterSettings.from_env()
        self.gate = GATE
        self.epochs = epochs
        self.seed = seed

    def registry_name(self, profile: str) -> str:
        return self.settings.model_name

    def fit(self, train: pd.DataFrame, truth: Truth, progress: bool = False) -> dict[str, Any]:
        span_s = (int(train["ts"].max()) - int(train["ts"].min())) / 1000
        steps = span_s / self.settings.step_s
        if steps < 4 * self.settings.window_steps:
            raise TooLittleData(
                f"{span_s / 3600:.1f} h of training data is {steps:.0f} steps of {self.settings.step_s} s; the "
                f"forecaster needs at least {4 * self.settings.window_steps}: widen --since"
            )
        # baselines settle over a sixth of the window (at most the 6 h of `train`), the rest splits 75/20/5
        warmup_s = min(6 * 3600.0, span_s / 6)
        try:
            predictor, _ = fit(
                History(train, labels_of(truth)),
                self.settings,
                warmup_s=warmup_s,
                fractions=(0.75, 0.2),
                epochs=self.epochs,
                seed=self.seed,
                season_s=SEASON_S,
            )
        except ValueError as exc:
            raise TooLittleData(f"forecaster: {exc}") from None
        return {PROFILE: predictor}

    def production(self, registry: ModelRegistry) -> tuple[dict[str, Any], dict[str, str]]:
        name = self.settings.model_name
        version = registry.aliases(name).get(self.settings.model_alias)
        if version is None:
            return {}, {}
        try:
            predictor, mv = load_predictor(registry.root, name, version=version)
        except (RegistryError, OSError, ValueError) as exc:
            log.warning(
                "production forecaster %s unusable (%s); the candidate is held to the floors only", version, exc
            )
            return {}, {}
        return {PROFILE: predictor}, {PROFILE: mv.version}

    def evaluate(self, models: dict[str, Any], frame: pd.DataFrame, truth: Truth, split_ms: int) -> Metrics:
        predictor = models.get(PROFILE)
        if predictor is None:
            return {}
        history = History(frame, labels_of(truth))
        cfg = predictor.config
        _rows, risks, _states = replay(
            history, cfg, self.settings, predictor, season_s=SEASON_S, record_from_ms=split_ms - SEASON_S * 1000
        )
        report, _ = evaluate_records(risks, ZoneLabels(history.labels), cfg, season_s=SEASON_S, score_from_ms=split_ms)
        risk, fc = report["risk"]["model"], report["forecast"]["clean"]
        coverage = fc["interval_coverage_80"]
        finite = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 4)  # noqa: E731
        return {
            PROFILE: {
                "macro_f1": finite(risk["macro_f1"]),
                "log_loss": finite(risk["log_loss"]),
                "calibration_error": finite(risk["incident"]["ece"]),
                "incident_auc": finite(risk["incident"]["auc"]),
                "forecast_mae": finite(fc["relative_mae"]),
                "forecast_mae_last_value": finite(fc["relative_mae_last_value"]),
                "interval_coverage_80": finite(coverage),
                "interval_coverage_error": finite(abs(coverage - 0.8)),
                "n": int(risk["n"]),
            }
        }

    def drift_columns(
        self, models: dict[str, Any], frame: pd.DataFrame, since_ms: int, truth: Truth
    ) -> dict[str, dict[str, np.ndarray]]:
        """The readings' metrics per utility from ``since_ms`` on, outside known incidents (raw levels: a
        window shorter than a day shows its daily cycle as drift; see docs/mlops.md)."""
        frame = frame[(frame["ts"] >= since_ms) & ~truth.anomalous(frame)]
        metrics = [c for c in frame.columns if c not in NON_METRIC and pd.api.types.is_numeric_dtype(frame[c])]
        return {
            str(utility): {m: part[m].to_numpy(dtype=np.float64) for m in metrics if part[m].notna().any()}
            for utility, part in frame.groupby("utility")
        }

    def history_frame(self, since_ms: int, until_ms: int) -> pd.DataFrame:
        """The history store's minute rollups of the window (``FLOWWATCH_HISTORY_DATABASE_URL`` and its TLS
        settings): the forecaster works on step means of the zones, which minute means feed as well."""
        import asyncio

        from services.history.settings import HistorySettings
        from services.history.store import connect
        from shared.mlops.rollups import read_rollups

        async def read() -> pd.DataFrame:
            conn = await connect(HistorySettings.from_env(), timeout=30)
            try:
                return await read_rollups(conn, since_ms, until_ms)
            finally:
                await conn.close()

        return asyncio.run(read())

    def save(self, predictor: Any, directory: Path) -> dict[str, Any]:
        return {**predictor.save(directory), "kind": "forecaster"}
