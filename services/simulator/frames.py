"""Batches as tables: the long pandas frame, Arrow tables for Parquet/CSV, and the wide training frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from services.simulator.faults import DETAILS, FAULTS
from services.simulator.generator import Batch, Engine
from services.simulator.units import METRICS

ID_COLUMNS = ("sensor_id", "site", "zone", "utility", "asset")
Names = str | list[str] | None


class Vocab:
    """Category codes for a batch's sensor-level columns and incidents."""

    def __init__(self, engine: Engine):
        net = engine.network
        self.engine = engine
        self.sensor_ids = [s.id for s in net.sensors]
        self.columns: dict[str, tuple[list[str], np.ndarray]] = {"sensor_id": (self.sensor_ids, np.arange(len(net)))}
        for col in ("site", "zone", "utility", "asset"):
            values = [getattr(s, col) for s in net.sensors]
            cats = sorted(set(values))
            index = {c: i for i, c in enumerate(cats)}
            self.columns[col] = (cats, np.array([index[v] for v in values], dtype=np.int32))

    def incident_categories(self) -> tuple[list[str], list[str], np.ndarray]:
        """Ids ("" first), types ("" first) and each incident's type code."""
        incidents = self.engine.incidents
        types = ["", *sorted({i.type for i in incidents})]
        tindex = {t: k for k, t in enumerate(types)}
        return (
            ["", *(i.id for i in incidents)],
            types,
            np.array([0, *(tindex[i.type] for i in incidents)], dtype=np.int32),
        )


def to_frame(vocab: Vocab, batch: Batch) -> pd.DataFrame:
    """The long frame: one row per message, columns as documented in docs/simulator.md."""
    cols: dict[str, object] = {}
    for name in ID_COLUMNS:
        cats, of_sensor = vocab.columns[name]
        cols[name] = pd.Categorical.from_codes(of_sensor[batch.sensor], categories=cats)
        if name == "sensor_id":
            cols["ts"] = batch.ts
    for j, metric in enumerate(METRICS):
        cols[metric] = batch.values[:, j]
    ids, types, type_of = vocab.incident_categories()
    codes = batch.incident + 1
    cols["incident_id"] = pd.Categorical.from_codes(codes, categories=ids)
    cols["incident_type"] = pd.Categorical.from_codes(type_of[codes], categories=types)
    cols["anomaly"] = batch.incident >= 0
    cols["fault"] = pd.Categorical.from_codes(batch.fault.astype(np.int32), categories=list(FAULTS))
    cols["fault_detail"] = pd.Categorical.from_codes(batch.detail.astype(np.int32), categories=list(DETAILS))
    cols["burst"] = batch.burst
    cols["deliver_ms"] = batch.deliver
    df = pd.DataFrame(cols)
    for name in ("incident_id", "incident_type"):
        df[name] = df[name].cat.remove_unused_categories()
        if "" not in df[name].cat.categories:
            df[name] = df[name].cat.add_categories([""])
    return df


def _dict(codes: np.ndarray, categories: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(categories, pa.string()))


def to_arrow(vocab: Vocab, batch: Batch) -> pa.Table:
    """The same columns as :func:`to_frame`, NaN metrics as nulls, categories as dictionaries."""
    arrays: dict[str, pa.Array] = {}
    for name in ID_COLUMNS:
        cats, of_sensor = vocab.columns[name]
        arrays[name] = _dict(of_sensor[batch.sensor], cats)
        if name == "sensor_id":
            arrays["ts"] = pa.array(batch.ts, pa.int64())
    for j, metric in enumerate(METRICS):
        col = np.ascontiguousarray(batch.values[:, j])
        arrays[metric] = pa.array(col, pa.float64(), mask=np.isnan(col))
    ids, types, type_of = vocab.incident_categories()
    codes = (batch.incident + 1).astype(np.int32)
    arrays["incident_id"] = _dict(codes, ids)
    arrays["incident_type"] = _dict(type_of[codes], types)
    arrays["anomaly"] = pa.array(batch.incident >= 0)
    arrays["fault"] = _dict(batch.fault.astype(np.int32), list(FAULTS))
    arrays["fault_detail"] = _dict(batch.detail.astype(np.int32), list(DETAILS))
    arrays["burst"] = pa.array(batch.burst)
    arrays["deliver_ms"] = pa.array(batch.deliver, pa.int64())
    return pa.table(arrays)


def arrow_schema() -> pa.Schema:
    dict_t = pa.dictionary(pa.int32(), pa.string())
    fields = [pa.field("sensor_id", dict_t), pa.field("ts", pa.int64())]
    fields += [pa.field(c, dict_t) for c in ID_COLUMNS[1:]]
    fields += [pa.field(m, pa.float64()) for m in METRICS]
    fields += [
        pa.field("incident_id", dict_t),
        pa.field("incident_type", dict_t),
        pa.field("anomaly", pa.bool_()),
        pa.field("fault", dict_t),
        pa.field("fault_detail", dict_t),
        pa.field("burst", pa.bool_()),
        pa.field("deliver_ms", pa.int64()),
    ]
    return pa.schema(fields)


