"""The alerts worker stops cleanly: a delivery in flight finishes, then everything the worker holds is released.

On the real stack: the receiver holds the first notification for a moment and the worker is
sent SIGTERM while that request is in flight. The delivery must complete (one request, answered
200) rather than be cut off, the worker must say it released its resources (the intake, the
dispatcher, the Redis mirror, the HTTP client, Redis), and the log of the stop must hold no
traceback and no error: before the stop path existed, the HTTP client, the Redis connections
and the deliveries in flight were simply abandoned when the process exited.
"""

from __future__ import annotations

import asyncio

import orjson

from tests.helpers import produce
from tests.integration.test_alerts_harness import (
    Behaviour,
    WebhookReceiver,
    alerts_process,
    anomaly,
    anomaly_config,
    until,
)


async def test_a_stop_finishes_deliveries_in_flight_and_releases_everything(settings, tmp_path) -> None:
    receiver = await WebhookReceiver().start()
    receiver.behaviours["/hook"] = Behaviour(hold_first_s=2.0)
    config = tmp_path / "alerts.yaml"
    config.write_text(anomaly_config(receiver.url("/hook"), hook_options=", timeout: 20s"))
    worker = alerts_process(settings, config)
    worker.args = ["--loglevel", "info"]  # the stop's own lines are at INFO
    try:
        worker.start()
        await asyncio.to_thread(worker.wait_ready, 180)
        await produce(settings, "anomalies", [(b"stop-1", anomaly("stop-1", "z-stop"))])
        await until(lambda: receiver.on("/hook"), 90, "the notification to reach the receiver")
        logged = worker.log_path.stat().st_size
        # SIGTERM while the receiver still holds the request: the stop waits for the delivery.
        await asyncio.to_thread(worker.stop)
        with open(worker.log_path, "rb") as f:
            f.seek(logged)
            at_stop = f.read().decode(errors="replace")
    finally:
        await asyncio.to_thread(worker.stop)
        await receiver.stop()
    hits = receiver.on("/hook")
    assert [h.status for h in hits] == [200], hits
    assert hits[0].json["alerts"][0]["labels"]["sensor"] == "stop-1"
    assert worker.proc is not None and worker.proc.returncode == 0, worker.tail()
    assert "alerts worker closed" in at_stop, at_stop[-3000:]
    # the held delivery was given its grace (DELIVERY_GRACE_S, more than the hold), not cut off
    assert " 0 cancelled " in at_stop and "HTTP client and Redis closed" in at_stop, at_stop[-3000:]
    assert "Traceback" not in at_stop, at_stop[-3000:]
    levels = [orjson.loads(line).get("level") for line in at_stop.splitlines() if line.startswith("{")]
    assert not {"ERROR", "CRITICAL"} & set(levels), at_stop[-3000:]
    for symptom in ("Task was destroyed", "Unclosed", "never awaited", "CancelledError"):
        assert symptom not in at_stop, (symptom, at_stop[-3000:])
