"""Settings of the forecaster service, read from ``FLOWWATCH_FORECASTER_*`` environment variables.

Time is event time: readings are bucketed into steps of ``step_s`` seconds by their own
timestamp, so a replay of last week's data gives the same risks as living through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_FORECASTER_"


def parse_mapping(raw: str) -> dict[str, str]:
    """``"water:flow,energy:power"`` -> ``{"water": "flow", "energy": "power"}`` (also accepts ``=``)."""
    out: dict[str, str] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        sep = "=" if "=" in part else ":"
        if sep not in part:
            raise ValueError(f"expected key{sep}value, got {part!r}")
        key, value = part.split(sep, 1)
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ForecasterSettings(ServiceSettings):
    """Runtime settings of the forecaster service. Read with :meth:`from_env`."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    step_s: int = _doc(60, "Length of one time step (feature bucket) in seconds of event time.")
    horizon_steps: int = _doc(15, "Risk horizon in steps: probability of an incident now or within this many steps.")
    window_steps: int = _doc(24, "Steps of key-metric history each zone keeps for the forecast (bounded state).")
    max_open_steps: int = _doc(
        240,
        "A zone's step closes when every readings partition has passed its end (watermarks); if a partition never "
        "says so, at most this many steps stay open before the oldest is closed anyway (bounded state).",
    )
    lateness_s: int = _doc(15, "Out-of-order allowance: a step closes this many seconds after its end has been passed.")
    idle_partition_s: float = _doc(
        10.0,
        "A readings partition with nothing waiting that delivered nothing for this many (wall-clock) seconds stops "
        "holding zones back: its watermark follows the other partitions of the same worker.",
    )
    sensor_ttl_steps: int = _doc(1440, "Per-sensor state of a sensor not heard from for this many steps is dropped.")
    baseline_half_life_steps: float = _doc(
        720.0, "Half-life (in steps) of the slow per-metric and per-sensor baselines features are measured against."
    )
    profile_alpha: float = _doc(
        0.3,
        "Weight of the newest day in the hour-of-day profile (the seasonal baseline features are measured against).",
    )
    key_metrics: str = _doc(
        "water:flow,energy:power,gas:flow",
        "Metric forecast per utility (`utility:metric`, comma separated); also the metric losses are measured on.",
    )
    tariffs: str = _doc(
        "water:2.10,energy:0.25,gas:0.90",
        "Cost per canonical unit of lost volume per utility (`utility:price`): EUR per m³ water, kWh, m³ gas.",
    )
    currency: str = _doc("EUR", "Currency of the tariffs and of the costs in risk records.")
    incident_threshold: float = _doc(
        0.5, "Incident probability from which a zone counts as in incident for loss accounting."
    )
    batch_size: int = _doc(2000, "Max readings per micro-batch (stage 1) and partials per batch (stage 2).")
    batch_within_s: float = _doc(
        0.2,
        "Max seconds to wait to fill a micro-batch; at low rates stage 1 folds this much time per fetch, so the "
        "partials stay one per zone per fetch rather than one per reading.",
    )
    batches_in_flight: int = _doc(
        2, "Stage-1 micro-batches whose partials may await the broker's acknowledgement while the next one is folded."
    )
    checkpoint_s: float = _doc(
        1.0,
        "How often (seconds) stage 1 checkpoints its readings.clean offsets. After a crash, readings since the last "
        "checkpoint are folded again; a partial already applied is skipped, one that overlaps an applied one is "
        "merged (its readings count twice in that zone step).",
    )
    session_timeout_s: float = _doc(
        60.0,
        "Kafka consumer-group session timeout (seconds): how long a worker that died without leaving keeps its "
        "partitions before the group hands them to another. Long avoids rebalance storms; short fails over fast.",
    )
    model_name: str = _doc("forecaster", "Model name in the registry.")
    model_alias: str = _doc(
        "production", "Registry alias to serve; when the alias does not exist yet, the newest version is served."
    )
    model_poll_s: float = _doc(
        30.0,
        "How often (seconds) each worker re-reads the registry alias, besides reacting to `models` events "
        "(an event reaches one worker of the group only).",
    )
    metric_zones: int = _doc(
        1000,
        "Most zones given their own series of `flowwatch_forecaster_incident_probability` (zone ids that are plain "
        "names only); zones beyond it are served but not exported per zone.",
    )
    new_zones_per_minute: int = _doc(
        1000,
        "Most zones never seen before that one site may introduce a minute (stage 2); partials of further new "
        "zones are dead-lettered with the reason. 0: no limit.",
    )
    zone_ttl_s: int = _doc(
        30 * 24 * 3600,
        "A zone whose newest reading is older than this (seconds, event time against the clock) is deleted from "
        "the `zones` table; it starts afresh if it returns. 0: keep forever.",
    )
    zone_sweep_s: float = _doc(600.0, "How often (seconds) the `zones` table is swept for expired zones.")
    top_features: int = _doc(3, "Contributing features listed in each risk record.")
    drift_window_s: int = _doc(
        24 * 3600,
        "Drift: the PSI of each zone's key-metric totals is computed over this much of the newest event time (a "
        "whole day: a shorter window sees the daily cycle as drift; docs/mlops.md).",
    )
    drift_reference_s: int = _doc(
        24 * 3600, "Drift: each zone's first this-many seconds of event time are its reference for the PSI."
    )
    drift_bucket_s: int = _doc(3600, "Drift: histograms are kept in buckets of this much event time (seconds).")
    drift_check_s: float = _doc(
        60.0,
        "How often (seconds) drift (PSI, and the ADWIN on the forecast error) is published on `drift`; 0 turns "
        "drift off.",
    )

    @property
    def step_ms(self) -> int:
        return self.step_s * 1000

    @property
    def key_metric_by_utility(self) -> dict[str, str]:
        return parse_mapping(self.key_metrics)

    @property
    def tariff_by_utility(self) -> dict[str, float]:
        return {k: float(v) for k, v in parse_mapping(self.tariffs).items()}

    def validate(self) -> None:
        if self.step_s <= 0 or self.horizon_steps <= 0 or self.window_steps < 4:
            raise ValueError("step_s and horizon_steps must be positive and window_steps at least 4")
        if self.batch_size < 1 or self.batches_in_flight < 1 or self.checkpoint_s <= 0 or self.session_timeout_s <= 0:
            raise ValueError(
                "batch_size and batches_in_flight must be at least 1, checkpoint_s and session_timeout_s positive"
            )
        if not 0.0 < self.profile_alpha <= 1.0:
            raise ValueError("profile_alpha must be in (0, 1]")
        self.key_metric_by_utility  # noqa: B018 - raises on a malformed mapping
        self.tariff_by_utility  # noqa: B018


if __name__ == "__main__":
    from shared.settings import settings_table

    print(settings_table(ForecasterSettings, ENV_PREFIX))
