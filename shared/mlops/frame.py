"""Readings (as on readings.clean) -> the long frame the training code takes: one row per reading,
``sensor_id, ts, site, zone, utility, asset`` and one column per metric (NaN where a reading lacks it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

ID_COLUMNS = ("sensor_id", "ts", "site", "zone", "utility", "asset")


def readings_frame(readings: Iterable[Any]) -> tuple[pd.DataFrame, int]:
    """The long frame of decoded readings sorted by (ts, sensor_id), and how many were unusable (left out)."""
    ids: dict[str, list[Any]] = {c: [] for c in ID_COLUMNS}
    values: dict[str, dict[int, float]] = {}
    bad = 0
    n = 0
    for r in readings:
        try:
            vals = r["values"]
            row = (str(r["sensor_id"]), int(r["ts"]), *(str(r.get(c) or "") for c in ID_COLUMNS[2:]))
            numeric = {
                str(k): float(v) for k, v in vals.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            bad += 1
            continue
        for c, v in zip(ID_COLUMNS, row, strict=True):
            ids[c].append(v)
        for k, v in numeric.items():
            values.setdefault(k, {})[n] = v
        n += 1
    frame = pd.DataFrame(ids)
    frame["ts"] = frame["ts"].astype(np.int64)
    for metric in sorted(values):
        col = np.full(n, np.nan)
        got = values[metric]
        col[np.fromiter(got.keys(), dtype=np.int64, count=len(got))] = np.fromiter(got.values(), dtype=np.float64)
        frame[metric] = col
    # at-least-once delivery: a reading may be on the topic twice
    frame = frame.drop_duplicates(["sensor_id", "ts"], keep="last")
    frame = frame.sort_values(["ts", "sensor_id"], kind="stable").reset_index(drop=True)
    return frame, bad
