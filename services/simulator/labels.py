"""Ground truth on disk: write and read incident labels, and map readings to them.

A reading is anomalous iff its sensor is in ``label.sensors`` and
``label.start_ms <= ts < label.end_ms``. JSONL holds one IncidentLabel per line;
CSV has the same columns with ``sensors`` joined by ``;``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import orjson

from shared.records import IncidentLabel

_COLUMNS = ("incident_id", "type", "start_ms", "end_ms", "site", "zone", "utility", "sensors")


def labels_path_for(output: str | Path, fmt: str = "jsonl") -> Path:
    """``data/history.parquet`` -> ``data/history.labels.jsonl``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.labels.{fmt}")


def write_labels(path: str | Path, labels: Iterable[IncidentLabel]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS)
            for lab in labels:
                writer.writerow([*(getattr(lab, c) for c in _COLUMNS[:-1]), ";".join(lab.sensors)])
                n += 1
        return n
    with path.open("wb") as fh:
        for lab in labels:
            fh.write(orjson.dumps(lab.to_dict()) + b"\n")
            n += 1
    return n


class LabelFile:
    """Append labels to a JSONL or CSV file as they happen (the streaming runner's label sink)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._csv = self.path.suffix == ".csv"
        self._fh = self.path.open("w", newline="" if self._csv else None)
        if self._csv:
            self._writer = csv.writer(self._fh)
            self._writer.writerow(_COLUMNS)

    def write(self, lab: IncidentLabel) -> None:
        if self._csv:
            self._writer.writerow([*(getattr(lab, c) for c in _COLUMNS[:-1]), ";".join(lab.sensors)])
        else:
            self._fh.write(orjson.dumps(lab.to_dict()).decode() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_labels(path: str | Path) -> list[IncidentLabel]:
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            return [
                IncidentLabel(
                    incident_id=row["incident_id"],
                    type=row["type"],
                    start_ms=int(row["start_ms"]),
                    end_ms=int(row["end_ms"]),
                    site=row["site"],
                    zone=row["zone"],
                    utility=row["utility"],
                    sensors=[s for s in row["sensors"].split(";") if s],
                )
                for row in csv.DictReader(fh)
            ]
    return [IncidentLabel.from_dict(orjson.loads(line)) for line in path.read_bytes().splitlines() if line.strip()]


def label_readings(
    sensor_ids: Sequence[str] | np.ndarray, ts: Sequence[int] | np.ndarray, labels: Iterable[IncidentLabel]
) -> np.ndarray:
    """The incident id of each reading (``""`` when it belongs to none), from the labels alone.

    This is how an evaluation should decide which readings are anomalous: it needs
    nothing from the simulator but the labels file.
    """
    t = np.asarray(ts, dtype=np.int64)
    uniques, codes = np.unique(np.asarray(sensor_ids, dtype=str), return_inverse=True)
    code_of = {u: i for i, u in enumerate(uniques.tolist())}
    order = np.argsort(t, kind="stable")
    t_sorted = t[order]
    out = np.full(len(t), "", dtype=object)
    for lab in labels:
        lo, hi = np.searchsorted(t_sorted, [lab.start_ms, lab.end_ms], side="left")
        rows = order[lo:hi]
        wanted = [code_of[s] for s in lab.sensors if s in code_of]
        out[rows[np.isin(codes[rows], wanted)]] = lab.incident_id
    return out
