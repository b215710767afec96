"""Prometheus metrics of the detector (the common ones live in shared.metrics)."""

from __future__ import annotations

from shared.metrics import Counter, Gauge
from shared.model_follower import FollowerMetrics

READINGS_SCORED = Counter("flowwatch_detector_readings_scored_total", "Readings scored", ["profile"])
ANOMALIES = Counter("flowwatch_detector_anomalies_total", "Readings flagged anomalous", ["profile"])
QUARANTINED = Counter(
    "flowwatch_detector_quarantined_total", "Messages on readings.clean the detector could not read", ["reason"]
)
STATE_ERRORS = Counter("flowwatch_detector_state_errors_total", "Stored sensor states that could not be read")
# flowwatch_detector_model_loads_total, _model_load_errors_total, _model_loaded{model,version}
MODELS = FollowerMetrics.for_service("detector")
TRAINED_PROFILES = Gauge("flowwatch_detector_trained_profiles", "Profiles served by a trained model")
AGGREGATES_EMITTED = Counter("flowwatch_detector_aggregates_total", "Aggregate windows closed and published")
LATE = Counter(
    "flowwatch_detector_late_readings_total",
    "Readings not newer than their sensor's newest (late, or replayed after a restart): scored, state unchanged",
)
STATES_EVICTED = Counter(
    "flowwatch_detector_states_evicted_total",
    "Sensor states dropped: from memory (already checkpointed) or deleted from the table (expired)",
    ["where"],
)