# ---- wide frames ----------------------------------------------------------------------------------------------------


def _select(frame: pd.DataFrame, zone: Names, sensors: Names, site: Names) -> pd.DataFrame:
    # Corrupt payloads never make it past ingest and a duplicate adds nothing: neither belongs in a training frame.
    mask = ~frame["fault"].isin(["corrupt", "duplicate"]).to_numpy()
    for col, want in (("zone", zone), ("sensor_id", sensors), ("site", site)):
        if want is not None:
            wanted = [want] if isinstance(want, str) else list(want)
            unknown = set(wanted) - set(frame[col].cat.categories)
            if unknown:
                raise KeyError(f"unknown {col} {sorted(unknown)}")
            mask &= frame[col].isin(wanted).to_numpy()
    return frame[mask]


def _grid(sub: pd.DataFrame, step_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    t = sub["ts"].to_numpy()
    if step_ms:
        t = t // step_ms * step_ms
    return np.unique(t, return_inverse=True)


def wide(
    frame: pd.DataFrame,
    zone: str | list[str] | None = None,
    sensors: str | list[str] | None = None,
    site: str | list[str] | None = None,
    metrics: list[str] | None = None,
    step_ms: int | None = None,
) -> pd.DataFrame:
    """One row per timestamp (floored to ``step_ms``), one column per ``<sensor_id>.<metric>``."""
    sub = _select(frame, zone, sensors, site)
    times, row = _grid(sub, step_ms)
    sensor_codes = sub["sensor_id"].cat.codes.to_numpy()
    names = sub["sensor_id"].cat.categories
    used = np.unique(sensor_codes)
    columns: list[str] = []
    col_of = np.full((len(names), len(METRICS)), -1)
    for j, metric in enumerate(METRICS):
        if metrics is not None and metric not in metrics:
            continue
        vals = sub[metric].to_numpy()
        has = np.unique(sensor_codes[~np.isnan(vals)])
        for code in has:
            col_of[code, j] = -2  # mark; numbered below in sensor order
    for code in used:
        for j, metric in enumerate(METRICS):
            if col_of[code, j] == -2:
                col_of[code, j] = len(columns)
                columns.append(f"{names[code]}.{metric}")
    out = np.full((len(times), len(columns)), np.nan)
    for j, metric in enumerate(METRICS):
        vals = sub[metric].to_numpy()
        cols = col_of[sensor_codes, j]
        ok = (cols >= 0) & ~np.isnan(vals)
        out[row[ok], cols[ok]] = vals[ok]
    index = pd.DatetimeIndex(pd.to_datetime(times, unit="ms", utc=True), name="timestamp")
    return pd.DataFrame(out, index=index, columns=columns)


def wide_labels(
    frame: pd.DataFrame,
    zone: str | list[str] | None = None,
    sensors: str | list[str] | None = None,
    site: str | list[str] | None = None,
    step_ms: int | None = None,
) -> pd.DataFrame:
    """Aligned with :func:`wide`: ``anomaly`` (0/1), ``incident_id`` and ``incident_type`` (``;``-joined)."""
    sub = _select(frame, zone, sensors, site)
    times, row = _grid(sub, step_ms)
    anomalous = sub["anomaly"].to_numpy()
    ids = np.full(len(times), "", dtype=object)
    kinds = np.full(len(times), "", dtype=object)
    if anomalous.any():
        hits = pd.DataFrame(
            {
                "row": row[anomalous],
                "id": sub["incident_id"].to_numpy()[anomalous],
                "type": sub["incident_type"].to_numpy()[anomalous],
            }
        )
        grouped = hits.groupby("row").agg(lambda s: ";".join(sorted(set(map(str, s)))))
        ids[grouped.index.to_numpy()] = grouped["id"].to_numpy()
        kinds[grouped.index.to_numpy()] = grouped["type"].to_numpy()
    index = pd.DatetimeIndex(pd.to_datetime(times, unit="ms", utc=True), name="timestamp")
    return pd.DataFrame({"anomaly": (ids != "").astype(int), "incident_id": ids, "incident_type": kinds}, index=index)


def iso_index(index: pd.DatetimeIndex) -> np.ndarray:
    """ISO 8601 strings in UTC with a Z, to the second when every timestamp is whole seconds."""
    ms = np.asarray(index.as_unit("ms").asi8)
    unit = "s" if (ms % 1000 == 0).all() else "ms"
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit=unit, timezone="UTC")
