"""A worker SIGKILLed during delivery and restarted: no duplicate and no lost notification.

Two crash windows, on the real stack:

1. right after the receiver answered 200 and the delivery was marked done, before
   its result reached the outbox table (the worker SIGKILLs itself at exactly that
   point through the ``FLOWWATCH_ALERTS_FAILPOINT=after_done`` failpoint): after the
   restart the notification must not be sent again;
2. while the request is in flight (the receiver holds it): nobody can know whether
   it arrived, so it is sent again after the dead worker's lease expires, with the
   same Idempotency-Key and the same body — one notification, delivered.
"""

from __future__ import annotations

import asyncio

from tests.helpers import produce
from tests.integration.test_alerts_harness import (
    Behaviour,
    WebhookReceiver,
    alerts_process,
    anomaly,
    anomaly_config,
    until,
)


def config_text(hook: str, slow: str, hook_options: str = "") -> str:
    """Anomalies of zone k2 go to a slow receiver (20 s timeout), the rest to ``hook``."""
    return anomaly_config(
        hook,
        group_wait="500ms",
        hook_options=hook_options,
        routes="  routes:\n    - receiver: slow\n      matchers: ['zone=\"k2\"']\n",
        receivers=f'  - name: slow\n    webhook_configs: [{{url: "{slow}", timeout: 20s}}]\n',
    )


async def test_worker_killed_during_delivery_no_duplicate_no_loss(settings, tmp_path):
    receiver = await WebhookReceiver().start()
    config = tmp_path / "alerts.yaml"
    config.write_text(config_text(receiver.url("/hook"), receiver.url("/slow")))
    loop = asyncio.get_running_loop()
    procs = []

    def start(**env):
        p = alerts_process(settings, config, **env)
        procs.append(p)
        p.start()
        return p

    try:
        # --- window 1: killed after the receiver said 200, before the outbox knows.
        w1 = start(FLOWWATCH_ALERTS_FAILPOINT="after_done")
        await asyncio.to_thread(w1.wait_ready, 90)
        await produce(settings, "anomalies", [(b"a1", anomaly("a1", "k1")), (b"a2", anomaly("a2", "k1"))])
        await until(lambda: receiver.on("/hook"), 40, "first delivery")
        await until(lambda: w1.proc.poll() is not None, 10, "worker 1 killed")
        assert w1.proc.returncode == -9

        w2 = start()
        await asyncio.to_thread(w2.wait_ready, 90)
        await asyncio.sleep(5)  # several ticks and group intervals on the recovered state
        k1 = receiver.on("/hook")
        assert len(k1) == 1, [h.headers["Idempotency-Key"] for h in k1]
        assert sorted(a["labels"]["sensor"] for a in k1[0].json["alerts"]) == ["a1", "a2"]

        # --- window 2: killed while the request is in flight.
        receiver.behaviours["/slow"] = Behaviour(hold_first_s=8, on_hit=lambda hit: loop.call_later(0.3, w2.kill))
        await produce(settings, "anomalies", [(b"b1", anomaly("b1", "k2"))])
        await until(lambda: receiver.on("/slow"), 40, "in-flight delivery")
        await until(lambda: w2.proc.poll() is not None, 10, "worker 2 killed")

        w3 = start()
        await asyncio.to_thread(w3.wait_ready, 90)
        await until(lambda: len(receiver.on("/slow")) >= 2, 40, "redelivery after the crash")
        await asyncio.sleep(5)
        slow = receiver.on("/slow")
        assert len(slow) == 2  # the ambiguous one, then exactly one redelivery
        assert len({h.headers["Idempotency-Key"] for h in slow}) == 1
        assert slow[0].body == slow[1].body
        assert [a["labels"]["sensor"] for a in slow[1].json["alerts"]] == ["b1"]
        assert len(receiver.on("/hook")) == 1  # and still nothing repeated for k1
    finally:
        for p in procs:
            p.stop()
        await receiver.stop()


async def test_rebalance_during_delivery_sends_each_notification_once(settings, tmp_path):
    """A second worker joins while the first is mid-delivery: partitions move, nothing is sent twice or lost."""
    receiver = await WebhookReceiver().start()
    # Every delivery takes 20 s: the second worker joins and takes partitions while they are in flight.
    receiver.behaviours["/hook"] = Behaviour(hold_s=20)
    config = tmp_path / "alerts.yaml"
    config.write_text(config_text(receiver.url("/hook"), receiver.url("/slow"), hook_options=", timeout: 40s"))
    a = alerts_process(settings, config)
    b = alerts_process(settings.replace(data_dir=tmp_path / "worker-b"), config)  # its own rocksdb
    zones = [f"r{i}" for i in range(6)]
    try:
        a.start()
        await asyncio.to_thread(a.wait_ready, 90)
        await produce(settings, "anomalies", [(z.encode(), anomaly(f"{z}-s", z)) for z in zones])
        await until(lambda: receiver.on("/hook"), 40, "first delivery in flight")
        b.start()
        await asyncio.to_thread(b.wait_ready, 90)
        assert len(receiver.on("/hook")) == len(zones)  # all were in flight when b became ready
        await until(
            lambda: {h.json["groupLabels"]["zone"] for h in receiver.on("/hook")} >= set(zones), 60, "all zones"
        )
        await asyncio.sleep(6)  # leases, outbox rescans and group intervals on both workers
        keys = [h.headers["Idempotency-Key"] for h in receiver.on("/hook")]
        assert len(keys) == len(set(keys)) == len(zones), keys
    finally:
        a.stop()
        b.stop()
        await receiver.stop()
