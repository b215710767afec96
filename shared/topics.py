"""The one place that defines every flowwatch topic.

``python -m shared.topics create`` creates them all up front (the broker's
automatic topic creation is off) and changes nothing when run again;
``python -m shared.topics list`` prints the registry.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from shared.records import (
    Aggregate,
    Alert,
    Anomaly,
    DeadLetter,
    DriftEvent,
    Feedback,
    IncidentLabel,
    LeakReport,
    ModelEvent,
    QuarantinedReading,
    Reading,
    Record,
    Risk,
    Score,
    SensorEvent,
)
from shared.settings import Settings

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic: its name (without prefix), partitions, key, value and retention."""

    name: str
    key: str
    value: type[Record] | None
    doc: str
    partitions: int | None = None  # None: Settings.partitions
    cleanup_policy: str = "delete"
    retention_ms: int = 7 * DAY_MS

    def partitions_for(self, settings: Settings) -> int:
        return self.partitions or settings.partitions

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy}
        if "delete" in self.cleanup_policy:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


READINGS_RAW = TopicSpec(
    "readings.raw",
    "sensor_id (or none)",
    None,
    "Readings as devices send them: JSON, any shape.",
    retention_ms=3 * DAY_MS,
)
READINGS_CLEAN = TopicSpec("readings.clean", "sensor_id", Reading, "Validated readings in canonical units.")
READINGS_QUARANTINE = TopicSpec(
    "readings.quarantine",
    "sensor_id or none",
    QuarantinedReading,
    "Rejected inputs with their reasons.",
    retention_ms=14 * DAY_MS,
)
SENSOR_EVENTS = TopicSpec(
    "sensor.events", "sensor_id", SensorEvent, "A sensor went silent or came back.", retention_ms=30 * DAY_MS
)
SCORES = TopicSpec("scores", "sensor_id", Score, "Every reading's anomaly score.", retention_ms=3 * DAY_MS)
ANOMALIES = TopicSpec("anomalies", "sensor_id", Anomaly, "Flagged readings with reasons.", retention_ms=30 * DAY_MS)
AGGREGATES = TopicSpec(
    "aggregates", "site/zone/utility", Aggregate, "Tumbling-window summaries per zone.", retention_ms=30 * DAY_MS
)
RISK = TopicSpec(
    "risk", "zone", Risk, "Risk of an incident per zone, with forecast and loss.", retention_ms=30 * DAY_MS
)
ALERTS = TopicSpec("alerts", "fingerprint", Alert, "Alert state changes for other systems.", retention_ms=30 * DAY_MS)
ALERTS_DLQ = TopicSpec(
    "alerts.dlq",
    "receiver",
    None,
    "Notifications that failed after the last retry.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
DEADLETTER = TopicSpec(
    "deadletter",
    "origin key or none",
    DeadLetter,
    "Records of internal topics (silences, model events, partials) that could not be used, with the reason.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
FEEDBACK = TopicSpec(
    "feedback", "fingerprint", Feedback, "Operator verdicts for retraining.", partitions=1, retention_ms=365 * DAY_MS
)
MODELS = TopicSpec(
    "models",
    "model name",
    ModelEvent,
    "Model promotions; services hot-reload on them.",
    partitions=1,
    retention_ms=365 * DAY_MS,
)
LABELS = TopicSpec(
    "labels",
    "incident_id",
    IncidentLabel,
    "Ground truth of simulated incidents.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
DRIFT = TopicSpec(
    "drift",
    "service/group",
    DriftEvent,
    "A model's inputs, scores or forecast errors drifted from its reference (or came back); alerts: ModelDrift.",
    partitions=1,
    retention_ms=30 * DAY_MS,
)
REPORTS = TopicSpec(
    "reports",
    "zone (or none)",
    LeakReport,
    "Public leak reports (from the console); the history service keeps them.",
    retention_ms=30 * DAY_MS,
)

# Internal topics: one service's two stages, never read by others; registered here so they are created
# up front with the rest, and not by Faust on first use.
DETECTOR_ZONE_PARTIALS = TopicSpec(
    "detector.zone-partials",
    "site/zone/utility",
    None,
    "Internal to the detector: per-zone window partials of each micro-batch, merged into aggregates.",
    retention_ms=3 * DAY_MS,
)
FORECASTER_ZONE_PARTIALS = TopicSpec(
    "forecaster.zone-partials",
    "zone (watermarks: none)",
    None,
    "Internal to the forecaster: per-zone step partials and watermarks, stage 1 to stage 2.",
    retention_ms=3 * DAY_MS,
)

REGISTRY: tuple[TopicSpec, ...] = (
    READINGS_RAW,
    READINGS_CLEAN,
    READINGS_QUARANTINE,
    SENSOR_EVENTS,
    SCORES,
    ANOMALIES,
    AGGREGATES,
    RISK,
    ALERTS,
    ALERTS_DLQ,
    DEADLETTER,
    FEEDBACK,
    MODELS,
    DRIFT,
    LABELS,
    REPORTS,
    DETECTOR_ZONE_PARTIALS,
    FORECASTER_ZONE_PARTIALS,
)

BY_NAME = {spec.name: spec for spec in REGISTRY}


def faust_topic(app: Any, spec: TopicSpec, settings: Settings) -> Any:
    """The Faust topic for a spec: raw bytes keys, orjson values, never declared by Faust.

    Values decode to dicts; agents turn them into records in batches
    (``Record.from_dict``) so a malformed message is a counted error, not a crash
    inside Faust's deserialiser.
    """
    return app.topic(
        settings.topic(spec.name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions_for(settings),
        internal=False,
    )


async def create_all(settings: Settings, *, out: Any = sys.stdout) -> dict[str, str]:
    """Create every registered topic that does not exist; report the rest. Idempotent."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), client_id="flowwatch-topics")
    await admin.start()
    result: dict[str, str] = {}
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in REGISTRY if settings.topic(s.name) not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=settings.topic(s.name),
                        num_partitions=s.partitions_for(settings),
                        replication_factor=settings.replication_factor,
                        topic_configs=s.config(),
                    )
                    for s in missing
                ]
            )
        for spec in REGISTRY:
            result[settings.topic(spec.name)] = "created" if spec in missing else "exists"
        described = await admin.describe_topics([settings.topic(s.name) for s in REGISTRY if s not in missing])
        for topic in described:
            spec = BY_NAME[topic["topic"][len(settings.topic_prefix) :]]
            have = len(topic["partitions"])
            want = spec.partitions_for(settings)
            if have != want:
                result[topic["topic"]] = f"exists with {have} partitions (registry says {want}; left unchanged)"
    finally:
        await admin.close()
    for name, status in result.items():
        print(f"{name:40s} {status}", file=out)
    return result


def topics_table(settings: Settings | None = None) -> str:
    """Markdown table of the registry (the README's topic table)."""
    settings = settings or Settings.from_env(env={})
    rows = [
        "| topic | partitions | key | value | cleanup | retention | what |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in REGISTRY:
        parts = str(s.partitions) if s.partitions else "`FLOWWATCH_PARTITIONS`"
        value = s.value.__name__ if s.value else "JSON as sent"
        rows.append(
            f"| `{s.name}` | {parts} | {s.key} | {value} | {s.cleanup_policy} | {s.retention_ms // DAY_MS} d | {s.doc} |"
        )
    return "\n".join(rows)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.topics", description=__doc__)
    parser.add_argument("command", choices=["create", "list", "markdown"])
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "markdown":
        print(topics_table())
        return 0
    if args.command == "list":
        for s in REGISTRY:
            print(
                f"{settings.topic(s.name):28s} partitions={s.partitions_for(settings):<3d} {s.cleanup_policy:8s} key={s.key}"
            )
        return 0
    try:
        asyncio.run(create_all(settings))
    except Exception as exc:  # noqa: BLE001 - an operator needs the reason, not a traceback
        print(f"error: could not create topics on {settings.broker_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
