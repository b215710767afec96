"""Contract with the simulator: what devices send is split exactly as its ground truth says.

The simulator labels every message with its field fault. Ingest must quarantine every
corrupt message (with the matching reason), drop exactly the duplicate copies, accept
everything else that has a value left, and give back the simulator's canonical values.
"""

from __future__ import annotations

from collections import Counter

import pytest

from services.ingest.pipeline import BatchProcessor, Inbound
from services.ingest.rules import Rules
from services.ingest.settings import IngestSettings
from services.simulator import FaultConfig, Network, SimConfig, Simulator
from shared.batching import PartitionMap

START = 1_709_510_400_000
# Which reason a corrupt payload must be refused with, by the simulator's fault_detail.
EXPECTED_REASON = {
    "garbage": {"malformed_json", "invalid_utf8"},
    "truncated": {"malformed_json"},
    "nan": {"non_finite"},
    "infinity": {"non_finite"},
    "string_value": {"not_a_number"},
    "sentinel": {"out_of_range"},
    "wrong_type": {"invalid_field"},
    "bad_ts": {"invalid_ts", "missing_field"},
    "missing_field": {"missing_field", "invalid_field"},
}


@pytest.fixture(scope="module")
def split():
    faults = FaultConfig(noise=0.02, missing=0.02, corrupt=0.06, duplicate=0.03, late=0.02, out_of_order=0.03)
    sim = Simulator(Network.default(seed=3), SimConfig(anomaly_fraction=0.05, faults=faults), seed=3)
    payloads = list(sim.payloads(START, duration="10m"))
    frame, _ = sim.history(START, duration="10m")
    # Replays are judged at delivery time, so the age checks see what a live worker would.
    rules = Rules.load(IngestSettings(quality_threshold=0.0))
    pm = PartitionMap(4)
    proc = BatchProcessor(rules, partition_of=pm, load_state=lambda sid, msg: None)
    decided: dict[int, tuple[str, list[str], object]] = {}
    batch = [
        Inbound(value=value, key=key, partition=pm(key.decode()), offset=i, received_ms=int(deliver), request=b"%d" % i)
        for i, ((key, value), deliver) in enumerate(zip(payloads, frame["deliver_ms"], strict=True))
    ]
    clean_by_offset = {}
    for i in range(0, len(batch), 1000):
        out = proc.process(batch[i : i + 1000])
        for item, status, reasons in out.verdicts:
            decided[int(item)] = (status, reasons, None)
        for _, reading, _ in out.clean:
            clean_by_offset[(reading.sensor_id, reading.ts)] = reading
    return frame, decided, clean_by_offset


def test_every_message_is_decided(split) -> None:
    frame, decided, _ = split
    assert len(decided) == len(frame)


def test_corrupt_messages_are_quarantined_with_the_right_reason(split) -> None:
    frame, decided, _ = split
    corrupt = frame.index[frame["fault"] == "corrupt"]
    assert len(corrupt) > 100
    wrong = []
    for i in corrupt:
        status, reasons, _ = decided[i]
        codes = {r.split(":")[0] for r in reasons}
        if status != "quarantined" or not codes & EXPECTED_REASON[frame.at[i, "fault_detail"]]:
            wrong.append((frame.at[i, "fault_detail"], status, reasons))
    assert not wrong, wrong[:5]


def test_duplicates_are_exactly_the_duplicate_copies(split) -> None:
    frame, decided, _ = split
    dup_rows = {i for i, (status, _, _) in decided.items() if status == "duplicate"}
    assert dup_rows == set(frame.index[frame["fault"] == "duplicate"])


def test_healthy_faults_are_accepted_with_canonical_values(split) -> None:
    frame, decided, clean = split
    healthy = frame[frame["fault"].isin(["", "noise", "late", "out_of_order"])]
    statuses = Counter(decided[i][0] for i in healthy.index)
    assert statuses == Counter({"clean": len(healthy)})
    # Devices that report psi, bar, °F, L/s or Wh come back in canonical units.
    for _, row in healthy.sample(300, random_state=1).iterrows():
        reading = clean[(row["sensor_id"], int(row["ts"]))]
        for metric, value in reading.values.items():
            assert value == pytest.approx(row[metric], rel=2e-3, abs=2e-3), (row["sensor_id"], metric)


def test_missing_values_keep_the_reading_unless_nothing_is_left(split) -> None:
    frame, decided, _ = split
    missing = frame.index[frame["fault"] == "missing"]
    statuses = Counter(decided[i][0] for i in missing)
    assert set(statuses) <= {"clean", "quarantined"} and statuses["clean"] > 0
    for i in missing:
        status, reasons, _ = decided[i]
        if status == "quarantined":
            assert [r.split(":")[0] for r in reasons] == ["no_values"]
