"""Which model version serves each profile: :class:`~shared.model_follower.ModelFollower` over the detector's
profiles, one registry name per profile (``detector-<profile>``).

A profile without a trained model runs the statistical z-score detector, so the detector is always ready and
says which profiles run it. A swapped-in model is set in the :class:`ModelStore` the scorer reads, and the
drift monitor then judges that profile against what the new version was trained on.
"""

from __future__ import annotations

from typing import Any

from services.detector.metrics import MODELS
from services.detector.model import AnomalyModel
from services.detector.pipeline import ModelStore
from shared.mlops.card import card_reference
from shared.mlops.monitor import DriftMonitor
from shared.model_follower import ModelFollower, Served
from shared.registry import ModelRegistry, ModelVersion, RegistryError

STATISTICAL = "statistical z-score detector only (no trained model)"


class ModelServing(ModelFollower[AnomalyModel]):
    """Loads each profile's promoted model into a :class:`ModelStore`."""

    def __init__(
        self,
        store: ModelStore,
        registry: ModelRegistry,
        prefix: str = "detector-",
        alias: str = "production",
        monitor: DriftMonitor | None = None,
    ):
        super().__init__(
            "detector",
            registry,
            {profile: f"{prefix}{profile}" for profile in store.profiles.by_name},
            alias,
            _load_model,
            MODELS,
            on_swap=self._use,
            fallback=STATISTICAL,
        )
        self.store = store
        self.monitor = monitor

    def _use(self, profile: str, served: Served[AnomalyModel], mv: ModelVersion) -> None:
        self.store.set_trained(profile, served.model)
        if self.monitor is not None:  # drift is now judged against what this version was trained on
            self.monitor.set_reference(profile, card_reference(mv.path, profile), f"{mv.name} {mv.version}")

    def model_of(self, profile: str) -> tuple[str, str]:
        """Registry name and version serving ``profile`` (version ``statistical`` without a trained model)."""
        return self.names[profile], self.version(profile) or "statistical"

    def lifecycle(self) -> dict[str, Any]:
        """Per profile: its newest registered versions with their model cards' decisions, metrics and drift."""
        from shared.mlops.card import versions_summary

        out = {}
        for profile, name in self.names.items():
            try:
                out[profile] = versions_summary(self.registry, name, profile)
            except (RegistryError, OSError, ValueError) as exc:
                out[profile] = {"error": str(exc)}
        return out


def _load_model(profile: str, mv: ModelVersion) -> AnomalyModel:
    model = AnomalyModel.load(mv.path)
    model.version = mv.version
    model.name = profile
    return model
