"""Training streaming models: one pooled model per profile from a history of normal readings.

The history is a long frame (the simulator's, or a Parquet/CSV export of
readings.clean): ``sensor_id``, ``ts`` (epoch ms) or ``timestamp`` (ISO 8601),
``site``/``zone``/``utility``/``asset`` and one column per metric. Rows labelled
anomalous (an ``anomaly`` column) are left out. Each sensor's rolling state runs
over its own readings, so the features a model learns from are the same ones it
will see in the stream.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from services.detector.model import AnomalyModel
from services.detector.profiles import Profile, ProfileSet
from shared.records import Reading

log = logging.getLogger(__name__)


def read_history(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix in {".parquet", ".pq"} else pd.read_csv(path)
    if "ts" not in df.columns:
        if "timestamp" not in df.columns:
            raise ValueError(f"{path}: needs a `ts` (epoch ms) or `timestamp` (ISO 8601) column")
        t = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
        df["ts"] = (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    for col in ("site", "zone", "utility", "asset"):
        if col not in df.columns:
            df[col] = ""
    return df


def profile_rows(df: pd.DataFrame, profiles: ProfileSet) -> pd.Series:
    """Profile name of each row (decided once per sensor)."""
    first = df.drop_duplicates("sensor_id")
    names = {}
    for row in first.itertuples(index=False):
        r = Reading(str(row.sensor_id), 0, str(row.site), str(row.zone), str(row.utility), str(row.asset), {})
        names[row.sensor_id] = profiles.for_reading(r).name
    return df["sensor_id"].map(names)


def fit_profile(df: pd.DataFrame, profile: Profile, zscore_threshold: float = 2.5) -> AnomalyModel:
    """A pooled model for ``profile`` from the normal rows of its sensors in ``df``."""
    if "anomaly" in df.columns:
        df = df[~df["anomaly"].astype(bool)]
    metrics = profile.metrics or tuple(
        sorted(
            c
            for c in df.columns
            if c not in {"sensor_id", "ts", "timestamp", "site", "zone", "utility", "asset"}
            and pd.api.types.is_numeric_dtype(df[c])
            and df[c].notna().any()
        )
    )
    present = [m for m in metrics if m in df.columns]
    if not present:
        raise ValueError(f"profile {profile.name}: none of its metrics {list(metrics)} are in the data")
    df = df.sort_values(["sensor_id", "ts"], kind="stable")
    x = np.full((len(df), len(metrics)), np.nan)
    for j, m in enumerate(metrics):
        if m in df.columns:
            x[:, j] = pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=np.float64)
    idx = pd.factorize(df["sensor_id"])[0].astype(np.int64)
    model = AnomalyModel(metrics, profile.model_config(zscore_threshold), name=profile.name)
    model.fit(x, df["ts"].to_numpy(dtype=np.int64), idx)
    log.info("profile %s: fitted on %d readings of %d sensors", profile.name, len(df), idx.max() + 1)
    return model
