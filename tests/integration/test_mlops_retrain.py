"""The model lifecycle on the real stack: a simulated stream with its labels and operators' verdicts on Kafka,
``python -m services.detector retrain`` promotes a better candidate (a running detector hot-swaps it),
rejects a worse one trained on a few minutes (with the drift measured against v1's training reference),
fails clearly on an empty window."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.forecaster.offline.history import History
from services.simulator.simulator import Simulator
from shared.mlops.card import CARD
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.timeutil import parse_time_ms
from shared.topics import ALERTS, FEEDBACK, MODELS
from tests.helpers import AUTH, ServiceProcess, consume
from tests.mlops_helpers import produce_history, produce_timed

ROOT = Path(__file__).resolve().parents[2]
HOURS = 4
MIN = 60_000
SITES = ("oldtown", "riverside")  # half the simulated network: 8 incidents, 33,000 readings
# The simulated world depends on its absolute times: the same start every run, moved by whole days to end
# before now (Kafka keeps readings.clean 3 days), and an explicit --until, so every run judges the same data.
BASE = "2026-12-04T18:10:00Z"
DAY = 86_400_000


def retrain(settings: Settings, tmp: Path, name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp / f"{name}.json"
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "services.detector", "retrain", "--report", str(report), "--no-progress", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, orjson.loads(report.read_bytes()), proc.stdout + proc.stderr


async def verdicts(settings: Settings, history: History, now: int) -> None:
    """A confirmed alert on a labelled incident's sensor and a false alarm on a quiet sensor, as the alerts
    service would have published them (state changes on alerts, verdicts on feedback)."""
    incident = max(history.labels, key=lambda lab: lab.end_ms)
    sensor = incident.sensors[0]
    quiet = next(
        s for s in history.frame["sensor_id"].unique() if s not in {x for lab in history.labels for x in lab.sensors}
    )
    quiet_zone = str(history.frame.loc[history.frame["sensor_id"] == quiet, "zone"].iloc[0])
    alerts = [
        ("fp-real", sensor, incident.zone, incident.start_ms, min(incident.end_ms, now)),
        ("fp-false", quiet, quiet_zone, now - 30 * MIN, now - 20 * MIN),
    ]
    await produce_timed(
        settings,
        ALERTS.name,
        [
            (
                fp.encode(),
                {
                    "fingerprint": fp,
                    "status": "resolved",
                    "labels": {"sensor": s, "zone": z},
                    "starts_at": a,
                    "ends_at": b,
                },
                b,
            )
            for fp, s, z, a, b in alerts
        ],
    )
    await produce_timed(
        settings,
        FEEDBACK.name,
        [
            (
                b"fp-real",
                {
                    "fingerprint": "fp-real",
                    "verdict": "true_positive",
                    "ts": now,
                    "labels": {"sensor": sensor, "zone": incident.zone},
                },
                now,
            ),
            (
                b"fp-false",
                {
                    "fingerprint": "fp-false",
                    "verdict": "false_positive",
                    "ts": now,
                    "labels": {"sensor": quiet, "zone": quiet_zone},
                },
                now,
            ),
        ],
    )


@pytest.mark.timeout(900)  # three retrains on a loaded 2-core machine; about 2 minutes when it is quiet
async def test_retrain_promotes_a_better_candidate_and_rejects_a_worse_one(settings: Settings, tmp_path: Path) -> None:
    sim = Simulator(seed=3).history(BASE, f"{HOURS}h", step="60s")
    end = parse_time_ms(BASE) + HOURS * 3_600_000
    shift = (int(time.time() * 1000) - end) // DAY * DAY
    now = end + shift  # the end of the data, at most a day ago
    frame = sim.frame[sim.frame["site"].isin(SITES)].assign(ts=lambda f: f["ts"] + shift).reset_index(drop=True)
    labels = [
        replace(lab, start_ms=lab.start_ms + shift, end_ms=lab.end_ms + shift)
        for lab in sim.labels
        if lab.site in SITES
    ]
    history = History(frame, labels)
    until = str(now)
    sent = await produce_history(settings, history)
    await verdicts(settings, history, now)
    registry = ModelRegistry(settings.model_dir)

    with ServiceProcess("detector", settings, {"FLOWWATCH_DETECTOR_MODEL_POLL_S": "3600"}) as det:
        det.wait_ready(180)
        code, report, out = await asyncio.to_thread(
            retrain, settings, tmp_path, "first", "--since", f"{HOURS + 1}h", "--until", until
        )
        assert code == 0, out
        assert report["decision"] == "promoted", out
        assert report["production"] and set(report["production"].values()) == {"statistical"}
        data = report["data"]
        assert data["rows"] == sent and data["rows_train"] + data["rows_holdout"] == sent
        assert data["truth"]["records"] == {"labels": len(history.labels), "verdicts": 2, "reports": 0}
        assert data["label_sources"] == ["labels", "verdicts"]
        assert report["reasons"] and all(":" in r for r in report["reasons"])
        promoted = report["candidate"]
        assert promoted and set(promoted.values()) == {"v1"}
        for profile, version in promoted.items():
            name = f"detector-{profile}"
            assert registry.aliases(name) == {"production": version}
            mv = registry.load(name, version)  # sha256 of model, card and plots checked
            card = orjson.loads((mv.path / CARD).read_bytes())
            assert card["decision"] == "promoted" and profile in card["metrics"]["candidate"]
            assert (mv.path / "metrics.png").stat().st_size > 0
        for key in (
            "precision",
            "recall",
            "f1",
            "false_alarms_per_sensor_day",
            "incidents_detected",
            "verdict_agreement",
        ):
            assert key in report["metrics"]["candidate"]["pump"]
        events = await consume(settings, MODELS.name, len(promoted), timeout=30)
        assert {(e["name"], e["version"]) for e in events} == {(f"detector-{p}", v) for p, v in promoted.items()}

        def serving() -> dict[str, str]:
            return httpx.get(f"{det.url}/detector/models", headers=AUTH, timeout=5).json()["serving"]

        deadline = time.monotonic() + 60
        while serving() != promoted and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert serving() == promoted, det.tail()
        # the versions and their model cards, through the detector's API
        pump = httpx.get(f"{det.url}/detector/models", headers=AUTH, timeout=30).json()["lifecycle"]["pump"]
        assert pump["aliases"] == {"production": "v1"}
        newest = pump["versions"][0]
        assert (newest["version"], newest["aliases"], newest["decision"]) == ("v1", ["production"], "promoted")
        assert newest["metrics"]["candidate"] == report["metrics"]["candidate"]["pump"]

    # a candidate that has seen 20 minutes: judged on the same (last 20 minutes) window, it is worse
    code, report, out = await asyncio.to_thread(
        retrain,
        settings,
        tmp_path,
        "second",
        "--since",
        "40m",
        "--until",
        until,
        "--holdout",
        "0.5",
        "--min-rows",
        "500",
    )
    assert code == 0, out
    assert report["decision"] == "rejected", out
    assert any("worse than production" in r for r in report["reasons"]), report["reasons"]
    assert {report["production"][p] for p in report["candidate"]} == {"v1"}
    for profile, version in report["candidate"].items():
        assert version == "v2"
        assert registry.aliases(f"detector-{profile}") == {"production": "v1"}
        card = orjson.loads((registry.load(f"detector-{profile}", "v2").path / CARD).read_bytes())
        assert card["decision"] == "rejected" and card["reasons"] == report["reasons"]

    assert report["drift"]["psi"] and report["drift"]["level"] in ("stable", "moderate", "drift")

    code, report, out = await asyncio.to_thread(
        retrain, settings, tmp_path, "empty", "--since", "1h", "--until", "2020-01-01T00:00:00Z"
    )
    assert code == 2 and report["decision"] == "failed"
    assert "0 readings between" in report["reasons"][0] and "widen --since" in out
