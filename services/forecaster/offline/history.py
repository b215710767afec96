"""Labelled history for training and evaluation: readings in delivery order plus incident labels.

Sources, all reduced to :class:`History`:

* the simulator's Python API (``Simulator.history(...)`` returns ``(frame, labels)``);
* the simulator's files: a long frame (``.parquet`` or ``.csv``) with its labels
  beside it (``<name>.labels.jsonl`` or ``<name>.labels.csv``);
* a user's labelled CSV in the same long format; when there is no labels file,
  incidents are read from the per-row ``incident_type`` (and ``incident_id``) columns.

The long frame has one row per reading: ``sensor_id, site, zone, utility, ts`` and
one column per metric (NaN when absent).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from shared.records import IncidentLabel

try:  # canonical units of the simulator's metrics (what ingest normalises to)
    from services.simulator.units import CANONICAL_UNITS
except ImportError:  # pragma: no cover - the simulator package is optional for loading files
    CANONICAL_UNITS = {"flow": "m3/h", "power": "kW", "energy": "kWh", "pressure": "kPa"}

ID_COLUMNS = ("sensor_id", "site", "zone", "utility", "asset", "ts")
NON_METRIC = {
    *ID_COLUMNS,
    "incident_id",
    "incident_type",
    "anomaly",
    "fault",
    "fault_detail",
    "burst",
    "deliver_ms",
    "quality",
    "received_ms",
    "source",
    "timestamp",
}


@dataclass
class History:
    frame: pd.DataFrame
    labels: list[IncidentLabel]

    @property
    def metric_columns(self) -> list[str]:
        return [
            c for c in self.frame.columns if c not in NON_METRIC and pd.api.types.is_numeric_dtype(self.frame[c].dtype)
        ]

    @property
    def start_ms(self) -> int:
        return int(self.frame["ts"].min())

    @property
    def end_ms(self) -> int:
        return int(self.frame["ts"].max()) + 1

    def readings(self, units: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Reading dicts (as on readings.clean) in the frame's order, NaN metrics left out.

        A ``corrupt`` row of the simulator never reaches readings.clean (ingest
        quarantines it), so it is left out here too.
        """
        df = self.frame
        if "fault" in df.columns:
            df = df[df["fault"].astype(str) != "corrupt"]
        metrics = self.metric_columns
        values = df[metrics].to_numpy(dtype=np.float64)
        units = CANONICAL_UNITS if units is None else units
        cols = {
            c: df[c].astype(str).to_numpy() if c in df.columns else None
            for c in ("sensor_id", "site", "zone", "utility", "asset")
        }
        ts = df["ts"].to_numpy(dtype=np.int64)
        for i in range(len(df)):
            row = values[i]
            vals = {m: float(v) for m, v in zip(metrics, row, strict=True) if not math.isnan(v)}
            yield {
                "sensor_id": cols["sensor_id"][i],
                "ts": int(ts[i]),
                "site": cols["site"][i] if cols["site"] is not None else "",
                "zone": cols["zone"][i],
                "utility": cols["utility"][i],
                "asset": cols["asset"][i] if cols["asset"] is not None else "",
                "values": vals,
                "units": {m: units[m] for m in vals if m in units},
            }

    def time_slice(self, start_ms: int, end_ms: int) -> History:
        f = self.frame
        part = f[(f["ts"] >= start_ms) & (f["ts"] < end_ms)]
        labels = [lab for lab in self.labels if lab.end_ms > start_ms and lab.start_ms < end_ms]
        return History(part, labels)


def load(path: Path | str) -> History:
    """A long frame file (.parquet or .csv) and its labels."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"history file {path} does not exist")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"unsupported history format {path.suffix!r}: use .parquet or .csv (long frame)")
    missing = [c for c in ("sensor_id", "zone", "utility", "ts") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if not pd.api.types.is_integer_dtype(frame["ts"].dtype):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("int64") // 1_000_000
    labels = _labels_beside(path)
    if labels is None:
        labels = labels_from_rows(frame)
    return History(frame, labels)


def _labels_beside(path: Path) -> list[IncidentLabel] | None:
    stem = path.with_suffix("")
    jsonl = Path(f"{stem}.labels.jsonl")
    csv = Path(f"{stem}.labels.csv")
    if jsonl.exists():
        return [IncidentLabel.from_dict(orjson.loads(line)) for line in jsonl.read_bytes().splitlines() if line.strip()]
    if csv.exists():
        df = pd.read_csv(csv)
        if {"incident_id", "type", "start_ms", "end_ms", "zone"} <= set(df.columns):
            return [
                IncidentLabel(
                    incident_id=str(r.incident_id),
                    type=str(r.type),
                    start_ms=int(r.start_ms),
                    end_ms=int(r.end_ms),
                    site=str(getattr(r, "site", "")),
                    zone=str(r.zone),
                    utility=str(getattr(r, "utility", "")),
                )
                for r in df.itertuples()
            ]
    return None


def labels_from_rows(frame: pd.DataFrame) -> list[IncidentLabel]:
    """Incident intervals from per-row ground truth (``incident_type``, optionally ``incident_id``)."""
    if "incident_type" not in frame.columns:
        return []
    rows = frame[frame["incident_type"].astype(str).replace("nan", "").str.len() > 0]
    if rows.empty:
        return []
    key = "incident_id" if "incident_id" in rows.columns else "incident_type"
    out = []
    for (zone, ident), grp in rows.groupby(["zone", key], observed=True):
        out.append(
            IncidentLabel(
                incident_id=str(ident),
                type=str(grp["incident_type"].iloc[0]),
                start_ms=int(grp["ts"].min()),
                end_ms=int(grp["ts"].max()) + 1,
                site=str(grp["site"].iloc[0]) if "site" in grp.columns else "",
                zone=str(zone),
                utility=str(grp["utility"].iloc[0]),
                sensors=sorted(grp["sensor_id"].astype(str).unique().tolist()),
            )
        )
    return out


def simulate(duration: str, *, start: str = "2024-03-04T00:00:00Z", seed: int = 7, step: str | None = "60s") -> History:
    """History from the simulator's Python API (``services.simulator``)."""
    from services.simulator import Network, SimConfig, Simulator

    sim = Simulator(Network.default(seed=seed), SimConfig(), seed=seed)
    frame, labels = sim.history(start, duration, step=step)
    return History(frame, list(labels))
