"""The anomalies pump of an upgraded worker starts where the app's consumer group left the topic.

Before the pump, a Faust agent in the app's own consumer group read anomalies and committed its
offsets there. The pump keeps its own checkpoints; without one it would read the topic from the
beginning and notify every anomaly of its retention again. It takes the group's offsets instead.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.topics import ANOMALIES
from tests.helpers import produce
from tests.integration.test_alerts_harness import WebhookReceiver, alerts_process, anomaly, until

CONFIG = """
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {{site: "{{site}}", zone: "{{zone}}", sensor: "{{sensor_id}}"}}
    resolve_after: 10m
route:
  receiver: hook
  group_by: [site, zone, alertname]
  group_wait: 0s
receivers:
  - name: hook
    webhook_configs: [{{url: "{hook}"}}]
"""


async def test_an_upgraded_worker_does_not_replay_what_its_group_already_read(settings, tmp_path):
    receiver = await WebhookReceiver().start()
    config = tmp_path / "alerts.yaml"
    config.write_text(CONFIG.format(hook=receiver.url("/hook")))
    topic = settings.topic("anomalies")
    await produce(settings, "anomalies", [(f"old{i}".encode(), anomaly(f"old{i}", "read-before")) for i in range(4)])
    # What the older worker's agent committed in the app's group: everything up to the end.
    group = f"{settings.topic_prefix}flowwatch-alerts"
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(ANOMALIES.partitions_for(settings))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        assert sum(ends.values()) == 4
        await consumer.commit(ends)
    finally:
        await consumer.stop()
    worker = alerts_process(settings, config)
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await produce(settings, "anomalies", [(b"new", anomaly("new", "after-upgrade"))])
        await until(lambda: receiver.on("/hook"), 40, "the new anomaly's notification")
        await asyncio.sleep(3)  # ticks enough for anything replayed to be told too
        zones = [h.json["groupLabels"]["zone"] for h in receiver.on("/hook")]
        assert zones == ["after-upgrade"], zones
    finally:
        worker.stop()
        await receiver.stop()
