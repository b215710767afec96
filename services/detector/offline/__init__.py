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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.detector.model import OFFLINE_DETECTORS, AnomalyModel, ModelConfig
from services.detector.offline import plain_csv

# pandas (~0.3 CPU s to import) only reads what the plain reader declines (see plain_csv) and builds
# the frames of read_stream / score_csv: `detector score` on a plain CSV starts without it
if TYPE_CHECKING:
    import pandas as pd

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


@dataclass
class Stream:
    """One CSV stream: its sensor columns (``values``, float64, NaN where missing or not a number) and times."""

    names: list[str]
    values: np.ndarray  # (rows, len(names))
    ts: np.ndarray  # epoch ms, int64
    times: list[str]  # the time column as written

    def matrix(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        return self.values[:, [self.names.index(name) for name in names]]


@dataclass
class Scores:
    """What ``score_file`` wrote: one row per input row, in input order."""

    timestamp: list[str]
    score: np.ndarray
    anomaly: np.ndarray  # int64, 0 or 1

    def __len__(self) -> int:
        return len(self.timestamp)

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        times = np.array(self.timestamp, dtype=object)
        return pd.DataFrame({"timestamp": times, "score": self.score, "anomaly": self.anomaly})


def _parse_times(raw: pd.Series) -> pd.Series:
    import pandas as pd

    parsed = pd.to_datetime(raw.str.strip(), utc=True, errors="coerce", format="ISO8601")
    for fmt in DAYFIRST_FORMATS:
        if not parsed.isna().any():
            break
        parsed = pd.to_datetime(raw.str.strip(), utc=True, errors="coerce", format=fmt)
    return parsed


def _epoch_ms(path: Path, raw: pd.Series) -> np.ndarray:
    """Epoch ms of a time column with pandas' parsers (ISO 8601, then the day-first formats)."""
    import pandas as pd

    parsed = _parse_times(raw)
    if parsed.isna().any():
        bad = int(parsed.isna().sum())
        first = raw[parsed.isna()].iloc[0]
        raise DataError(f"{path}: {bad} rows have a time that is not ISO 8601 (nor dd/mm/yy HH), first {first!r}")
    epoch = pd.Timestamp(0, tz="UTC")
    try:
        return ((parsed - epoch) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
    except (pd.errors.OutOfBoundsDatetime, OverflowError) as exc:
        raise DataError(f"{path}: a time is outside what can be scored: {exc}") from None


def _numbers(column: list[str]) -> np.ndarray:
    values = plain_csv.parse_numbers(column)
    if values is not None:
        return values
    import pandas as pd

    return pd.to_numeric(pd.Series(column, dtype="str").str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _no_time_column(path: Path, time_column: str, names: list[str]) -> DataError:
    return DataError(f"{path}: no time column {time_column!r} (columns: {', '.join(names)}); use --time-column")


def read_columns(path: Path | str, time_column: str = "timestamp") -> Stream:
    """The sensor columns and times of a CSV stream (pandas only for what the plain reader declines)."""
    stream = _read_columns(Path(path), time_column)
    if not len(stream.ts):
        raise DataError(f"{path}: no data rows")
    return stream


def _read_columns(path: Path, time_column: str) -> Stream:
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    sep = _separator(path)
    table = plain_csv.read_rows(path, sep)
    if table is None:
        return _read_with_pandas(path, sep, time_column)
    names, columns = table
    if time_column not in names:
        raise _no_time_column(path, time_column, names)
    raw_time = columns[names.index(time_column)]
    ts = plain_csv.parse_iso_times(raw_time)
    if ts is None:
        import pandas as pd

        ts = _epoch_ms(path, pd.Series(raw_time, dtype="str"))
    sensors = [c for c in names if c != time_column and c.lower() not in LABEL_COLUMNS]
    values = np.empty((len(raw_time), len(sensors)))
    for j, name in enumerate(sensors):
        values[:, j] = _numbers(columns[names.index(name)])
    return Stream(sensors, values, ts, raw_time)


def _read_with_pandas(path: Path, sep: str, time_column: str) -> Stream:
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if time_column not in df.columns:
        raise _no_time_column(path, time_column, list(df.columns))
    raw_time = df[time_column]
    ts = _epoch_ms(path, raw_time)
    sensors = [c for c in df.columns if c != time_column and c.lower() not in LABEL_COLUMNS]
    values = df[sensors].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce")) if sensors else df[[]]
    return Stream(sensors, values.to_numpy(dtype=np.float64), ts, raw_time.tolist())


def read_stream(path: Path | str, time_column: str = "timestamp") -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """``(sensor values, ts in epoch ms, original time strings)`` of a CSV stream, as pandas objects."""
    import pandas as pd

    stream = read_columns(path, time_column)
    values = pd.DataFrame(stream.values, columns=pd.Index(stream.names, dtype="str"))
    return values, stream.ts, pd.Series(stream.times, name=time_column, dtype="str")


def fit_csv(
    data: Path | str,
    model_dir: Path | str,
    time_column: str = "timestamp",
    config: ModelConfig | None = None,
) -> AnomalyModel:
    stream = read_columns(data, time_column)
    rows, ts = len(stream.values), stream.ts
    # a column is usable with at least half its rows numbers (inf counts, as pandas' notna does)
    present = np.count_nonzero(~np.isnan(stream.values), axis=0)
    usable = [c for c, k in zip(stream.names, present, strict=True) if rows and 2 * k >= rows]
    dropped = sorted(set(stream.names) - set(usable))
    if dropped:
        log.warning("columns ignored (mostly empty or not numeric): %s", ", ".join(dropped))
    if not usable:
        raise DataError(f"{data}: no numeric sensor columns besides {time_column!r}")
    if np.any(np.diff(ts) < 0):
        raise DataError(f"{data}: rows are not in time order")
    config = config or offline_config()
    model = AnomalyModel(usable, config, name=Path(model_dir).name or "offline")
    try:
        model.fit(stream.matrix(usable), ts)
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


def score_file(data: Path | str, model_dir: Path | str, output: Path | str, time_column: str = "timestamp") -> Scores:
    """Score a CSV stream with the model in ``model_dir`` and write ``timestamp,score,anomaly`` to ``output``."""
    model = AnomalyModel.load(model_dir)
    stream = read_columns(data, time_column)
    missing = [m for m in model.metrics if m not in stream.names]
    if missing:
        raise DataError(f"{data}: columns the model was trained on are missing: {', '.join(missing)}")
    scored, _, _ = score_frame(model, stream.matrix(model.metrics), stream.ts)
    out = Scores(stream.times, np.round(scored.score, 6), scored.anomaly.astype(np.int64))
    plain_csv.write_scores(output, out.timestamp, out.score, out.anomaly)
    return out


def score_csv(
    data: Path | str, model_dir: Path | str, output: Path | str, time_column: str = "timestamp"
) -> pd.DataFrame:
    """:func:`score_file`, its rows as a DataFrame."""
    return score_file(data, model_dir, output, time_column).frame()
