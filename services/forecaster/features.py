"""The feature configuration a model was trained with, and the names of its features.

The configuration travels with the model (registry metadata), so serving always
computes exactly the features the model was trained on, whatever the service's
current settings say.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from services.forecaster.settings import ForecasterSettings
from shared.records import UTILITIES

#: Per-metric features, in order (see ZoneState.close_step for their definitions).
METRIC_FEATURES: tuple[str, ...] = (
    "present",  # the zone reported this metric in the step
    "z_base",  # step mean against the slow baseline
    "z_hour",  # step mean against the usual value at this hour of day
    "rel_hour",  # relative deviation from the usual value at this hour (how big, not how unusual)
    "spread",  # within-step spread against the baseline's
    "range",  # max - min within the step, in baseline standard deviations
    "sensor_median_z",  # the typical sensor against its own baseline (zone-wide shift)
    "sensor_max_z",  # the most deviating sensor against its own baseline (one sensor off)
    "sensor_spike",  # the most extreme single value of any sensor, in its standard deviations
    "repeat_frac",  # share of sensors repeating last step's mean exactly (stuck)
    "d1",  # change of z_hour since the previous step
    "d4",  # z_hour against its mean over the previous 4 steps
)
ZONE_FEATURES: tuple[str, ...] = (
    "count_ratio",  # readings in the step against the usual (log)
    "sensor_ratio",  # reporting sensors against the usual (log)
    "gap_steps",  # steps since the previous step with data (log1p)
    "hour_sin",
    "hour_cos",
    *(f"utility_{u}" for u in UTILITIES),
)
FORECAST_FEATURES_EXTRA: tuple[str, ...] = (
    "profile_next",  # usual value at the target hour, scaled
    "profile_now",  # usual value at the current hour, scaled
    "next_hour_sin",
    "next_hour_cos",
    *(f"utility_{u}" for u in UTILITIES),
)


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that shapes a feature vector; saved with the model."""

    step_s: int = 60
    horizon_steps: int = 15
    window_steps: int = 24
    sensor_ttl_steps: int = 1440
    baseline_half_life_steps: float = 720.0
    profile_alpha: float = 0.3
    metrics: tuple[str, ...] = ()
    key_metrics: dict[str, str] = field(default_factory=dict)

    @property
    def step_ms(self) -> int:
        return self.step_s * 1000

    @property
    def metric_index(self) -> dict[str, int]:
        idx = self.__dict__.get("_metric_index")
        if idx is None:
            idx = {m: i for i, m in enumerate(self.metrics)}
            object.__setattr__(self, "_metric_index", idx)
        return idx

    @property
    def baseline_alpha(self) -> float:
        return 1.0 - math.pow(0.5, 1.0 / self.baseline_half_life_steps)

    @property
    def risk_feature_names(self) -> list[str]:
        return [f"{m}:{f}" for m in self.metrics for f in METRIC_FEATURES] + list(ZONE_FEATURES)

    @property
    def forecast_feature_names(self) -> list[str]:
        return [f"lag_{self.window_steps - i}" for i in range(self.window_steps)] + list(FORECAST_FEATURES_EXTRA)

    def key_metric(self, utility: str) -> str | None:
        """Qualified key metric (``water.flow``) of a utility, if it has one."""
        name = self.key_metrics.get(utility)
        return f"{utility}.{name}" if name else None

    @classmethod
    def from_settings(cls, s: ForecasterSettings, metrics: tuple[str, ...] = ()) -> FeatureConfig:
        return cls(
            step_s=s.step_s,
            horizon_steps=s.horizon_steps,
            window_steps=s.window_steps,
            sensor_ttl_steps=s.sensor_ttl_steps,
            baseline_half_life_steps=s.baseline_half_life_steps,
            profile_alpha=s.profile_alpha,
            metrics=tuple(metrics),
            key_metrics=s.key_metric_by_utility,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # a newer trainer may save more than we know
        d["metrics"] = tuple(d.get("metrics", ()))
        return cls(**d)
