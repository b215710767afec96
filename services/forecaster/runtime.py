"""The served model: loaded once at start (TensorFlow imported then, not at module import), hot-swapped on promotion.

The holder is shared by the Faust agents and the readiness check. Loading runs in
a worker thread so the event loop keeps heartbeating while TensorFlow imports
(seconds) and the model traces; a failed load keeps the model that was serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from services.forecaster.features import FeatureConfig
from services.forecaster.metrics import MODEL_LOAD_ERRORS, MODEL_LOADED
from services.forecaster.settings import ForecasterSettings
from shared.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, settings: ForecasterSettings, model_dir: Path) -> None:
        self.settings = settings
        self.model_dir = Path(model_dir)
        self.registry = ModelRegistry(model_dir)
        self.predictor: Any | None = None
        self.version: str | None = None  # registry version ("v3") being served
        self.error = "model not loaded yet"
        self.loaded_at = 0.0
        self._lock = asyncio.Lock()
        # set once the first load has been tried (loaded, failed, or no model to load)
        self.first_attempt = asyncio.Event()

    @property
    def config(self) -> FeatureConfig | None:
        return self.predictor.config if self.predictor is not None else None

    def check(self) -> tuple[bool, str]:
        """Readiness: a model is loaded."""
        if self.predictor is None:
            return False, self.error
        return True, f"{self.settings.model_name}:{self.version}"

    def wanted_version(self) -> str | None:
        """The version the alias points at, or the newest when the alias does not exist yet."""
        name = self.settings.model_name
        version = self.registry.aliases(name).get(self.settings.model_alias)
        if version is not None:
            return version
        try:
            return self.registry.load(name).version
        except RegistryError:
            return None

    def _load_sync(self, version: str) -> Any:
        from services.forecaster.model import Predictor  # imports TensorFlow (first call only)

        mv = self.registry.load(self.settings.model_name, version=version)
        predictor = Predictor.load(mv.path, mv.metadata, f"{mv.name}:{mv.version}")
        if predictor.config.step_s != self.settings.step_s:
            raise ValueError(
                f"model {mv.name}:{mv.version} was trained with {predictor.config.step_s}s steps but "
                f"FLOWWATCH_FORECASTER_STEP_S is {self.settings.step_s}; retrain or change the setting"
            )
        return predictor

    async def refresh(self, reason: str = "poll") -> bool:
        """Load the wanted version if it is not the one served; True when a new model was swapped in."""
        try:
            return await self._refresh(reason)
        finally:
            self.first_attempt.set()

    async def _refresh(self, reason: str) -> bool:
        async with self._lock:
            try:
                version = self.wanted_version()
            except Exception as exc:  # noqa: BLE001 - an unreadable registry is a readiness detail, not a crash
                self.error = f"cannot read model registry {self.model_dir}: {exc}"
                return False
            if version is None:
                if self.predictor is None:
                    self.error = (
                        f"no model {self.settings.model_name!r} in {self.model_dir}; train one with "
                        f"`python -m services.forecaster train --data HISTORY --model-dir {self.model_dir}`"
                    )
                return False
            if version == self.version:
                return False
            t0 = time.monotonic()
            try:
                predictor = await asyncio.get_running_loop().run_in_executor(None, self._load_sync, version)
            except Exception as exc:  # noqa: BLE001 - keep serving the previous model
                MODEL_LOAD_ERRORS.inc()
                self.error = f"loading {self.settings.model_name}:{version} failed: {type(exc).__name__}: {exc}"
                log.error("%s (still serving %s)", self.error, self.version or "nothing")
                return False
            if self.version is not None:
                MODEL_LOADED.labels(self.version).set(0)
            self.predictor, self.version, self.loaded_at = predictor, version, time.time()
            MODEL_LOADED.labels(version).set(1)
            log.info(
                "serving model %s:%s (%s, loaded in %.1fs)",
                self.settings.model_name,
                version,
                reason,
                time.monotonic() - t0,
            )
            return True
