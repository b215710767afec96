"""The simulator's Python API: :class:`Simulator` and the :class:`History` it returns.

See docs/simulator.md for the contract the detector, forecaster, tests and benchmarks rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from services.simulator.encode import Encoder
from services.simulator.frames import Vocab, arrow_schema, iso_index, to_arrow, to_frame, wide, wide_labels
from services.simulator.generator import Batch, Engine, SimConfig
from services.simulator.labels import labels_path_for, write_labels
from services.simulator.network import Network
from shared.records import IncidentLabel
from shared.timeutil import Moment, Span, parse_duration_ms, parse_time_ms

FILE_FORMATS = ("parquet", "csv", "ndjson")
#: One name or several (zones, sensors, sites); None means all.
Names = str | list[str] | None


class History(NamedTuple):
    """``(frame, labels)``: unpack it, or use its helpers. ``frame.attrs`` holds the range and step."""

    frame: pd.DataFrame
    labels: list[IncidentLabel]

    @property
    def step_ms(self) -> int | None:
        return self.frame.attrs.get("step_ms")

    def wide(
        self, zone: Names = None, sensors: Names = None, site: Names = None, metrics: list[str] | None = None
    ) -> pd.DataFrame:
        """Timestamp x ``<sensor_id>.<metric>`` (corrupt and duplicate messages left out)."""
        return wide(self.frame, zone=zone, sensors=sensors, site=site, metrics=metrics, step_ms=self.step_ms)

    def wide_labels(self, zone: Names = None, sensors: Names = None, site: Names = None) -> pd.DataFrame:
        return wide_labels(self.frame, zone=zone, sensors=sensors, site=site, step_ms=self.step_ms)

    def to_wide_csv(
        self,
        path: str | Path,
        zone: Names = None,
        sensors: Names = None,
        site: Names = None,
        metrics: list[str] | None = None,
    ) -> Path:
        """The detector's offline format (``timestamp`` + sensor columns) and ``<stem>.labels.csv`` beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.wide(zone=zone, sensors=sensors, site=site, metrics=metrics)
        stamps = iso_index(data.index)
        data.index = pd.Index(stamps, name="timestamp")
        data.to_csv(path, float_format="%.6g")
        labels = self.wide_labels(zone=zone, sensors=sensors, site=site)
        labels.index = pd.Index(stamps, name="timestamp")
        out = path.with_name(f"{path.stem}.labels.csv")
        labels.to_csv(out)
        return out

    def to_parquet(self, path: str | Path, labels_path: str | Path | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(path, index=False)
        out = Path(labels_path) if labels_path else labels_path_for(path)
        write_labels(out, self.labels)
        return out


class Simulator:
    """A network plus a config plus a seed: a deterministic, endless stream of readings with ground truth."""

    def __init__(self, network: Network | None = None, config: SimConfig | None = None, seed: int = 7):
        self.network = network if network is not None else Network.default(seed)
        self.config = config or SimConfig()
        self.config.validate()
        self.seed = int(seed)
        self._engines: dict[int | None, Engine] = {}

    def engine(self, step: Span | None = None) -> Engine:
        step_ms = None if step is None else parse_duration_ms(step)
        if step_ms not in self._engines:
            self._engines[step_ms] = Engine(self.network, self.config, self.seed, step_ms)
        return self._engines[step_ms]

    @staticmethod
    def _range(start: Moment, end: Moment | None = None, duration: Span | None = None) -> tuple[int, int | None]:
        t0 = parse_time_ms(start)
        if duration is not None:
            return t0, t0 + parse_duration_ms(duration)
        return t0, None if end is None else parse_time_ms(end)

    def batches(
        self, start: Moment, end: Moment | None = None, *, duration: Span | None = None, step: Span | None = None
    ) -> Iterator[Batch]:
        """Columnar batches in delivery order for ``start <= ts < end`` (endless when neither end nor duration)."""
        t0, t1 = self._range(start, end, duration)
        return self.engine(step).batches(t0, t1)

    def history(self, start: Moment, duration: Span, step: Span | None = None, progress: bool = False) -> History:
        """Every message of a time range as a long DataFrame, plus the labels of the incidents in it."""
        t0, t1 = self._range(start, duration=duration)
        engine = self.engine(step)
        parts = list(_progress(engine.batches(t0, t1), engine.count_between(t0, t1), progress))
        batch = Batch.concat(parts)
        frame = to_frame(Vocab(engine), batch)
        frame.attrs.update(
            start_ms=t0, end_ms=t1, step_ms=None if step is None else parse_duration_ms(step), seed=self.seed
        )
        return History(frame, self._labels(engine, batch.incident, t0, t1))

    def incidents(
        self, start: Moment, end: Moment | None = None, *, duration: Span | None = None, step: Span | None = None
    ) -> list[IncidentLabel]:
        """Planned incidents overlapping the range, clipped to it (including ones whose readings are outside)."""
        t0, t1 = self._range(start, end, duration)
        if t1 is None:
            raise ValueError("incidents() needs an end or a duration")
        engine = self.engine(step)
        return [engine.incidents[i].label(self.network, t0, t1) for i in engine.incidents_between(t0, t1)]

    def payloads(
        self, start: Moment, end: Moment | None = None, *, duration: Span | None = None, step: Span | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(sensor_id, payload)`` exactly as devices send them, in delivery order."""
        engine = self.engine(step)
        encoder = Encoder(engine)
        for batch in self.batches(start, end, duration=duration, step=step):
            yield from encoder.pairs(batch)

    def write_history(
        self,
        path: str | Path,
        start: Moment,
        duration: Span,
        step: Span | None = None,
        fmt: str | None = None,
        labels_path: str | Path | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Stream a range to a Parquet, CSV or NDJSON (raw payloads) file block by block; labels beside it."""
        path = Path(path)
        fmt = fmt or {".parquet": "parquet", ".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}.get(path.suffix)
        if fmt not in FILE_FORMATS:
            raise ValueError(f"cannot tell the format of {path}; use one of {FILE_FORMATS}")
        path.parent.mkdir(parents=True, exist_ok=True)
        t0, t1 = self._range(start, duration=duration)
        engine = self.engine(step)
        vocab = Vocab(engine)
        encoder = Encoder(engine) if fmt == "ndjson" else None
        rows = 0
        seen: set[int] = set()
        batches = _progress(engine.batches(t0, t1), engine.count_between(t0, t1), progress)
        if fmt == "parquet":
            schema = arrow_schema()
            with pq.ParquetWriter(path, schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_table(to_arrow(vocab, batch).cast(schema))
                    rows += len(batch)
                    seen.update(np.unique(batch.incident).tolist())
        elif fmt == "csv":
            with pacsv.CSVWriter(path, _csv_schema()) as writer:
                for batch in batches:
                    writer.write_table(_for_csv(to_arrow(vocab, batch)))
                    rows += len(batch)
                    seen.update(np.unique(batch.incident).tolist())
        else:
            with path.open("wb") as fh:
                for batch in batches:
                    payloads = encoder.encode(batch)  # type: ignore[union-attr]
                    fh.write(b"\n".join(payloads) + (b"\n" if payloads else b""))
                    rows += len(batch)
                    seen.update(np.unique(batch.incident).tolist())
        labels = [engine.incidents[i].label(self.network, t0, t1) for i in sorted(seen - {-1})]
        out = Path(labels_path) if labels_path else labels_path_for(path)
        write_labels(out, labels)
        return {"path": str(path), "format": fmt, "rows": rows, "labels": str(out), "incidents": len(labels)}

    def _labels(self, engine: Engine, incident: np.ndarray, t0: int, t1: int | None) -> list[IncidentLabel]:
        present = sorted(set(np.unique(incident).tolist()) - {-1})
        return [engine.incidents[i].label(self.network, t0, t1) for i in present]


def _csv_schema() -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in arrow_schema()])


def _for_csv(table: pa.Table) -> pa.Table:
    return table.cast(_csv_schema())


def _progress(batches: Iterator[Batch], total: int, enabled: bool) -> Iterator[Batch]:
    if not enabled:
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="readings", unit_scale=True, smoothing=0.1) as bar:
        for batch in batches:
            bar.update(len(batch))
            yield batch
