"""The served forecaster model: :class:`~shared.model_follower.ModelFollower` over one registry name.

Loaded in a worker thread at start (TensorFlow is imported then, not at module import) and hot-swapped on
promotion; until a model is loaded /ready says why and zone state keeps warming up without risk records.
Before the alias exists the newest version serves. A model trained with another step than
``FLOWWATCH_FORECASTER_STEP_S`` is refused, and the model serving stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.forecaster.metrics import MODELS
from services.forecaster.settings import ForecasterSettings
from shared.model_follower import ModelFollower
from shared.registry import ModelRegistry, ModelVersion


class ModelHolder(ModelFollower[Any]):
    def __init__(self, settings: ForecasterSettings, model_dir: Path) -> None:
        self.settings = settings
        super().__init__(
            "forecaster",
            ModelRegistry(model_dir),
            {settings.model_name: settings.model_name},
            settings.model_alias,
            self._load_predictor,
            MODELS,
            required=True,
            newest_without_alias=True,
            missing_hint=(
                f"train one with `python -m services.forecaster train --data HISTORY --model-dir {model_dir}`"
            ),
        )

    @property
    def predictor(self) -> Any | None:
        """The :class:`~services.forecaster.model.Predictor` serving, None before the first load."""
        return self.model(self.settings.model_name)

    def serving_label(self) -> str:
        """``name:version`` serving, or why nothing is."""
        version = self.version(self.settings.model_name)
        return f"{self.settings.model_name}:{version}" if version else self.readiness()[1]

    def _load_predictor(self, slot: str, mv: ModelVersion) -> Any:
        from services.forecaster.model import Predictor  # imports TensorFlow (first call only)

        predictor = Predictor.load(mv.path, mv.metadata, f"{mv.name}:{mv.version}")
        if predictor.config.step_s != self.settings.step_s:
            raise ValueError(
                f"model {mv.name}:{mv.version} was trained with {predictor.config.step_s}s steps but "
                f"FLOWWATCH_FORECASTER_STEP_S is {self.settings.step_s}; retrain or change the setting"
            )
        return predictor
