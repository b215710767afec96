"""Simulator -> readings.raw -> ingest -> readings.clean -> detector: the injected incidents become anomalies."""

from __future__ import annotations

import numpy as np

from services.simulator import Network, SimConfig, Simulator
from tests.helpers import ServiceProcess, consume, produce
from tests.integration.test_detector_stream import FAST

START = "2024-03-04T06:00:00Z"
TOLERANCE_MS = 120_000  # an anomaly up to two minutes after an incident still belongs to it
NETWORK = {
    "sites": [
        {
            "id": "t",
            "zones": [
                {"id": "t-plant", "utility": "water", "sensors": [{"asset": "pump", "count": 3}]},
                {
                    "id": "t-dma1",
                    "utility": "water",
                    "sensors": [{"asset": "pipe", "count": 4, "metrics": ["pressure", "flow"]}],
                },
            ],
        }
    ]
}


async def test_simulated_incidents_through_ingest_and_detector(settings):
    sim = Simulator(
        Network.from_dict(NETWORK, seed=3),
        SimConfig(
            anomaly_fraction=0.05,
            incident_scale=0.05,
            incident_weights={"pump_cavitation": 1, "burst": 1, "leak": 1, "spike": 1},
        ),
        seed=2,
    )
    payloads = list(sim.payloads(START, duration="3h"))
    labels = [lab for lab in sim.incidents(START, duration="3h") if lab.start_ms - sim_start(payloads) > 20 * 60_000]
    assert labels, "the plan has incidents after the detector's warm-up"

    meter = counter_meter(sim_start(payloads))
    ingest_env = {"FLOWWATCH_INGEST_MAX_AGE_S": "0", "FLOWWATCH_INGEST_MQTT_ENABLED": "false"}
    with ServiceProcess("ingest", settings, ingest_env), ServiceProcess("detector", settings, FAST):
        await produce(settings, "readings.raw", payloads + meter)
        scores = await consume(settings, "scores", len(payloads) + len(meter), timeout=150)
        anomalies = await consume(settings, "anomalies", 100_000, timeout=5)
    assert len(scores) >= 0.99 * len(payloads)  # ingest may quarantine a few; the rest is scored
    # The meter's counter went back to 0 (ingest flags it in extra.counter_resets): scored, never an anomaly.
    assert len([s for s in scores if s["sensor_id"] == METER]) == len(meter)
    assert [a for a in anomalies if a["sensor_id"] == METER] == []

    times: dict[str, np.ndarray] = {}
    for a in anomalies:
        times.setdefault(a["sensor_id"], []).append(a["ts"])
    times = {k: np.array(v) for k, v in times.items()}

    def hit(sensor: str, start: int, end: int) -> bool:
        t = times.get(sensor)
        return t is not None and bool(((t >= start) & (t < end + TOLERANCE_MS)).any())

    detected = [lab for lab in labels if any(hit(s, lab.start_ms, lab.end_ms) for s in lab.sensors)]
    early = sim_start(payloads) + 20 * 60_000
    later = [a for a in anomalies if a["ts"] >= early]
    explained = [
        a
        for a in later
        if any(
            a["sensor_id"] in lab.sensors and lab.start_ms <= a["ts"] < lab.end_ms + TOLERANCE_MS
            for lab in sim.incidents(START, duration="3h")
        )
    ]
    recall = len(detected) / len(labels)
    precision = len(explained) / max(len(later), 1)
    print(
        f"simulator through ingest: {len(detected)}/{len(labels)} incidents detected (recall {recall:.2f}), "
        f"precision of anomalies {precision:.2f} ({len(explained)}/{len(later)})"
    )
    assert recall >= 0.5
    assert precision >= 0.5
    assert all(a["reason"] for a in anomalies)


METER = "t-meter-counter"


def counter_meter(start_ms: int, n: int = 150, reset_at: int = 100) -> list[tuple[bytes, dict]]:
    """A meter sending its flow and the counter integrating it, once a minute; at ``reset_at`` the meter is replaced."""
    rng = np.random.default_rng(5)
    total, out = 2.5e6, []
    for i in range(n):
        flow = 12 + rng.normal(0, 0.4)
        total = (0.0 if i == reset_at else total) + flow / 60
        values = {"flow_m3h": round(flow, 3), "total_flow_m3": round(total, 3)}
        body = {"sensor_id": METER, "ts": start_ms + i * 60_000, "site": "t", "zone": "t-dma1", "utility": "water",
                "asset": "meter-other", "values": values}  # fmt: skip
        out.append((METER.encode(), body))
    return out


def sim_start(payloads: list[tuple[bytes, bytes]]) -> int:
    import orjson

    return min(orjson.loads(v)["ts"] for _, v in payloads[:50] if isinstance(orjson.loads(v).get("ts"), int))
