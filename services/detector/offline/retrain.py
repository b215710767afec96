"""The detector's part of ``retrain`` (the flow is shared.mlops.flow): one pooled model per profile, fitted on
the training part's readings that no ground truth marks anomalous, judged against the models serving now.

Judging replays the whole window through each model with the streaming code (features, then score, per
sensor from an empty state, as a worker that starts fresh would), so the held-out rows are scored with
the state the rows before them left. Per profile, on the held-out rows:

* ``precision``, ``recall``, ``f1``: flagged readings against readings inside a known incident (labels,
  true-positive verdicts, confirmed reports) — only when the window holds incidents of that profile;
* ``false_alarms_per_sensor_day``: flag episodes that start outside every incident, per sensor-day;
* ``incidents_detected``: share of the incidents on the profile's sensors flagged at least once
  (``incidents_caught``: how many);
  ``detection_delay_s``: median time from an incident's start to its first flag;
* ``verdict_agreement``: share of operators' verdicts the model agrees with (flags what they confirmed,
  stays quiet where they called a false alarm).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.detector.model import AnomalyModel, Scored
from services.detector.offline.training import fit_profile, profile_rows
from services.detector.profiles import Profile, ProfileSet
from services.detector.settings import DetectorSettings
from shared.mlops.gate import GateConfig, Metrics, Rule
from shared.mlops.source import TooLittleData
from shared.mlops.truth import Truth
from shared.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)

STATISTICAL = "statistical"
MIN_SUPPORT = 3  # incidents (or verdicts) in a profile's held-out window before recall-like rules count
DAY_MS = 86_400_000

#: The detector's gate (override with ``--gate FILE``; docs/mlops.md).
GATE = GateConfig(
    rules=(
        Rule("f1", margin=0.02, support="incidents", min_support=MIN_SUPPORT),
        Rule("recall", margin=0.05, support="incidents", min_support=MIN_SUPPORT),
        Rule("false_alarms_per_sensor_day", higher_is_better=False, floor=50.0, margin=0.5, margin_rel=0.10),
        Rule("incidents_detected", margin=0.0, support="incidents", min_support=MIN_SUPPORT),
        # however few the incidents, a candidate may not catch fewer of them than production on the same rows
        Rule("incidents_caught", margin=0.0),
        Rule("verdict_agreement", margin=0.05, support="verdicts", min_support=MIN_SUPPORT),
    ),
    min_gain=0.0,
)


class DetectorTrainer:
    service = "detector"

    def __init__(self, settings: DetectorSettings | None = None, profiles: ProfileSet | None = None):
        self.settings = settings or DetectorSettings.from_env()
        self.profiles = profiles or ProfileSet.load(self.settings.profiles_file)
        self.gate = GATE
        self.skipped: dict[str, str] = {}

    def registry_name(self, profile: str) -> str:
        return f"{self.settings.model_prefix}{profile}"

    def _by_profile(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        if frame.empty:
            return {}
        names = profile_rows(frame, self.profiles)
        return {name: part for name, part in frame.groupby(names, sort=True)}

    def fit(self, train: pd.DataFrame, truth: Truth, progress: bool = False) -> dict[str, Any]:
        from tqdm import tqdm

        data = train.assign(anomaly=truth.anomalous(train))
        out: dict[str, AnomalyModel] = {}
        parts = self._by_profile(data)
        for name, part in tqdm(parts.items(), desc="fitting profiles", disable=not progress, leave=False):
            try:
                out[name] = fit_profile(part, self.profiles.by_name[name], self.settings.zscore_threshold)
            except ValueError as exc:
                self.skipped[name] = str(exc)
                log.warning("profile %s not retrained: %s", name, exc)
        if not out:
            raise TooLittleData(
                "no profile has enough normal readings to train on: "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            )
        return out

    def production(self, registry: ModelRegistry) -> tuple[dict[str, Any], dict[str, str]]:
        """Each profile's promoted model, or the statistical detector the service runs without one."""
        models: dict[str, Any] = {}
        versions: dict[str, str] = {}
        for name in self.profiles.by_name:
            version = registry.aliases(self.registry_name(name)).get(self.settings.model_alias)
            if version is None:
                models[name], versions[name] = None, STATISTICAL  # built per data in evaluate
                continue
            try:
                mv = registry.load(self.registry_name(name), version)
                models[name], versions[name] = AnomalyModel.load(mv.path), version
            except (RegistryError, OSError, TypeError, ValueError, EOFError) as exc:
                log.warning(
                    "production model %s %s unusable (%s); judging against the statistical detector", name, version, exc
                )
                models[name], versions[name] = None, STATISTICAL
        return models, versions

    def _statistical(self, profile: Profile, part: pd.DataFrame) -> AnomalyModel:
        metrics = profile.metrics or tuple(
            sorted(c for c in part.columns if c not in _ID and part[c].notna().any() and c != "anomaly")
        )
        return AnomalyModel(metrics, profile.model_config(self.settings.zscore_threshold), name=profile.name)

    def evaluate(self, models: dict[str, Any], frame: pd.DataFrame, truth: Truth, split_ms: int) -> Metrics:
        out: Metrics = {}
        parts = self._by_profile(frame)
        for name, part in parts.items():
            if name not in models:
                continue
            model = models[name] or self._statistical(self.profiles.by_name[name], part)
            out[name] = profile_metrics(model, part, truth, split_ms)
        return out

    def drift_columns(
        self, models: dict[str, Any], frame: pd.DataFrame, since_ms: int, truth: Truth
    ) -> dict[str, dict[str, np.ndarray]]:
        """Each profile's ensemble score (in thresholds) on the rows from ``since_ms`` on that no ground truth
        marks anomalous (earlier rows warm the state). The score is what the model decides on: unit-free,
        so neither a meter's growing total nor one sensor's level moves it; a network behaving differently
        does. (Per-metric z-scores were tried: over a window shorter than a day they drift with the daily
        cycle itself, PSI 2-6 on the simulator's own unchanged network.)"""
        out = {}
        for name, part in self._by_profile(frame).items():
            if name not in models:
                continue
            model = models[name] or self._statistical(self.profiles.by_name[name], part)
            df, scored, _ = score_rows(model, part)
            keep = (df["ts"].to_numpy() >= since_ms) & ~truth.anomalous(df)
            out[name] = {"score": scored.raw[keep] / scored.threshold}
        return out

    def history_frame(self, since_ms: int, until_ms: int) -> pd.DataFrame:
        raise ValueError(
            "the detector does not train on the history store: its rollups are minute means without the sensor's "
            "asset (profiles are chosen by asset kind), and a model fitted on means would be judged on raw readings "
            "whose noise it never saw; use --source kafka (the default)"
        )

    def save(self, model: AnomalyModel, directory: Path) -> dict[str, Any]:
        model.save(directory)
        return model.meta()


