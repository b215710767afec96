"""Field faults: the mix matches the configured fractions, and each fault looks like what it claims to be."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from services.simulator import FaultConfig, Network, SimConfig, Simulator
from services.simulator.encode import Encoder
from services.simulator.faults import FAULT_CODE
from services.simulator.generator import Batch

START = "2024-03-04T00:00:00Z"
NET = Network.default(7)
REQUIRED = ("sensor_id", "ts", "site", "zone", "utility", "asset", "values")


@pytest.fixture(scope="module")
def issue_mix():
    """The issue's example: normal 0.5, anomalies 0.15, noise 0.15, missing 0.1, corrupt 0.05, burst 0.05."""
    cfg = SimConfig(anomaly_fraction=0.15, faults=FaultConfig.parse("noise=0.15,missing=0.1,corrupt=0.05,burst=0.05"))
    return Simulator(NET, cfg, seed=21).history(START, "1d", step="60s").frame


@pytest.fixture(scope="module")
def stress():
    sim = Simulator(NET, SimConfig(anomaly_fraction=0.05, faults=FaultConfig.preset("stress")), seed=5)
    batch = Batch.concat(list(sim.batches(START, duration="3h")))
    return sim, batch, Encoder(sim.engine()).encode(batch)


def test_issue_mix_within_tolerance(issue_mix) -> None:
    df = issue_mix
    fault = df["fault"].astype(str)
    shares = {
        "anomaly": df["anomaly"].mean(),
        "noise": (fault == "noise").mean(),
        "missing": (fault == "missing").mean(),
        "corrupt": (fault == "corrupt").mean(),
        "burst": df["burst"].mean(),
    }
    want = {"anomaly": 0.15, "noise": 0.15, "missing": 0.1, "corrupt": 0.05, "burst": 0.05}
    for name, target in want.items():
        assert abs(shares[name] - target) < 0.15 * target, f"{name}: {shares[name]:.4f} vs {target}"
    normal = (~df["anomaly"] & (fault == "") & ~df["burst"]).mean()
    assert abs(normal - 0.5) < 0.05


def test_stress_mix_every_kind_within_tolerance(stress) -> None:
    _, batch, _ = stress
    originals = batch.fault != FAULT_CODE["duplicate"]
    n = originals.sum()
    for name in ("noise", "missing", "corrupt", "duplicate", "late", "out_of_order"):
        share = (batch.fault == FAULT_CODE[name]).sum() / n
        assert abs(share - 0.05) < 0.1 * 0.05, f"{name}: {share:.4f}"
    assert abs(batch.burst[originals].mean() - 0.05) < 0.02  # whole gateway windows: a coarser draw


def test_faulted_readings_are_never_anomalous(stress) -> None:
    _, batch, _ = stress
    faulted = (batch.fault != 0) & (batch.fault != FAULT_CODE["duplicate"])
    assert not (faulted & (batch.incident >= 0)).any()


def _is_valid_reading(payload: bytes) -> bool:
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(d, dict) or any(k not in d for k in REQUIRED) or not isinstance(d["sensor_id"], str):
        return False
    ts = d["ts"]
    if isinstance(ts, str):
        try:
            from datetime import datetime

            datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return False
    elif not isinstance(ts, int | float):
        return False
    values = d["values"]
    if not isinstance(values, dict) or not values:
        return False
    return all(isinstance(v, int | float) and math.isfinite(v) and -9000 < v < 1e30 for v in values.values())


def test_corrupt_payloads_are_invalid_and_the_rest_valid(stress) -> None:
    _, batch, payloads = stress
    corrupt = batch.fault == FAULT_CODE["corrupt"]
    missing = batch.fault == FAULT_CODE["missing"]
    valid = np.array([_is_valid_reading(p) for p in payloads])
    assert not valid[corrupt].any(), "a corrupt payload parses as a good reading"
    assert valid[~corrupt & ~missing].all(), "a good reading does not parse"
    assert not any(b"\n" in p or b"\r" in p for p in payloads), "payloads must be safe to send as NDJSON lines"
    kinds = {str(batch.detail[i]) for i in np.flatnonzero(corrupt)}
    assert len(kinds) >= 8


def test_missing_values_are_absent_or_null(stress) -> None:
    sim, batch, payloads = stress
    engine = sim.engine()
    for i in np.flatnonzero(batch.fault == FAULT_CODE["missing"])[:500]:
        d = orjson.loads(payloads[i])
        sensor = sim.network.sensors[batch.sensor[i]]
        present = {k for k, v in d["values"].items() if v is not None}
        assert len(present) == len(sensor.metrics) - 1
        assert engine.n_present[batch.sensor[i]] == len(sensor.metrics)


def test_duplicates_are_exact_copies(stress) -> None:
    _, batch, payloads = stress
    is_copy = batch.fault == FAULT_CODE["duplicate"]
    keys = list(zip(batch.sensor.tolist(), batch.ts.tolist(), strict=True))
    originals = {keys[i]: payloads[i] for i in np.flatnonzero(~is_copy)}
    copies = np.flatnonzero(is_copy)
    assert len(copies) > 0
    assert all(payloads[i] == originals[keys[i]] for i in copies)  # KeyError: a copy of nothing


def test_late_out_of_order_and_bursts_arrive_when_they_should(stress) -> None:
    sim, batch, _ = stress
    cfg = sim.config.faults
    delay = batch.deliver - batch.ts
    late = batch.fault == FAULT_CODE["late"]
    assert late.any() and delay[late].min() >= cfg.late_min_s * 1000 and delay[late].max() <= cfg.late_max_s * 1000
    interval = sim.engine().interval_ms[batch.sensor]
    ooo = batch.fault == FAULT_CODE["out_of_order"]
    assert ooo.any() and (delay[ooo] > interval[ooo]).all(), "an out-of-order reading arrives after the next one"
    # An out-of-order reading comes after the sensor's next reading whenever that one was delivered on time.
    position = {(s, t): i for i, (s, t) in enumerate(zip(batch.sensor.tolist(), batch.ts.tolist(), strict=True))}
    checked = 0
    for i in np.flatnonzero(ooo)[:500]:
        s, t = int(batch.sensor[i]), int(batch.ts[i])
        nxt = position.get((s, t + int(interval[i])))
        if nxt is not None and batch.deliver[nxt] == batch.ts[nxt]:
            assert nxt < i
            checked += 1
    assert checked > 300
    window = int(cfg.burst_window_s * 1000)
    burst = batch.burst
    assert burst.any()
    assert ((batch.deliver[burst] // window) == (batch.ts[burst] // window) + 1).all(), "a burst flushes at window end"
    site = sim.engine().site_of[batch.sensor]
    keys = set(zip(site[burst].tolist(), (batch.ts[burst] // window).tolist(), strict=True))
    everyone = set(zip(site.tolist(), (batch.ts // window).tolist(), strict=True))
    assert keys < everyone
    in_burst_window = np.array([k in keys for k in zip(site.tolist(), (batch.ts // window).tolist(), strict=True)])
    assert (in_burst_window == burst).all(), "a burst holds back every reading of its site's window"


@pytest.mark.parametrize("spec", ["clean", "realistic", "harsh", "stress", "realistic,corrupt=0.2", "noise=0.3"])
def test_fault_specs_parse(spec: str) -> None:
    cfg = FaultConfig.parse(spec)
    cfg.validate(0.05)


@pytest.mark.parametrize("spec", ["bogus", "noise=abc", "noise=2", "unknown=0.1", "noise=0.5,missing=0.5"])
def test_bad_fault_specs_say_why(spec: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        FaultConfig.parse(spec).validate(0.05)
