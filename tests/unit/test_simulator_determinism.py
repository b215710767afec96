"""The same seed gives the same data, however the range is asked for; another seed gives other data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.simulator import Batch, FaultConfig, Network, SimConfig, Simulator

START = "2024-03-04T00:00:00Z"


def _sim(seed: int = 7, faults: str = "stress", anomaly: float = 0.1) -> Simulator:
    return Simulator(
        Network.default(seed), SimConfig(anomaly_fraction=anomaly, faults=FaultConfig.parse(faults)), seed=seed
    )


def test_same_seed_same_frame_labels_and_bytes() -> None:
    a, b = _sim(), _sim()
    ha, hb = a.history(START, "3h"), b.history(START, "3h")
    # DataFrame.equals: assert_frame_equal takes half a minute on string categoricals.
    assert ha.frame.equals(hb.frame) and len(ha.frame) > 50_000
    assert ha.labels == hb.labels and ha.labels
    pa_ = list(a.payloads(START, duration="20m"))
    pb_ = list(b.payloads(START, duration="20m"))
    assert pa_ == pb_ and len(pa_) > 20_000


def test_other_seed_other_data() -> None:
    ha, hb = _sim(7).history(START, "1h"), _sim(8).history(START, "1h")
    assert not np.allclose(
        ha.frame["pressure"].fillna(0).to_numpy()[:1000], hb.frame["pressure"].fillna(0).to_numpy()[:1000]
    )
    assert [lab.incident_id for lab in ha.labels] != [lab.incident_id for lab in hb.labels]


@pytest.mark.parametrize("step", [None, "30s"])
def test_a_range_is_the_same_data_however_it_is_cut(step: str | None) -> None:
    """Blocks are pure functions of the seed: two halves equal the whole (values, faults and incidents)."""
    sim = _sim(faults="clean")
    whole = sim.history(START, "4h", step=step).frame
    first = sim.history(START, "90m", step=step).frame
    second = _sim(faults="clean").history("2024-03-04T01:30:00Z", "150m", step=step).frame
    key = ["sensor_id", "ts"]
    a = whole.sort_values(key).reset_index(drop=True)
    b = pd.concat([first, second]).sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) > 0
    for col in ["ts", "pressure", "flow", "vibration", "turbidity", "power"]:
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy(), equal_nan=True), col
    for col in ["sensor_id", "incident_id", "fault"]:
        assert (a[col].astype(object).to_numpy() == b[col].astype(object).to_numpy()).all(), col
    assert a["anomaly"].any()


def test_delivery_order_and_range() -> None:
    sim = _sim()
    t0 = pd.Timestamp(START).value // 1_000_000
    for batch in sim.batches(START, duration="2h"):
        assert np.all(np.diff(batch.deliver) >= 0)
        assert batch.ts.min() >= t0 and batch.ts.max() < t0 + 7_200_000
        assert np.all(batch.deliver >= batch.ts)


@pytest.mark.parametrize("rate", [200, 1234, 20_000])
def test_a_target_rate_is_met_and_cuts_still_agree(rate: float) -> None:
    """``run --rate`` shortens every interval by one factor; fractional intervals still tile time exactly."""
    net = Network.default(7)
    sim = Simulator(net, SimConfig(faults=FaultConfig(), interval_scale=net.natural_rate() / rate), seed=7)
    seconds = max(2, 40_000 // rate)
    whole = Batch.concat(list(sim.batches(START, duration=seconds)))
    assert abs(len(whole) / seconds - rate) < 0.01 * rate
    half = seconds / 2
    parts = Batch.concat(
        [
            *sim.batches(START, duration=half),
            *sim.batches(pd.Timestamp(START) + pd.Timedelta(seconds=half), duration=half),
        ]
    )
    assert sorted(zip(whole.sensor.tolist(), whole.ts.tolist(), strict=True)) == sorted(
        zip(parts.sensor.tolist(), parts.ts.tolist(), strict=True)
    )
    assert len(set(zip(whole.sensor.tolist(), whole.ts.tolist(), strict=True))) == len(whole), (
        "no sensor repeats a timestamp"
    )


def test_an_endless_stream_forgets_old_incidents() -> None:
    """A live run (no end) keeps memory bounded: incidents of long-gone epochs are dropped."""
    small = Network.from_dict(
        {
            "sites": [
                {"id": "a", "zones": [{"id": "a-z", "utility": "water", "sensors": [{"asset": "pipe", "count": 3}]}]}
            ]
        }
    )
    sim = Simulator(small, SimConfig(anomaly_fraction=0.2, incident_scale=0.05, block_rows=100), seed=7)
    engine = sim.engine()
    live = []
    t0 = pd.Timestamp(START).value // 1_000_000
    for batch in engine.batches(t0):
        live.append(sum(x is not None for x in engine.incidents))
        if batch.ts.max() > t0 + 24 * 3_600_000:
            break
    assert len(engine.incidents) > 100
    assert max(live[len(live) // 2 :]) < len(engine.incidents) / 4
    assert len(engine._epochs) <= 4
