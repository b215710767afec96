"""Settings of the ingest service, read from ``FLOWWATCH_INGEST_*`` environment variables.

The common settings (broker, Redis, topics, web port, ...) are ``shared.settings.Settings``;
these are the knobs that only ingest has. ``python -m services.ingest settings`` prints
the table for the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_INGEST_"
DEFAULT_RANGES_FILE = Path(__file__).with_name("ranges.yaml")
DEFAULT_MAPPINGS_FILE = Path(__file__).with_name("mappings.yaml")
UNKNOWN_METRIC_POLICIES = ("accept", "strict")


@dataclass(frozen=True)
class IngestSettings(ServiceSettings):
    """What ingest accepts, how it batches, and how it watches sensors."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    ranges_file: str = _doc(
        "",
        "YAML file overriding metrics (canonical unit, physical range), metric aliases or expected metrics per "
        "asset; empty: the built-in services/ingest/ranges.yaml only.",
    )
    unknown_metrics: str = _doc(
        "accept",
        "Metrics without an entry in the ranges (nor a unit-suffixed name that resolves to one): `accept` keeps "
        "them as sent, flagged in `extra.unknown_metrics` and counted per sensor; `strict` quarantines the reading "
        "(`unknown_metric`).",
    )
    mappings_file: str = _doc(
        "",
        "YAML file of named payload mappings (other devices' formats) added to, or replacing by name, the built-in "
        "services/ingest/mappings.yaml; empty: the built-in ones only.",
    )
    max_future_s: float = _doc(
        300.0, "A reading stamped more than this many seconds after its arrival is quarantined (`future_ts`)."
    )
    max_age_s: float = _doc(
        7 * 24 * 3600.0,
        "A reading older than this (seconds) when it arrives is quarantined (`too_old`); 0 disables the check (replays).",
    )
    lateness_s: float = _doc(
        3600.0,
        "Out-of-order readings are accepted when at most this many seconds older than the newest reading of their "
        "sensor; older ones are quarantined (`late`).",
    )
    dedup_memory: int = _doc(
        64,
        "Newest timestamps remembered per sensor to spot duplicates that arrive out of order (a reading newer than "
        "the sensor's newest is never a duplicate). An out-of-order reading older than all of them but within the "
        "lateness cannot be checked; it is accepted and counted as `unverified`.",
    )
    quality_threshold: float = _doc(
        0.5, "Readings whose quality score (0..1) is below this are quarantined (`low_quality`)."
    )
    stale_after_s: float = _doc(
        300.0, "Age on arrival (seconds) from which a reading's quality starts to drop for staleness."
    )
    max_metrics: int = _doc(64, "Most metrics one reading may carry; more is quarantined (`too_many_metrics`).")
    max_line_bytes: int = _doc(
        64 * 1024,
        "Largest single reading as received (one Kafka message, one array item, one NDJSON line, bytes); larger "
        "ones are quarantined (`too_large`) with their text cut to fit.",
    )
    max_json_depth: int = _doc(
        32,
        "Deepest nesting of arrays/objects in one reading (the reading object is level 1); deeper ones are "
        "quarantined (`too_deep`). At most 250: orjson reads 1024 levels but writes only 254.",
    )
    max_field_chars: int = _doc(200, "Longest sensor_id, site, zone or asset (characters); longer is `invalid_field`.")
    max_extra_bytes: int = _doc(
        16 * 1024,
        "Largest `extra` of a clean reading (the unknown fields and the `extra` object, as JSON bytes); larger is "
        "quarantined (`extra_too_large`).",
    )
    sensor_ttl_s: float = _doc(
        7 * 24 * 3600.0,
        "A sensor not heard from for this long (seconds) is forgotten: its state is deleted from the `sensors` and "
        "`silence` tables and from memory (it starts afresh if it reports again). 0 keeps sensors forever.",
    )
    new_sensors_per_min: int = _doc(
        20_000,
        "Most sensor ids never seen before that one door (http, mqtt or kafka) may introduce per minute and worker; "
        "readings of further new sensors are quarantined (`too_many_new_sensors`). 0: no limit.",
    )
    sources_direct: bool = _doc(
        True,
        "Mapped readings of Kafka source topics whose sensor's readings.raw partition this worker reads skip "
        "readings.raw: the door hands them to the pipeline and commits the source offsets once the state they "
        "changed is checkpointed (the source topic is then their record of arrival). false: every mapped reading "
        "is written to readings.raw first, as the HTTP and MQTT doors do.",
    )
    batch_size: int = _doc(5000, "Most readings processed in one micro-batch (one fetch of readings.raw).")
    session_timeout_s: float = _doc(
        60.0,
        "Kafka group session timeout: after a crash, how long the worker's partitions wait before they move to "
        "another worker or to the restarted one. Lower fails over faster; higher rides out long pauses.",
    )
    checkpoint_s: float = _doc(
        5.0,
        "How often (seconds) sensor states and read offsets are checkpointed to the tables. After a crash, readings "
        "since the last checkpoint are processed (and written to readings.clean) again; none is lost. Each "
        "checkpoint writes every sensor changed since the last one: shorter costs CPU on every reading's path "
        "(at 1 s, a tenth of the worker's CPU at 5,000 readings/s of 1,000 sensors).",
    )
    batches_in_flight: int = _doc(
        3, "Batches whose outputs may await the broker's acknowledgement while the next ones are decoded."
    )
    batch_within_s: float = _doc(
        0.02, "Longest wait (seconds) to fill a micro-batch; bounds the latency added at low rates."
    )
    silence_factor: float = _doc(
        5.0, "A sensor is silent when quiet for longer than this many times its learned reporting interval."
    )
    silence_min_s: float = _doc(30.0, "A sensor is never declared silent after less than this many seconds of quiet.")
    silence_check_s: float = _doc(5.0, "How often (seconds) the silence timer runs.")
    cache_flush_s: float = _doc(
        1.0, "How often (seconds) the latest reading and stats per sensor are written to Redis."
    )
    http_max_body_bytes: int = _doc(5 * 1024 * 1024, "Largest accepted HTTP body (bytes); larger requests get 413.")
    http_max_items: int = _doc(10_000, "Most readings in one HTTP request; more gets 413.")
    http_max_concurrent: int = _doc(
        16, "Most POST /v1/readings requests handled at once per worker; more get 429 with Retry-After."
    )
    http_wait_s: float = _doc(
        10.0,
        "How long POST /v1/readings waits for the verdict (clean, quarantined, duplicate) of each reading before "
        "answering; readings still in flight are reported as `pending` (they are in readings.raw, not lost).",
    )
    mqtt_enabled: bool = _doc(True, "Subscribe to MQTT (FLOWWATCH_MQTT_URL).")
    mqtt_topic: str = _doc("flowwatch/readings/#", "MQTT topic filter to subscribe to.")
    mqtt_qos: int = _doc(1, "MQTT subscription QoS.")
    mqtt_client_id: str = _doc(
        "",
        "MQTT client id; empty: `<topic prefix>flowwatch-ingest`, the same after every restart so the broker's "
        "persistent session finds it again. Two workers must not share an id (the broker drops the older "
        "connection): give each its own (e.g. the pod name) and subscribe to a shared subscription (`$share/...`).",
    )
    mqtt_persistent: bool = _doc(
        True,
        "Ask the broker for a persistent session (clean_session false): the subscription and the unacknowledged "
        "QoS 1 messages, including those published while ingest is down, wait for the client id to come back.",
    )
    mqtt_ca_file: str = _doc("", "CA bundle to verify the broker with `mqtts://` (empty: the system's CAs).")
    mqtt_cert_file: str = _doc("", "Client certificate for `mqtts://` (PEM), when the broker asks for one.")
    mqtt_key_file: str = _doc("", "Private key of the client certificate (PEM).")
    mqtt_backoff_max_s: float = _doc(30.0, "Longest wait between MQTT reconnect attempts (backoff doubles from 0.5 s).")
    token: str = _doc(
        "",
        "Device token accepted on POST /v1/readings (`Authorization: Bearer <token>` or `X-Flowwatch-Token`), "
        "besides API tokens of role operator or above. With neither configured the endpoint refuses every request "
        "(closed by default). Never logged.",
        env="FLOWWATCH_INGEST_TOKEN",
        secret=True,
    )
    token_file: str = _doc(
        "",
        "File holding the ingest token (wins over FLOWWATCH_INGEST_TOKEN); for mounted secrets.",
        env="FLOWWATCH_INGEST_TOKEN_FILE",
    )

    def resolved_token(self) -> str:
        """The configured token ('' when none); the file wins over the variable."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token.strip()
