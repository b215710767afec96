"""Labels line up with the injected incidents, and each incident does what its name says."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pytest

from services.simulator import INCIDENT_TYPES, FaultConfig, Network, SimConfig, Simulator, label_readings, read_labels
from services.simulator.units import METRICS
from shared.records import IncidentLabel

START = "2024-03-04T00:00:00Z"
NET = Network.default(7)


@pytest.fixture(scope="module")
def history():
    return Simulator(NET, SimConfig(anomaly_fraction=0.1, faults=FaultConfig.preset("stress")), seed=7).history(
        START, "1d", step="60s"
    )


def test_every_label_matches_exactly_the_rows_it_covers(history) -> None:
    df, labels = history
    assert all(isinstance(lab, IncidentLabel) for lab in labels)
    # From the labels alone (what an evaluation has), each reading maps to the incident the simulator injected.
    from_labels = label_readings(df["sensor_id"].astype(str).to_numpy(), df["ts"].to_numpy(), labels)
    assert np.array_equal(from_labels.astype(str), df["incident_id"].astype(str).to_numpy())
    assert df["anomaly"].to_numpy().sum() == (from_labels != "").sum() > 0
    by_id = {lab.incident_id: lab for lab in labels}
    counts = df.loc[df["anomaly"], "incident_id"].astype(str).value_counts()
    assert set(counts.index) == set(by_id), "every label has readings, every anomalous reading has a label"
    for lab in labels:
        assert lab.start_ms < lab.end_ms and lab.sensors and lab.type in INCIDENT_TYPES
        rows = df[df["incident_id"] == lab.incident_id]
        assert set(rows["sensor_id"].astype(str)) <= set(lab.sensors)
        assert set(rows["zone"].astype(str)) == {lab.zone} and set(rows["utility"].astype(str)) == {lab.utility}


def test_incidents_never_overlap_on_a_sensor(history) -> None:
    _, labels = history
    spans: dict[str, list[tuple[int, int]]] = {}
    for lab in labels:
        for s in lab.sensors:
            spans.setdefault(s, []).append((lab.start_ms, lab.end_ms))
    for s, windows in spans.items():
        windows.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows)), s


def test_all_incident_types_occur_over_a_week() -> None:
    sim = Simulator(NET, SimConfig(anomaly_fraction=0.1), seed=3)
    types = {lab.type for lab in sim.incidents(START, duration="7d", step="5m")}
    assert types == set(INCIDENT_TYPES)


def test_labels_file_round_trip(history, tmp_path) -> None:
    from services.simulator import write_labels

    for name in ("l.jsonl", "l.csv"):
        write_labels(tmp_path / name, history.labels)
        assert read_labels(tmp_path / name) == history.labels


@functools.cache
def _pair(kind: str, seed: int = 11):
    """The same seed with and without incidents of one kind: only the labelled readings may differ."""
    cfg = {"incident_weights": {kind: 1.0}, "faults": FaultConfig()}
    on = Simulator(NET, SimConfig(anomaly_fraction=0.05, **cfg), seed=seed).history(START, "1d", step="120s")
    off = Simulator(NET, SimConfig(anomaly_fraction=0.0, **cfg), seed=seed).history(START, "1d", step="120s")
    return on.frame, off.frame, on.labels


@pytest.mark.parametrize("kind", INCIDENT_TYPES)
def test_only_labelled_readings_change(kind: str) -> None:
    on, off, labels = _pair(kind)
    assert labels and {lab.type for lab in labels} == {kind}
    metrics = list(METRICS)
    a, b = on[metrics].to_numpy(), off[metrics].to_numpy()
    same = np.isclose(a, b, equal_nan=True).all(axis=1)
    anomalous = on["anomaly"].to_numpy()
    assert same[~anomalous].all(), "a reading outside every incident was changed"
    # Ramps start at zero effect, so a few readings at an incident's very start may look normal.
    assert (~same[anomalous]).mean() > 0.8


def _effect(on: pd.DataFrame, off: pd.DataFrame, metric: str) -> float:
    rows = on["anomaly"].to_numpy() & on[metric].notna().to_numpy()
    return float(np.nanmedian(on[metric].to_numpy()[rows] / off[metric].to_numpy()[rows]))


@pytest.mark.parametrize(
    ("kind", "metric", "direction"),
    [
        ("leak", "flow", +1),
        ("leak", "pressure", -1),
        ("burst", "flow", +1),
        ("burst", "pressure", -1),
        ("contamination", "turbidity", +1),
        ("contamination", "chlorine", -1),
        ("pump_cavitation", "vibration", +1),
        ("bearing_fault", "bearing_temperature", +1),
        ("bearing_fault", "vibration", +1),
        ("overconsumption", "power", +1),
        ("tampering", "energy", -1),
    ],
)
def test_incident_signatures(kind: str, metric: str, direction: int) -> None:
    on, off, _ = _pair(kind)
    ratio = _effect(on, off, metric)
    assert (ratio - 1) * direction > 0.03, f"{kind} moved {metric} by a median factor {ratio:.3f}"


def test_tampering_keeps_current_while_energy_drops() -> None:
    on, off, _ = _pair("tampering")
    assert _effect(on, off, "energy") < 0.6
    assert abs(_effect(on, off, "current") - 1) < 0.01


def test_stuck_sensor_repeats_one_value() -> None:
    on, _, labels = _pair("stuck_sensor")
    for lab in labels:
        rows = on[on["incident_id"] == lab.incident_id]
        vals = rows[list(METRICS)].dropna(axis=1, how="all")
        assert len(rows) > 1 and (vals.nunique() == 1).all()


def test_spike_and_drift_hit_one_sensor() -> None:
    for kind in ("spike", "drift"):
        on, off, labels = _pair(kind)
        assert all(len(lab.sensors) == 1 for lab in labels)
    on, off, labels = _pair("spike")
    metrics = list(METRICS)
    rel = np.nanmax(np.abs(on[metrics].to_numpy() / off[metrics].to_numpy() - 1), axis=1)
    hit = on["anomaly"].to_numpy()
    assert np.nanmin(rel[hit]) > 0.2 and len(labels) <= hit.sum() <= 3 * len(labels)


def test_gas_excursion_moves_pressure_either_way() -> None:
    on, off, _ = _pair("gas_pressure_excursion")
    rows = on["anomaly"].to_numpy()
    change = np.abs(on["pressure"].to_numpy()[rows] / off["pressure"].to_numpy()[rows] - 1)
    assert np.median(change) > 0.05


@pytest.mark.parametrize("kind", ["spike", "drift", "contamination", "bearing_fault"])
def test_incidents_stay_physically_possible(kind: str) -> None:
    """An anomaly is unusual, not impossible: ingest must pass it on to the detector, not quarantine it."""
    from services.simulator.units import PLAUSIBLE

    on, _, _ = _pair(kind)
    rows = on[on["anomaly"]]
    for metric, (lo, hi) in PLAUSIBLE.items():
        values = rows[metric].dropna()
        assert ((values >= lo) & (values <= hi)).all(), metric
