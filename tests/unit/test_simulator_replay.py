"""Replay: any CSV becomes readings; times, column mapping and pacing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from services.simulator.replay import ReplaySource, guess_metric, replay
from services.simulator.sinks import FileSink


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("column", "metric"),
    [
        ("Pressure", "pressure"),
        ("Temperature_C", "temperature"),
        ("Thermocouple", "temperature"),
        ("Accelerometer1RMS", "vibration"),
        ("Volume Flow RateRMS", "flow"),
        ("Current", "current"),
        ("pH", "ph"),
        ("bearing temp", "bearing_temperature"),
        ("mystery", None),
    ],
)
def test_metric_guesses(column: str, metric: str | None) -> None:
    assert guess_metric(column) == metric


def test_one_device_per_file_with_ambiguous_columns_kept_apart(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "Valve 1.csv",
        "datetime,Accelerometer1RMS,Accelerometer2RMS,Pressure,Odd Column",
        ["2020-03-09 10:14:33,0.2,0.3,0.05,1", "2020-03-09 10:14:34,0.21,,0.06,2"],
    )
    src = ReplaySource.read(path, time_column="datetime")
    assert src.sensors == ["valve_1"]
    assert [c.metric for c in src.columns] == ["accelerometer1rms", "accelerometer2rms", "pressure", "odd_column"]
    assert src.ts.tolist() == [1583748873000, 1583748874000]
    ((sid, reading),) = src.readings(1, 123)
    assert sid == "valve_1" and reading["ts"] == 123
    assert reading["values"] == {"accelerometer1rms": 0.21, "pressure": 0.06, "odd_column": 2.0}


def test_per_column_sensors_and_epoch_seconds(tmp_path: Path) -> None:
    path = _csv(tmp_path / "m.csv", "timestamp,flow,level", ["1700000001,5,1.5", "1700000000,4,1.4"])
    src = ReplaySource.read(path, per_column=True, sensor_id="tank")
    assert src.sensors == ["tank-flow", "tank-level"]
    assert src.ts.tolist() == [1700000000000, 1700000001000], "rows are put in time order"
    assert [r[1]["values"] for r in src.readings(0, 0)] == [{"flow": 4.0}, {"level": 1.4}]


def test_mapping_file(tmp_path: Path) -> None:
    path = _csv(tmp_path / "rig.csv", "timestamp,P1,T1", ["2024-01-01T00:00:00Z,30,70"])
    mapping = tmp_path / "map.yaml"
    mapping.write_text(
        "P1: {sensor_id: rig-p, metric: pressure, unit: psi}\nT1: {sensor_id: rig-t, metric: temperature, unit: °F}\n"
    )
    src = ReplaySource.read(path, mapping=mapping, site="lab", utility="gas", asset="gas_station")
    readings = dict(src.readings(0, 1))
    assert readings["rig-p"]["units"] == {"pressure": "psi"} and readings["rig-t"]["values"] == {"temperature": 70.0}
    assert readings["rig-p"]["site"] == "lab" and readings["rig-p"]["utility"] == "gas"


@pytest.mark.parametrize(
    ("header", "rows", "reason"),
    [
        ("time,a", ["2020-01-01,1"], "no column 'timestamp'"),
        ("timestamp,name", ["2020-01-01,x"], "no numeric sensor columns"),
        ("timestamp,a", ["not a time,1"], "not a time|unreadable"),
    ],
)
def test_bad_files_say_why(tmp_path: Path, header: str, rows: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ReplaySource.read(_csv(tmp_path / "bad.csv", header, rows))


async def test_replay_keeps_the_original_pace(tmp_path: Path) -> None:
    rows = [f"2024-01-01T00:00:0{i}Z,{i}" for i in range(4)]
    src = ReplaySource.read(_csv(tmp_path / "p.csv", "timestamp,pressure", rows))
    out = tmp_path / "out.ndjson"
    sink = FileSink(out)
    await sink.start()
    t0 = time.monotonic()
    report = await replay(src, sink, {s: i for i, s in enumerate(src.sensors)}, speed=3.0, timestamps="original")
    elapsed = time.monotonic() - t0
    await sink.stop()
    sent = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [d["ts"] for d in sent] == src.ts.tolist() and report.messages == 4
    # 3 s of recording at 3x: about one second (loose bounds: this checks pacing exists, not its precision).
    assert 0.8 <= elapsed < 5


async def test_replay_shift_moves_the_first_row_to_now(tmp_path: Path) -> None:
    src = ReplaySource.read(
        _csv(tmp_path / "p.csv", "timestamp,pressure", ["2020-01-01T00:00:00Z,1", "2020-01-01T00:00:10Z,2"])
    )
    sink = FileSink(tmp_path / "o.ndjson")
    await sink.start()
    before = time.time() * 1000
    stop = asyncio.Event()
    await replay(src, sink, {src.sensors[0]: 0}, speed=None, timestamps="shift", stop=stop)
    await sink.stop()
    sent = [orjson.loads(line) for line in (tmp_path / "o.ndjson").read_bytes().splitlines()]
    assert sent[1]["ts"] - sent[0]["ts"] == 10_000 and abs(sent[0]["ts"] - before) < 5_000
