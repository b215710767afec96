"""Prometheus metrics of the ingest service (the common ones are in shared.metrics).

Every input ends in exactly one of: accepted, quarantined, duplicate (or forwarded to
the partition that owns its sensor, where it ends in one of the three). So
``inputs == accepted + quarantined + duplicates + forwarded`` over any period, and
an operator can check nothing vanished.
"""

from __future__ import annotations

from shared.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram

SERVICE = "ingest"

INPUTS = Counter(
    "flowwatch_ingest_inputs_total",
    "Inputs decided: messages of readings.raw, and mapped readings of Kafka source topics that skip it",
    ["source"],
)
ACCEPTED = Counter("flowwatch_ingest_accepted_total", "Readings written to readings.clean", ["utility"])
QUARANTINED = Counter("flowwatch_ingest_quarantined_total", "Inputs written to readings.quarantine")
QUARANTINE_REASONS = Counter(
    "flowwatch_ingest_quarantine_reasons_total",
    "Quarantined inputs by reason code (an input may have several)",
    ["reason"],
)
DUPLICATES = Counter("flowwatch_ingest_duplicates_total", "Readings dropped as duplicates (same sensor_id and ts)")
FORWARDED = Counter(
    "flowwatch_ingest_forwarded_total", "Valid readings re-keyed by sensor_id into the partition that owns the sensor"
)
UNKNOWN_METRICS = Counter(
    "flowwatch_ingest_unknown_metrics_total", "Values of metrics without a range (accepted as sent)"
)
MAPPED_MESSAGES = Counter(
    "flowwatch_ingest_mapped_messages_total", "Messages read through a payload mapping, by mapping", ["mapping"]
)
MAPPED_READINGS = Counter(
    "flowwatch_ingest_mapped_readings_total", "Readings made by a payload mapping, by mapping", ["mapping"]
)
SOURCE_DIRECT = Counter(
    "flowwatch_ingest_source_direct_total",
    "Mapped readings of Kafka source topics handed to the pipeline without readings.raw (counted in inputs too)",
)
SENSOR_EVENTS = Counter("flowwatch_ingest_sensor_events_total", "Sensor silent/back events published", ["kind"])
HTTP_REQUESTS = Counter("flowwatch_ingest_http_requests_total", "POST /v1/readings requests by status", ["status"])
MQTT_MESSAGES = Counter("flowwatch_ingest_mqtt_messages_total", "MQTT messages received")
MQTT_CONNECTED = Gauge("flowwatch_ingest_mqtt_connected", "1 while subscribed to the MQTT broker")
MQTT_RECONNECTS = Counter("flowwatch_ingest_mqtt_reconnects_total", "MQTT connection attempts that failed or dropped")
LATENCY = Histogram(
    "flowwatch_ingest_latency_seconds",
    "Arrival (readings.raw timestamp) to readings.clean acknowledged, per reading",
    buckets=LATENCY_BUCKETS,
)
SENSORS = Gauge("flowwatch_ingest_sensors", "Sensors with state in this worker's partitions (last silence check)")
EVICTED = Counter(
    "flowwatch_ingest_sensors_evicted_total",
    "Sensors forgotten after FLOWWATCH_INGEST_SENSOR_TTL_S without a reading (state deleted)",
)
SILENT = Gauge("flowwatch_ingest_silent_sensors", "Sensors currently announced silent by this worker")
