"""The simulator against the real broker: it delivers exactly what it reports, labels included."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

from services.simulator import FaultConfig, Network, SimConfig, Simulator, read_labels
from services.simulator.settings import SimulatorSettings
from shared.records import IncidentLabel
from shared.settings import Settings
from tests.helpers import ROOT, consume

START = "2024-03-04T00:00:00Z"


def _simulator(settings: Settings, *args: str, timeout: float = 120) -> dict:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "services.simulator", "--log-level", "WARNING", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return orjson.loads(proc.stdout)


def _per_key(pairs) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in pairs:
        out[key].append(value)
    return out


async def test_run_delivers_exactly_what_it_reports(settings: Settings, tmp_path: Path) -> None:
    labels_file = tmp_path / "labels.jsonl"
    report = _simulator(
        settings,
        "run",
        "--sink", "kafka",
        "--speed", "max",
        "--count", "6000",
        "--start", START,
        "--seed", "11",
        "--faults", "stress",
        "--anomaly-fraction", "0.1",
        "--labels", str(labels_file),
    )  # fmt: skip
    assert report["messages"] == report["delivery"]["sent"] == report["delivery"]["delivered"] == 6000
    assert report["delivery"]["failed"] == 0
    records = await consume(settings, "readings.raw", 6000, timeout=60, decode=False)
    assert len(records) == 6000
    # Nothing more arrives than was reported.
    assert len(await consume(settings, "readings.raw", 6001, timeout=3, decode=False)) == 6000

    # What arrived is byte for byte what the same seed generates, in order per sensor (key -> one partition).
    defaults = SimulatorSettings()
    sim = Simulator(
        Network.default(11),
        SimConfig(anomaly_fraction=0.1, incident_scale=defaults.incident_scale, faults=FaultConfig.preset("stress")),
        seed=11,
    )
    expected = []
    for pair in sim.payloads(START):
        expected.append(pair)
        if len(expected) == 6000:
            break
    assert _per_key((r.key, r.value) for r in records) == _per_key(expected)
    invalid = sum(1 for _, v in expected if not _valid(v))
    reported = report["by_fault"]
    assert reported["corrupt"] > 0
    # Every corrupt payload is invalid; a reading with a missing value may be too (nothing else is).
    assert reported["corrupt"] <= invalid <= reported["corrupt"] + reported["missing"]

    # Labels: on the topic and in the file, the same ones the report counts.
    on_topic = [IncidentLabel.from_dict(v) for v in await consume(settings, "labels", report["labels"] + 1, timeout=5)]
    assert report["labels"] > 0 and len(on_topic) == report["labels"]
    assert sorted(on_topic, key=lambda lab: lab.incident_id) == sorted(
        read_labels(labels_file), key=lambda lab: lab.incident_id
    )
    ids = {lab.incident_id for lab in on_topic}
    anomalous_ids = set()
    for _, value in expected:
        if not _parses(value):
            continue
        d = orjson.loads(value)
        for lab in on_topic:
            if d["sensor_id"] in lab.sensors and lab.start_ms <= _ts(d["ts"]) < lab.end_ms:
                anomalous_ids.add(lab.incident_id)
    assert anomalous_ids == ids, "every published label covers readings that were sent"


def _parses(value: bytes) -> bool:
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(d, dict) and "sensor_id" in d and "ts" in d and isinstance(d.get("values"), dict)


def _valid(value: bytes) -> bool:
    if not _parses(value):
        return False
    d = orjson.loads(value)
    numbers = list(d["values"].values())
    good_values = bool(numbers) and all(isinstance(v, int | float) and -9000 < v < 1e30 for v in numbers)
    return good_values and isinstance(d.get("sensor_id"), str) and _ts(d["ts"]) > 0


def _ts(value) -> int:
    if isinstance(value, str):
        from datetime import datetime

        try:
            return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return -1
    if not isinstance(value, int | float):
        return -1
    return round(value * 1000) if value < 1e11 else int(value)


async def test_real_time_run_stamps_readings_now(settings: Settings) -> None:
    before = time.time() * 1000
    report = _simulator(settings, "run", "--sink", "kafka", "--rate", "400", "--duration", "3s", "--faults", "clean")
    after = time.time() * 1000
    assert report["stopped_by"] == "end of range"
    assert abs(report["messages"] - 1200) < 60  # 3 simulated seconds at 400 readings/s
    values = await consume(settings, "readings.raw", report["messages"], timeout=30)
    assert len(values) == report["messages"] == report["delivery"]["delivered"]
    stamps = [_ts(v["ts"]) for v in values]
    assert before - 1000 <= min(stamps) and max(stamps) <= after
    assert report["wall_s"] >= 2.5, "a real-time run takes as long as the time it simulates"


async def test_replay_csv_into_kafka(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "rig.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "Pressure", "Temperature", "Accelerometer1RMS"])
        for i in range(40):
            writer.writerow([f"2020-02-08T13:{i // 60:02d}:{i % 60:02d}Z", 100 + i, 20.5, "" if i == 5 else 0.2])
    report = _simulator(
        settings, "replay", "--data", str(path), "--speed", "max", "--timestamps", "original", "--sensor-id", "rig-1"
    )
    assert report["rows"] == report["messages"] == report["delivery"]["delivered"] == 40
    values = await consume(settings, "readings.raw", 40, timeout=30)
    assert len(values) == 40
    first = min(values, key=lambda v: v["ts"])
    assert first["sensor_id"] == "rig_1" and first["ts"] == 1581166800000
    assert first["values"] == {"pressure": 100.0, "temperature": 20.5, "vibration": 0.2}
    sixth = next(v for v in values if v["ts"] == 1581166805000)
    assert sixth["values"] == {"pressure": 105.0, "temperature": 20.5}
