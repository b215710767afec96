"""What goes on the wire: each device's timestamp format and units decode back to the simulated truth."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import orjson
import pytest

from services.simulator import FaultConfig, Network, SimConfig, Simulator
from services.simulator.encode import Encoder
from services.simulator.generator import Batch
from services.simulator.units import CANONICAL_UNITS, DEVICE_UNITS, METRIC_INDEX, conversion


@pytest.fixture(scope="module")
def encoded():
    sim = Simulator(Network.default(7), SimConfig(anomaly_fraction=0.05, faults=FaultConfig()), seed=2)
    batch = Batch.concat(list(sim.batches("2024-03-04T00:00:00Z", duration="30m")))
    return sim, batch, Encoder(sim.engine()).encode(batch)


def _ts_ms(value) -> int:
    if isinstance(value, str):
        return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    return round(value * 1000) if value < 1e11 else int(value)


def _canonical(value: float, metric: str, unit: str | None) -> float:
    scale, offset = conversion(metric, unit)
    return (value - offset) / scale


def test_every_payload_decodes_back_to_the_truth(encoded) -> None:
    sim, batch, payloads = encoded
    formats: set[str] = set()
    units_seen: set[str] = set()
    for i, payload in enumerate(payloads):
        d = orjson.loads(payload)
        sensor = sim.network.sensors[batch.sensor[i]]
        assert d["sensor_id"] == sensor.id and d["zone"] == sensor.zone and d["asset"] == sensor.asset
        assert _ts_ms(d["ts"]) == batch.ts[i]
        formats.add(
            type(d["ts"]).__name__
            if not isinstance(d["ts"], str)
            else ("iso_z" if d["ts"].endswith("Z") else "iso_offset")
        )
        units = d.get("units") or {}
        assert set(d["values"]) == set(sensor.metrics)
        for metric, value in d["values"].items():
            unit = units.get(metric)
            if sensor.units.get(metric):
                assert unit == sensor.units[metric], "a device in non-canonical units always says so"
            units_seen.add(unit or CANONICAL_UNITS[metric])
            truth = batch.values[i, METRIC_INDEX[metric]]
            assert _canonical(value, metric, unit) == pytest.approx(truth, rel=1e-3, abs=0.02)
        if sensor.send_quality:
            assert 0 < d["quality"] <= 1
    assert formats >= {"int", "float", "iso_z", "iso_offset"}
    assert set(DEVICE_UNITS) <= units_seen


def test_keys_are_sensor_ids(encoded) -> None:
    sim, batch, _ = encoded
    pairs = Encoder(sim.engine()).pairs(batch.take(np.arange(100)))
    assert [k.decode() for k, _ in pairs] == [sim.network.sensors[s].id for s in batch.sensor[:100]]
