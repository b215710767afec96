"""The forecaster's own Prometheus metrics (the common ones are in shared.metrics)."""

from __future__ import annotations

from shared.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram
from shared.model_follower import FollowerMetrics

STEPS_CLOSED = Counter(
    "flowwatch_forecaster_steps_closed_total", "Zone steps closed (one risk record each when a model is loaded)"
)
LATE_STEPS = Counter(
    "flowwatch_forecaster_late_partials_total",
    "Partial step statistics that arrived after their step had closed (dropped)",
)
DUPLICATES = Counter(
    "flowwatch_forecaster_duplicate_partials_total", "Partials already applied (redelivered after a restart; skipped)"
)
BAD_READINGS = Counter(
    "flowwatch_forecaster_unusable_readings_total",
    "Readings on readings.clean the forecaster could not use (quarantined)",
)
INFERENCE_SECONDS = Histogram(
    "flowwatch_forecaster_inference_seconds",
    "Time in the two model calls per stage-2 micro-batch that closed steps",
    buckets=LATENCY_BUCKETS,
)
# flowwatch_forecaster_model_loads_total, _model_load_errors_total, _model_loaded{model,version}
MODELS = FollowerMetrics.for_service("forecaster")
ZONE_PROBABILITY = Gauge("flowwatch_forecaster_incident_probability", "Latest incident probability per zone", ["zone"])
ZONES_EXPIRED = Counter("flowwatch_forecaster_zones_expired_total", "Zone states deleted after zone_ttl_s of silence")
