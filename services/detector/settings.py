"""Settings of the detector service, read from ``FLOWWATCH_DETECTOR_*`` environment variables.

The common settings (broker, Redis, topics, web port, model registry directory, ...)
are ``shared.settings.Settings``; these are the knobs only the detector has.
``python -m services.detector settings`` prints the table for the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_DETECTOR_"
DEFAULT_PROFILES_FILE = Path(__file__).with_name("profiles.yaml")


@dataclass(frozen=True)
class DetectorSettings(ServiceSettings):
    """How the detector batches, which models it uses, what it emits."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    batch_size: int = _doc(2000, "Most readings scored in one micro-batch.")
    batch_wait_s: float = _doc(
        0.1,
        "Longest an idle fetch waits (seconds) for readings (or for `batch_fill_bytes` of them); a backlog never waits.",
    )
    batch_fill_bytes: int = _doc(
        1,
        "Bytes the broker gathers before answering a fetch (or `batch_wait_s` passes). 1: whatever has arrived goes "
        "at once, and a backlog makes full batches by itself. More makes fuller batches at low rates, each paying the "
        "models' per-batch cost once, for up to `batch_wait_s` of latency per reading (docs/performance.md).",
    )
    profiles_file: Path = _doc(
        DEFAULT_PROFILES_FILE,
        "YAML file mapping readings to model profiles (by asset kind, utility, site or sensor id prefix) with "
        "each profile's metrics and model settings.",
    )
    model_alias: str = _doc(
        "production",
        "Registry alias of the model version to serve; a `models` event promoting this alias hot-swaps it.",
    )
    model_prefix: str = _doc("detector-", "Registry name of a profile's model is this prefix + the profile name.")
    model_poll_s: float = _doc(
        30.0, "How often (seconds) each worker re-reads the registry aliases, besides reacting to `models` events."
    )
    zscore_threshold: float = _doc(
        2.5, "Threshold of the statistical detector in sigmas (used alone while a profile has no trained model)."
    )
    aggregate_window_s: int = _doc(30, "Length of the tumbling aggregate windows (seconds) per site, zone and utility.")
    aggregate_grace_s: int = _doc(
        5, "A window is closed and emitted once readings this many seconds past its end have been seen."
    )
    partials_every_s: float = _doc(
        0.5,
        "Zone partials of the batches scored meanwhile are merged per zone and window and go to the aggregator with "
        "the first batch this many seconds after the last send (from a timer when no batch comes), and ahead of every "
        "checkpoint. 0: each batch sends its own, one message per zone, which the aggregator reads at ~120 µs each: "
        "at small batches as much CPU as the scoring.",
    )
    emit_scores: bool = _doc(True, "Publish every reading's score on `scores` (anomalies are always published).")
    reason_metrics: int = _doc(3, "Contributing metrics listed with each anomaly.")
    checkpoint_s: float = _doc(
        5.0,
        "How often (seconds) changed sensor states and consumed offsets are written to the tables (once per "
        "sensor); after a crash at most this much is scored again, from the checkpointed state. Shorter costs CPU "
        "on every reading's path (at 1 s, a tenth of the worker's CPU at 5,000 readings/s of 1,000 sensors).",
    )
    batches_in_flight: int = _doc(
        2, "Micro-batches whose outputs may await the broker's acknowledgement while the next one is scored."
    )
    compute_in_thread: bool = _doc(
        True, "Run feature extraction and scoring in a worker thread so the event loop keeps heartbeating."
    )
    thread_min_readings: int = _doc(
        500,
        "Smallest micro-batch scored in the worker thread (with `compute_in_thread`); smaller ones are scored on "
        "the event loop: a few milliseconds, less than the hand-off and the GIL switches a thread costs them.",
    )
    session_timeout_s: float = _doc(
        60.0,
        "Kafka consumer-group session timeout (seconds): how long a worker that died without leaving keeps its "
        "partitions before the group hands them to another. Long avoids rebalance storms; short fails over fast.",
    )
    cache_enabled: bool = _doc(True, "Write the latest score per sensor and anomaly counts per zone to Redis.")
    cache_flush_s: float = _doc(0.5, "How often (seconds) the latest scores and anomaly counts are written to Redis.")

    max_id_chars: int = _doc(
        200, "Longest sensor, site, zone or source id accepted (characters); longer readings are quarantined."
    )
    new_sensors_per_minute: int = _doc(
        10_000,
        "Most sensors never seen before that one source (the reading's `source`) may introduce a minute; readings "
        "of further new sensors are quarantined with the reason. 0: no limit.",
    )
    memory_sensors: int = _doc(
        200_000,
        "Sensor states kept in memory; beyond it, those already checkpointed are dropped at the next checkpoint "
        "(read again from the table when their sensor returns).",
    )
    state_ttl_s: int = _doc(
        7 * 24 * 3600,
        "A sensor whose newest reading is older than this (seconds, event time against the clock) has its state "
        "deleted from `detector-sensor-state`; it starts afresh if it returns. 0: keep forever.",
    )
    state_sweep_s: float = _doc(600.0, "How often (seconds) the state table is swept for expired sensors.")

    drift_window_s: int = _doc(
        24 * 3600,
        "Drift: the PSI of each profile's inputs and score is computed over this much of the newest event time "
        "(a whole day by default: a shorter window sees the daily cycle itself as drift; docs/mlops.md).",
    )
    drift_reference_s: int = _doc(
        24 * 3600,
        "Drift: a column the model card has no training reference for (or a profile without a trained model) "
        "takes the first this-many seconds of event time the worker sees under the model as its reference.",
    )
    drift_bucket_s: int = _doc(3600, "Drift: histograms are kept in buckets of this much event time (seconds).")
    drift_check_s: float = _doc(
        60.0, "How often (seconds) drift is computed and transitions are published on `drift`; 0 turns drift off."
    )
