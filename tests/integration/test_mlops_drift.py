"""Drift in the running detector on the real stack: a simulated network that changes regime (the simulator's
regime shift: every zone's demand doubles) goes through readings.clean into a detector worker; the detector's
drift monitor stays stable while the network is as it was and turns drifted after the shift — the
``flowwatch_model_drift_psi`` gauges above the threshold, a ``drifted`` event on ``drift``, and the alerts
service (its shipped rules) fires ``ModelDrift``.

The readings carry fixed simulated times (a Monday 00:00 UTC on, so every day of the window is a weekday and
every run judges the same data) with the broker's current time as the record time. The detector runs with its
default drift window and warm-up reference (a day each): the first simulated day is the reference, the second
fills the window, the shift comes at 48 h and the data runs to 60 h.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from services.forecaster.offline.history import History
from services.simulator.generator import SimConfig
from services.simulator.simulator import Simulator
from shared.mlops.drift import DRIFT, MODERATE
from shared.mlops.monitor import NO_CARD, group_level
from shared.settings import Settings
from shared.timeutil import parse_time_ms
from shared.topics import ALERTS, READINGS_CLEAN
from shared.topics import DRIFT as DRIFT_TOPIC
from tests.helpers import AUTH, ServiceProcess, collect, consume, produce

BASE = "2026-11-30T00:00:00Z"  # a Monday
HOUR = 3_600_000
SHIFT = parse_time_ms(BASE) + 48 * HOUR
HOURS = 60
SITE = "oldtown"  # 69 sensors every 5 minutes: 50,000 readings


def drift_view(det: ServiceProcess) -> dict[str, Any]:
    return httpx.get(f"{det.url}/detector/drift", headers=AUTH, timeout=10).json()


def gauges(det: ServiceProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one detector gauge: (labels, value)."""
    out = []
    for line in httpx.get(f"{det.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            out.append((dict((k, v.strip('"')) for k, v in (p.split("=", 1) for p in labels.split(","))), float(value)))
    return out


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def send(settings: Settings, rows: list[dict[str, Any]]) -> None:
    await produce(settings, READINGS_CLEAN.name, [(r["sensor_id"].encode(), r) for r in rows])


@pytest.mark.timeout(600)  # about 90 s on a quiet machine
async def test_drift_is_raised_after_a_regime_shift_and_not_before(settings: Settings) -> None:
    sim = Simulator(seed=3, config=SimConfig(regime_shift_ms=SHIFT, regime_factor=2.0))
    hist = sim.history(BASE, f"{HOURS}h", step="300s")
    frame = hist.frame[hist.frame["site"] == SITE].reset_index(drop=True)
    rows = sorted(History(frame, []).readings(), key=lambda r: r["ts"])
    before = [r for r in rows if r["ts"] < SHIFT]
    after = [r for r in rows if r["ts"] >= SHIFT]
    env = {
        "FLOWWATCH_DETECTOR_DRIFT_CHECK_S": "1",
        "FLOWWATCH_DETECTOR_STATE_TTL_S": "0",  # the simulated times are fixed: never swept as old
        "FLOWWATCH_DETECTOR_EMIT_SCORES": "false",
        "FLOWWATCH_DETECTOR_CACHE_ENABLED": "false",
    }
    with ServiceProcess("detector", settings, env) as det, ServiceProcess("alerts", settings) as _alerts:
        await send(settings, before)

        def settled() -> dict[str, Any] | None:
            stats = httpx.get(f"{det.url}/detector/stats", headers=AUTH, timeout=10).json()
            if stats["readings"] + stats["quarantined"] < len(before):
                return None
            view = drift_view(det)["profiles"]
            # a verdict for every profile the site has, from a check after the last reading was scored
            done = view and all(p["status"] != "unknown" for p in view.values())
            return view if done and max(p["last_ts"] for p in view.values()) >= before[-1]["ts"] else None

        view = await until(settled, 180, "the detector to score the first 48 h and judge them")
        print("before the shift:", {p: (v["status"], v["psi"]) for p, v in view.items()})
        assert set(view) >= {"pump", "pipe", "meter", "gas", "quality", "reservoir"}, view
        assert {p: v["status"] for p, v in view.items()} == dict.fromkeys(view, "stable"), view
        for v in view.values():  # no model card: every input judged has its first day as reference; the score none
            assert v["psi"] and all(v["references"][c] == "warm-up" for c in v["psi"]), v
            assert v["references"]["score"] == NO_CARD, v
        assert [v for _, v in gauges(det, "flowwatch_model_drifted")] == [0.0] * len(view)
        assert await consume(settings, DRIFT_TOPIC.name, 1, timeout=3) == []

        await send(settings, after)

        def drifted() -> dict[str, Any] | None:
            stats = httpx.get(f"{det.url}/detector/stats", headers=AUTH, timeout=10).json()
            if stats["readings"] + stats["quarantined"] < len(rows):
                return None
            view = drift_view(det)["profiles"]
            seen_all = max(v["last_ts"] for v in view.values()) >= after[-1]["ts"]
            return view if seen_all and any(v["status"] == "drifted" for v in view.values()) else None

        view = await until(drifted, 180, "the detector to score the 12 h after the shift and find drift")
        print("after the shift:", {p: (v["status"], v["psi"]) for p, v in view.items()})
        gone = {p for p, v in view.items() if v["status"] == "drifted"}
        psi = gauges(det, "flowwatch_model_drift_psi")
        for profile in gone:  # at least half of the profile's columns above the threshold: the group's level
            columns = [v for labels, v in psi if labels["group"] == profile and v == v]
            assert columns and group_level(columns) >= DRIFT, (profile, psi)
        assert {labels["group"] for labels, v in gauges(det, "flowwatch_model_drifted") if v == 1.0} == gone

        events = await collect(
            settings, DRIFT_TOPIC.name, lambda got: {e["group"] for e in got if e["status"] == "drifted"} >= gone, 60
        )
        assert events and all(e["status"] == "drifted" for e in events), events
        assert {e["group"] for e in events} >= gone
        gone = {e["group"] for e in events}  # a check after the view may have found one more
        for e in events:  # judged on data after the shift, never before it
            assert e["service"] == "detector" and e["kind"] == "psi" and e["ts"] >= SHIFT
            assert e["value"] >= DRIFT and e["threshold"] == DRIFT and e["version"] == "statistical"
            assert e["model"] == f"detector-{e['group']}" and e["window_s"] == 86400
        assert MODERATE < DRIFT

        def model_drift(got: list[dict[str, Any]]) -> bool:
            return any(a.get("labels", {}).get("alertname") == "ModelDrift" for a in got)

        alerts = await collect(settings, ALERTS.name, model_drift, 90)
        fired = [a for a in alerts if a.get("labels", {}).get("alertname") == "ModelDrift"]
        assert fired, alerts[-5:]
        # Every alert follows a drift event of its group. Checks go on meanwhile (a profile near the threshold,
        # the meter's, may drift a little later), so the events are read again, up to the alerts seen.
        fired_groups = {a["labels"]["group"] for a in fired}
        events = await collect(
            settings,
            DRIFT_TOPIC.name,
            lambda got: {e["group"] for e in got if e["status"] == "drifted"} >= fired_groups,
            30,
        )
        assert fired_groups <= {e["group"] for e in events if e["status"] == "drifted"}, (fired_groups, events)
        for e in events:  # the later ones too: judged on data after the shift, never before it
            assert e["status"] != "drifted" or (e["ts"] >= SHIFT and e["value"] >= DRIFT), e
        assert all(a["labels"]["service"] == "detector" and a["labels"]["kind"] == "model_drift" for a in fired)
        assert any(a.get("status") == "firing" for a in fired)
        final = drift_view(det)["profiles"]
        print(
            "in the end:",
            {p: (v["status"], group_level([x for x in v["psi"].values() if x is not None])) for p, v in final.items()},
        )
