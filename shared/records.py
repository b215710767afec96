"""Typed, versioned records that travel on flowwatch topics.

Records are plain dataclasses (no Faust metaclass) because orjson serialises
dataclasses natively and building one from a dict is several times cheaper than
``faust.Record`` on the hot path. They keep their fields in a ``__dict__`` (only the
base is slotted): orjson writes that dict in one pass, while a slotted record it
reads field by field, ~0.85 µs more for every reading or score written (2.33 against
1.48 µs a ``Reading``; docs/performance.md). Every record carries
``v``, its schema version; :meth:`Record.from_dict` ignores fields it does not know,
so an older consumer keeps reading a newer producer's messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")

UTILITIES = ("water", "energy", "gas")


@dataclass(slots=True)
class Record:
    """Base of every record: dict round-trip that tolerates unknown fields."""

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = frozenset(f.name for f in dataclasses.fields(cls))
            cls._field_names = names  # type: ignore[attr-defined]
        if not isinstance(data, dict):
            # valid JSON that is not an object (a list, a number, null) is a bad record, not a crash
            raise TypeError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Reading(Record):
    """A validated, normalised sensor reading (readings.clean), keyed by sensor_id.

    ``ts`` is UTC epoch milliseconds; ``values`` are in canonical units (see
    services.ingest.units); ``units`` records the canonical unit per metric.
    """

    sensor_id: str
    ts: int
    site: str
    zone: str
    utility: str
    asset: str
    values: dict[str, float]
    units: dict[str, str] = field(default_factory=dict)
    quality: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    received_ms: int = 0
    source: str = "kafka"
    v: int = 1


@dataclass
class QuarantinedReading(Record):
    """An input that failed validation, with the payload exactly as received."""

    payload: Any
    source: str
    reasons: list[str]
    received_ms: int
    sensor_id: str | None = None
    truncated: bool = False  # the payload is the input as text, cut to fit (shared.deadletter)
    payload_bytes: int = 0  # size of the input as received
    v: int = 1


@dataclass
class DeadLetter(Record):
    """A record of an internal topic (silences, model events, partials) that could not be used, with why."""

    service: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: Any
    reasons: list[str]
    received_ms: int
    truncated: bool = False
    payload_bytes: int = 0
    v: int = 1


@dataclass
class SensorEvent(Record):
    """A sensor went silent or came back (sensor.events), keyed by sensor_id."""

    sensor_id: str
    kind: str  # "silent" | "back"
    ts: int
    site: str = ""
    zone: str = ""
    utility: str = ""
    asset: str = ""
    last_seen_ms: int = 0
    expected_interval_ms: int = 0
    v: int = 1


@dataclass
class Score(Record):
    """The anomaly score of one reading (scores), keyed by sensor_id."""

    sensor_id: str
    ts: int
    site: str
    zone: str
    utility: str
    asset: str
    score: float
    threshold: float
    is_anomaly: bool
    model: str
    model_version: str
    contributions: dict[str, float] = field(default_factory=dict)
    v: int = 1


@dataclass
class Anomaly(Record):
    """A flagged reading with the metrics behind it and a sentence a person can read."""

    sensor_id: str
    ts: int
    site: str
    zone: str
    utility: str
    asset: str
    score: float
    threshold: float
    model_version: str
    reason: str
    top_metrics: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    severity: str = "warning"
    v: int = 1


@dataclass
class Aggregate(Record):
    """Tumbling-window summary per site, zone and utility (aggregates)."""

    window_start: int
    window_end: int
    site: str
    zone: str
    utility: str
    count: int
    anomaly_count: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    v: int = 1


@dataclass
class Risk(Record):
    """Risk of an incident in a zone over the coming horizon (risk), keyed by zone."""

    site: str
    zone: str
    utility: str
    ts: int
    horizon_s: int
    probability: float
    incident_type: str
    class_probs: dict[str, float] = field(default_factory=dict)
    forecast: dict[str, dict[str, float]] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""
    top_features: list[dict[str, Any]] = field(default_factory=list)
    v: int = 1


@dataclass
class Alert(Record):
    """An alert's state change (alerts), keyed by fingerprint."""

    fingerprint: str
    status: str  # "firing" | "resolved"
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: int = 0
    ends_at: int = 0
    updated_at: int = 0
    generator: str = ""
    v: int = 1


@dataclass
class ModelEvent(Record):
    """A model version was promoted to an alias (models)."""

    name: str
    version: str
    alias: str
    action: str
    ts: int
    v: int = 1


@dataclass
class DriftEvent(Record):
    """A model's inputs, scores or errors drifted from its reference, or came back (drift), keyed by
    ``service/group``. ``kind``: ``psi`` (``value`` the largest PSI of the group's ``columns``) or ``adwin``
    (``value`` the forecast error's mean after the change, ``before`` before it)."""

    service: str
    group: str  # a detector profile, a forecaster zone
    kind: str  # "psi" | "adwin"
    status: str  # "drifted" | "stable"
    value: float
    threshold: float
    ts: int  # event time of the newest data judged
    model: str = ""
    version: str = ""
    before: float | None = None
    columns: dict[str, float | None] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # column -> card version or "warm-up"
    rows: int = 0
    window_s: int = 0
    site: str = ""
    zone: str = ""
    utility: str = ""
    emitted_at: int = 0
    v: int = 1


@dataclass
class Feedback(Record):
    """An operator's verdict on an alert (feedback), for retraining."""

    fingerprint: str
    verdict: str  # "true_positive" | "false_positive"
    ts: int
    author: str = ""
    comment: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    v: int = 1


@dataclass
class LeakReport(Record):
    """A suspected leak reported by the public (reports), from the console's public page.

    A locality is a site; ``zone`` is empty when the reporter cannot know it. The reporter's name and
    contact travel in the record for the operators (history keeps it) but are not fields here, so no
    rule can put them in an alert.
    """

    id: str
    ts: int
    site: str
    text: str
    zone: str = ""
    utility: str = "water"
    kind: str = "leak"
    locality: str = ""
    source: str = "public"
    v: int = 1


#: The incident mechanisms an :class:`IncidentLabel` names: what the simulator injects, what the forecaster maps to
#: its risk classes and what retrain reads as labels. Append only (models and label files use the names).
INCIDENT_TYPES: tuple[str, ...] = (
    "leak",
    "burst",
    "contamination",
    "pump_cavitation",
    "bearing_fault",
    "stuck_sensor",
    "drift",
    "spike",
    "overconsumption",
    "gas_pressure_excursion",
    "tampering",
)


@dataclass
class IncidentLabel(Record):
    """Ground truth of an injected incident (labels), written by the simulator."""

    incident_id: str
    type: str
    start_ms: int
    end_ms: int
    site: str
    zone: str
    utility: str
    sensors: list[str] = field(default_factory=list)
    v: int = 1
