"""The simulator's device formats through ingest's shipped mappings give the native format's canonical readings."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest import mappings
from services.ingest.mappings import expand
from services.ingest.rules import Rules
from services.ingest.settings import IngestSettings
from services.ingest.validation import validate
from services.simulator import FaultConfig, Network, SimConfig, Simulator
from services.simulator.cli import main
from services.simulator.encode import Encoder
from services.simulator.faults import FAULT_CODE
from services.simulator.formats import FORMATS, MQTT_ROOTS, FormatEncoder, http_url, kafka_topic
from services.simulator.generator import Batch

RULES = Rules.load(IngestSettings(max_age_s=0))
SHIPPED = mappings.load()
START_MS = 1_709_510_400_000  # 2024-03-04T00:00:00Z
MAPPED = [f for f in FORMATS if f != "native"]


@lru_cache(maxsize=4)
def simulated(seed: int) -> tuple[Simulator, Batch, list[bytes]]:
    """Half an hour of a small network with incidents and no faults, and its native payloads."""
    sim = Simulator(Network.default(seed), SimConfig(anomaly_fraction=0.05, faults=FaultConfig()), seed=seed)
    batch = Batch.concat(list(sim.batches(START_MS, duration="30m")))
    return sim, batch, Encoder(sim.engine()).encode(batch)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def through(fmt: str, payload: bytes, now: int) -> list:
    items, reasons, _ = expand(SHIPPED[fmt], payload, RULES, None)
    assert not reasons, reasons
    return [validate(orjson.loads(i.value), now, RULES, "http") for i in items]


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(MAPPED), seed=st.integers(1, 3), picks=st.lists(st.integers(0, 10**9), min_size=1, max_size=8)
)
def test_a_format_through_its_mapping_gives_the_native_reading(fmt: str, seed: int, picks: list[int]) -> None:
    sim, batch, native = simulated(seed)
    encoder = FormatEncoder(sim.engine(), fmt)
    rows = np.flatnonzero(encoder.fits[batch.sensor])
    assert len(rows), f"{fmt} carries some of the network"
    chosen = batch.take(rows[np.array(picks) % len(rows)])
    now = START_MS + 86_400_000
    for k, payload in enumerate(encoder.encode(chosen)):
        row = int(rows[picks[k] % len(rows)])
        sensor = sim.network.sensors[batch.sensor[row]]
        want = validate(orjson.loads(native[row]), now, RULES, "http")
        assert want.ok, want.reasons
        results = through(fmt, payload, now)
        got = results[0]
        assert got.ok, (payload, got.reasons)
        r, w = got.reading, want.reading
        if fmt == "scada-wide":  # a historian's hourly row
            assert r.ts == w.ts // 3_600_000 * 3_600_000
            carried = {m: v for m, v in w.values.items() if m in ("level", "flow", "pressure")}
        else:
            assert r.ts == w.ts
            carried = {"energy": w.values["energy"]} if fmt == "building-energy" else dict(w.values)
            if fmt == "water-meter":
                carried = {"flow": w.values["flow"]}
        assert r.values == pytest.approx(carried, rel=1e-3, abs=0.02)
        if fmt == "gas-station":
            assert (r.sensor_id, r.zone, r.site) == (f"gas-{slug(sensor.id)}", sensor.id, "gas-pipeline")
        elif fmt == "water-meter":
            assert r.sensor_id == sensor.id and 0 < r.extra["device_quality"] <= 1
        elif fmt == "building-energy":
            assert r.sensor_id.startswith(f"{slug(sensor.site)}-f") and r.utility == "energy"
            assert not results[1].ok, "the simulator has no water submeter: that half is a missing value"
        else:
            assert r.sensor_id.startswith("scada-") and len(results) == 1


@pytest.mark.parametrize("fmt", MAPPED)
def test_each_format_goes_where_its_mapping_listens(fmt: str) -> None:
    spec = SHIPPED[fmt]
    assert http_url(fmt, "http://127.0.0.1:8080/v1/readings").endswith(f"?mapping={fmt}")
    assert kafka_topic(fmt, "readings.raw") in spec.kafka
    if fmt in MQTT_ROOTS:
        assert f"{MQTT_ROOTS[fmt]}/#" in spec.mqtt
    else:
        assert not spec.mqtt, f"{fmt} has an MQTT topic now: give the simulator its root"


def test_native_goes_where_it_always_went() -> None:
    assert kafka_topic("native", "readings.raw") == "readings.raw"
    assert http_url("native", "http://h/v1/readings") == "http://h/v1/readings"


@pytest.mark.parametrize("fmt", MAPPED)
def test_corrupt_rows_in_a_format_are_refused_by_its_mapping(fmt: str) -> None:
    sim = Simulator(Network.default(5), SimConfig(faults=FaultConfig.parse("corrupt=0.5")), seed=5)
    batch = Batch.concat(list(sim.batches(START_MS, duration="10m")))
    encoder = FormatEncoder(sim.engine(), fmt)
    part = encoder.carried(batch)
    corrupt = part.fault == FAULT_CODE["corrupt"]
    assert corrupt.any() and not corrupt.all()
    for payload, broken in zip(encoder.encode(part), corrupt.tolist(), strict=True):
        items, reasons, _ = expand(SHIPPED[fmt], payload, RULES, None)
        assert bool(reasons) == broken and (broken or items)


def test_run_sends_only_the_sensors_a_format_and_the_sites_describe(tmp_path) -> None:
    out = tmp_path / "meters.ndjson"
    args = [
        "run",
        "--sink",
        "file",
        "--out",
        str(out),
        "--speed",
        "max",
        "--count",
        "300",
        "--faults",
        "clean",
        "--seed",
        "7",
    ]
    assert main([*args, "--format", "water-meter", "--site", "lakeside", "--start", "2024-03-04T00:00:00Z"]) == 0
    net = Network.default(7)
    wanted = {s.id for s in net.sensors if s.site == "lakeside" and "flow" in s.metrics}
    messages = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(messages) == 300 and {m["sensor_id"] for m in messages} <= wanted
    assert len({m["sensor_id"] for m in messages}) > 1
    assert main([*args, "--site", "atlantis"]) == 2  # usage: no such site
