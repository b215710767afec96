"""The pumps of an upgraded worker start where the app's consumer group left their topics.

Before the pumps, Faust agents in the app's own consumer group read anomalies (stage 1) and the
internal events topic (stage 2) and committed their offsets there. A pump keeps its own checkpoints;
without one it would read its topic from the beginning and notify every anomaly, and apply every rule
hit, of the topic's retention again. It takes the group's offsets instead.
"""

from __future__ import annotations

import asyncio

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.alerts.config import parse_config
from services.alerts.labels import shard_partition
from shared.codec import dumps
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
    # Rule hits the older worker's evaluate stage had sent on and its state agent had applied: one hit of a
    # zone nobody was told about, on the events topic (created as the worker declares it).
    group = f"{settings.topic_prefix}flowwatch-alerts"
    events = f"{group}-events"
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(events, settings.partitions, 1)])
    finally:
        await admin.close()
    rules = parse_config(yaml.safe_load(CONFIG.format(hook="http://127.0.0.1:1/hook")))
    hit = rules.rules[0].evaluate(anomaly("old-event", "applied-before"))
    assert hit is not None
    partition = shard_partition(hit.labels, rules.shard_by, settings.partitions)
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await producer.start()
    try:
        await producer.send_and_wait(events, dumps({"type": "obs", "obs": [hit.to_dict()]}), partition=partition)
    finally:
        await producer.stop()
    # What the older worker's agents committed in the app's group: everything up to the end of both topics.
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(ANOMALIES.partitions_for(settings))]
        tps += [TopicPartition(events, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        assert sum(ends.values()) == 5
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
