"""The offline contract: fit on a CSV of normal operation, score a CSV, same code as the streaming service.

    python -m services.detector fit   --data TRAIN.csv --model-dir DIR
    python -m services.detector score --data TEST.csv  --model-dir DIR --output OUT.csv

A CSV is one stream: a time column (``timestamp`` by default, ISO 8601) and any
number of numeric sensor columns, whose names become the model's metrics. OUT.csv
has ``timestamp,score,anomaly``, one row per input row, in input order. Scoring
starts from the rolling state at the end of training and is causal: each row is
scored with the state left by the rows before it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from services.detector.model import OFFLINE_DETECTORS, AnomalyModel, ModelConfig

log = logging.getLogger(__name__)

#: Hysteresis of offline models (see offline_config).
OFFLINE_OFF_RATIO = 0.7
#: Columns that hold ground truth in labelled benchmark files, never sensor values.
LABEL_COLUMNS = frozenset({"anomaly", "changepoint", "label", "labels", "is_anomaly", "att_flag"})
#: Day-first formats of SCADA exports (BATADAL's ``dd/mm/yy HH``), tried when a time column is not ISO 8601.
DAYFIRST_FORMATS = ("%d/%m/%y %H", "%d/%m/%Y %H", "%d/%m/%y %H:%M", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")


def offline_config(overrides: dict | None = None) -> ModelConfig:
    """The model config of an offline (one CSV) model: ModelConfig with OFFLINE_DETECTORS unless overridden."""
    data = dict(overrides or {})
    data.setdefault("detectors", list(OFFLINE_DETECTORS))
    # an episode of one stream ends once its score is back under 0.7 x the threshold: a level shift
    # eases out slowly as a valve reopens (SKAB F1 0.844 -> 0.854); streaming profiles keep 0.9
    data.setdefault("off_ratio", OFFLINE_OFF_RATIO)
    return ModelConfig.from_dict(data)


class DataError(ValueError):
    """The input file cannot be used; the message says why."""


def _separator(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return ";" if header.count(";") > header.count(",") else ","


def _parse_times(raw: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(raw.str.strip(), utc=True, errors="coerce", format="ISO8601")
    for fmt in DAYFIRST_FORMATS:
        if not parsed.isna().any():
            break
        parsed = pd.to_datetime(raw.str.strip(), utc=True, errors="coerce", format=fmt)
    return parsed


def read_stream(path: Path | str, time_column: str = "timestamp") -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """``(sensor values, ts in epoch ms, original time strings)`` of a CSV stream."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, sep=_separator(path), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if time_column not in df.columns:
        raise DataError(f"{path}: no time column {time_column!r} (columns: {', '.join(df.columns)}); use --time-column")
    raw_time = df[time_column]
    parsed = _parse_times(raw_time)
    if parsed.isna().any():
        bad = int(parsed.isna().sum())
        first = raw_time[parsed.isna()].iloc[0]
        raise DataError(f"{path}: {bad} rows have a time that is not ISO 8601 (nor dd/mm/yy HH), first {first!r}")
    epoch = pd.Timestamp(0, tz="UTC")
    ts = ((parsed - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
    sensors = [c for c in df.columns if c != time_column and c.lower() not in LABEL_COLUMNS]
    values = df[sensors].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce")) if sensors else df[[]]
    return values.astype(np.float64), ts, raw_time


def fit_csv(
    data: Path | str,
    model_dir: Path | str,
    time_column: str = "timestamp",
    config: ModelConfig | None = None,
) -> AnomalyModel:
    values, ts, _ = read_stream(data, time_column)
    usable = [c for c in values.columns if values[c].notna().mean() >= 0.5]
    dropped = sorted(set(values.columns) - set(usable))
    if dropped:
        log.warning("columns ignored (mostly empty or not numeric): %s", ", ".join(dropped))
    if not usable:
        raise DataError(f"{data}: no numeric sensor columns besides {time_column!r}")
    if np.any(np.diff(ts) < 0):
        raise DataError(f"{data}: rows are not in time order")
    config = config or offline_config()
    model = AnomalyModel(usable, config, name=Path(model_dir).name or "offline")
    try:
        model.fit(values[usable].to_numpy(), ts)
    except ValueError as exc:
        raise DataError(f"{data}: {exc}") from None
    model.save(model_dir)
    return model


def score_frame(model: AnomalyModel, x: np.ndarray, ts: np.ndarray, state: np.ndarray | None = None):
    """Score rows of one stream with ``model`` from ``state`` (default: end of training)."""
    state = (model.initial_state if state is None else state).copy()
    idx = np.zeros(len(x), dtype=np.int64)
    feats = model.features(state, x, ts, idx)
    return model.score(state, feats, idx), feats, state


def score_csv(
    data: Path | str, model_dir: Path | str, output: Path | str, time_column: str = "timestamp"
) -> pd.DataFrame:
    model = AnomalyModel.load(model_dir)
    values, ts, raw_time = read_stream(data, time_column)
    missing = [m for m in model.metrics if m not in values.columns]
    if missing:
        raise DataError(f"{data}: columns the model was trained on are missing: {', '.join(missing)}")
    scored, _, _ = score_frame(model, values[list(model.metrics)].to_numpy(), ts)
    out = pd.DataFrame(
        {"timestamp": raw_time.to_numpy(), "score": np.round(scored.score, 6), "anomaly": scored.anomaly.astype(int)}
    )
    out.to_csv(output, index=False)
    return out
