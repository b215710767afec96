"""``retrain --source history``: the history store's minute rollups (real PostgreSQL, history's own migrations and
partitions) read back as the long frame of readings, one per sensor and minute with each metric's mean; the
forecaster's retrain takes them (here: too few to train on, said as such, exit 2), the detector refuses them
with the reason."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from services.history.store import Partitions, migrate
from shared.mlops.rollups import read_rollups
from shared.settings import Settings
from tests.history_helpers import scratch_database

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_460_800_000  # 2025-11-30 00:00 UTC
MIN = 60_000


def retrain(service: str, settings: Settings, db: str, report: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), "FLOWWATCH_HISTORY_DATABASE_URL": db}
    command = [sys.executable, "-m", f"services.{service}", "retrain", "--source", "history", "--no-progress"]
    proc = subprocess.run(
        [*command, *args, "--report", str(report)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, orjson.loads(report.read_bytes()), proc.stdout + proc.stderr


@pytest.mark.timeout(300)
async def test_rollups_are_read_back_as_minute_readings_and_only_the_forecaster_takes_them(
    settings: Settings, tmp_path: Path
) -> None:
    rows = []  # (sensor, metric, minute, site, zone, utility, count, min, max, sum)
    for m in range(30):
        minute = T0 + m * MIN
        rows.append(("p1", "flow", minute, "s1", "z1", "water", 4, 9.0, 11.0, 40.0 + m))
        rows.append(("p1", "pressure", minute, "s1", "z1", "water", 2, 4.0, 6.0, 10.0))
        if m % 2 == 0:
            rows.append(("m1", "power", minute, "s1", "z2", "energy", 1, 3.0, 3.0, 3.0))
    rows.append(("p1", "flow", T0 + 40 * MIN, "s1", "z1", "water", 1, 1.0, 1.0, 1.0))  # outside the window
    async with scratch_database() as db:
        conn = await asyncpg.connect(db)
        try:
            await migrate(conn)
            await Partitions(1).ensure(conn, "rollups", [r[2] for r in rows])
            await conn.copy_records_to_table(
                "rollups",
                records=rows,
                columns=["sensor_id", "metric", "minute", "site", "zone", "utility", "count", "min", "max", "sum"],
            )
            frame = await read_rollups(conn, T0, T0 + 30 * MIN)
        finally:
            await conn.close()

        ids = ["sensor_id", "ts", "site", "zone", "utility", "asset"]
        assert list(frame.columns) == [*ids, "flow", "power", "pressure"]
        assert len(frame) == 30 + 15 and frame["ts"].is_monotonic_increasing
        p1 = frame[frame["sensor_id"] == "p1"].reset_index(drop=True)
        assert p1["flow"].tolist() == [(40.0 + m) / 4 for m in range(30)]  # the minute's mean
        assert set(p1["pressure"]) == {5.0} and p1["power"].isna().all()
        assert p1["ts"].tolist() == [T0 + m * MIN for m in range(30)] and set(p1["zone"]) == {"z1"}
        m1 = frame[frame["sensor_id"] == "m1"]
        assert set(m1["power"]) == {3.0} and (m1["utility"] == "energy").all() and set(frame["asset"]) == {""}

        window = ("--since", str(T0), "--until", str(T0 + 30 * MIN), "--min-rows", "10")
        code, report, out = await asyncio.to_thread(
            retrain, "forecaster", settings, db, tmp_path / "forecaster.json", *window
        )
        assert code == 2, out
        # the 45 readings of the rollups got as far as the forecaster's own check (Kafka holds none of them)
        assert report["decision"] == "failed" and "h of training data is" in report["reasons"][0], report
        assert "widen --since" in report["reasons"][0]

        code, report, out = await asyncio.to_thread(
            retrain, "detector", settings, db, tmp_path / "detector.json", *window
        )
        assert code == 2 and report["decision"] == "failed", out
        assert "does not train on the history store" in report["reasons"][0]
