"""Training readings from the history store (``retrain --source history``): its per-sensor, per-metric minute
rollups (count, min, max, sum) become one reading per sensor and minute holding each metric's mean, at the
minute's start — the long frame ``readings.clean`` would have given (:mod:`shared.mlops.frame`), at one-minute
resolution and without the sensor's asset (the rollups do not keep it).

For a model that works on step means (the forecaster: zone totals of sensor means per step) that is its own
input, kept as long as history keeps rollups (``FLOWWATCH_HISTORY_RETENTION_*``) instead of Kafka's three days.
The detector does not take it: its profiles are chosen by asset kind, and a model fitted on minute means would
be judged on raw readings whose noise it never saw.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from shared.mlops.frame import ID_COLUMNS

QUERY = (
    "SELECT sensor_id, metric, minute, site, zone, utility, sum / count AS mean FROM rollups "
    "WHERE minute >= $1 AND minute < $2 AND count > 0"
)


async def read_rollups(conn: Any, since_ms: int, until_ms: int) -> pd.DataFrame:
    """The rollups of ``[since_ms, until_ms)`` from an open asyncpg connection to the history database."""
    rows = await conn.fetch(QUERY, since_ms, until_ms)
    return rollups_frame([tuple(r) for r in rows])


def rollups_frame(rows: list[tuple[str, str, int, str, str, str, float]]) -> pd.DataFrame:
    """``(sensor_id, metric, minute, site, zone, utility, mean)`` rows -> the long frame, one row per sensor and
    minute, sorted by time."""
    if not rows:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    long = pd.DataFrame(rows, columns=["sensor_id", "metric", "ts", "site", "zone", "utility", "mean"])
    wide = long.pivot_table(
        index=["sensor_id", "ts", "site", "zone", "utility"], columns="metric", values="mean", aggfunc="mean"
    )
    wide.columns.name = None
    frame = wide.reset_index().assign(asset="")
    frame["ts"] = frame["ts"].astype("int64")
    cols = list(ID_COLUMNS) + sorted(c for c in frame.columns if c not in ID_COLUMNS)
    return frame[cols].sort_values(["ts", "sensor_id"], kind="stable").reset_index(drop=True)