_ID = frozenset({"sensor_id", "ts", "site", "zone", "utility", "asset", "anomaly"})


def score_rows(model: AnomalyModel, part: pd.DataFrame) -> tuple[pd.DataFrame, Scored, np.ndarray]:
    """Every row scored, each sensor's rows in time order from an empty state: ``(rows sorted, scores, features)``."""
    df = part.sort_values(["sensor_id", "ts"], kind="stable")
    x = np.full((len(df), len(model.metrics)), np.nan)
    for j, m in enumerate(model.metrics):
        if m in df.columns:
            x[:, j] = df[m].to_numpy(dtype=np.float64)
    idx = pd.factorize(df["sensor_id"])[0].astype(np.int64)
    state = model.layout.empty(int(idx.max()) + 1 if len(idx) else 1)
    feats = model.features(state, x, df["ts"].to_numpy(dtype=np.int64), idx)
    return df, model.score(state, feats, idx), feats


def profile_metrics(model: AnomalyModel, part: pd.DataFrame, truth: Truth, split_ms: int) -> dict[str, float | None]:
    df, scored, _ = score_rows(model, part)
    return flag_metrics(df, np.asarray(scored.anomaly, dtype=bool), truth, split_ms)


def flag_metrics(df: pd.DataFrame, flags: np.ndarray, truth: Truth, split_ms: int) -> dict[str, float | None]:
    """The metrics of ``flags`` on the rows of ``df`` (each sensor's rows in time order) from ``split_ms`` on."""
    y = truth.anomalous(df)
    ts = df["ts"].to_numpy(dtype=np.int64)
    sensors = df["sensor_id"].astype(str).to_numpy()
    zones = df["zone"].astype(str).to_numpy()
    sites = df["site"].astype(str).to_numpy() if "site" in df else None
    held = ts >= split_ms
    f, t = flags[held], y[held]
    tp, fp, fn = int((f & t).sum()), int((f & ~t).sum()), int((~f & t).sum())
    has_truth = bool(t.any())
    precision = tp / (tp + fp) if (tp + fp) else (None if not has_truth else 0.0)
    recall = tp / (tp + fn) if has_truth else None
    f1 = (
        (2 * precision * recall / (precision + recall) if precision and recall else 0.0)
        if precision is not None and recall is not None
        else None
    )
    # flag episodes: a flag whose previous reading of the same sensor was not flagged
    prev_same = np.r_[False, sensors[1:] == sensors[:-1]]
    prev_flag = np.r_[False, flags[:-1]] & prev_same
    onsets = flags & ~prev_flag & held & ~y
    span = pd.DataFrame({"s": sensors[held], "t": ts[held]}).groupby("s")["t"].agg(["min", "max"])
    sensor_days = max(float((span["max"] - span["min"]).sum()) / DAY_MS, 1.0 / 24)  # at least an hour
    detected, delays, relevant = 0, [], 0
    for inc in truth.incidents:
        if inc.end_ms <= split_ms:
            continue
        rows = held & (ts >= inc.start_ms) & (ts < inc.end_ms) & inc.where(sensors, zones, sites)
        if not rows.any():
            continue
        relevant += 1
        hit = rows & flags
        if hit.any():
            detected += 1
            delays.append((int(ts[hit].min()) - max(inc.start_ms, split_ms)) / 1000)
    agree, verdicts = 0, 0
    for iv, real in truth.verdicts:
        rows = held & (ts >= iv.start_ms) & (ts < iv.end_ms) & iv.where(sensors, zones, sites)
        if not rows.any():
            continue
        verdicts += 1
        agree += int(bool(flags[rows].any()) == real)
    r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
    return {
        "precision": r(precision),
        "recall": r(recall),
        "f1": r(f1),
        "false_alarms_per_sensor_day": r(onsets.sum() / sensor_days),
        "incidents_detected": r(detected / relevant) if relevant else None,
        "incidents_caught": detected if relevant else None,
        "detection_delay_s": r(float(np.median(delays))) if delays else None,
        "verdict_agreement": r(agree / verdicts) if verdicts else None,
        "rows": int(held.sum()),
        "incidents": relevant,
        "verdicts": verdicts,
    }
