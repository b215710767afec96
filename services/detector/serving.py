"""Which model version serves each profile: loaded from the registry, hot-swapped on promotion.

Every worker must see every promotion, and the ``models`` topic has one partition
that a consumer group would hand to a single worker, so each worker reads it with
its own group-less consumer from the end (see :func:`watch_models`). A periodic
re-read of the registry aliases covers an event missed while a worker was down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.detector.model import AnomalyModel
from services.detector.pipeline import ModelStore
from shared.codec import loads
from shared.mlops.card import card_reference
from shared.mlops.monitor import DriftMonitor
from shared.records import ModelEvent
from shared.registry import ModelRegistry, RegistryError, check_event
from shared.streaming import send_dead_letter

log = logging.getLogger(__name__)


class ModelServing:
    """Loads each profile's promoted model into a :class:`ModelStore`; remembers what it serves."""

    def __init__(
        self,
        store: ModelStore,
        registry: ModelRegistry,
        prefix: str = "detector-",
        alias: str = "production",
        monitor: DriftMonitor | None = None,
    ):
        self.store = store
        self.monitor = monitor
        self.registry = registry
        self.prefix = prefix
        self.alias = alias
        self.serving: dict[str, str] = {}  # profile -> version
        self.errors: dict[str, str] = {}
        self.last_check = 0.0

    def registry_name(self, profile: str) -> str:
        return f"{self.prefix}{profile}"

    def refresh(self) -> list[str]:
        """Load every profile whose alias points at a version not yet served; returns what changed."""
        changed = []
        for profile in self.store.profiles.by_name:
            name = self.registry_name(profile)
            version = self.registry.aliases(name).get(self.alias)
            if version is None or self.serving.get(profile) == version:
                continue
            if self.load(profile, version):
                changed.append(f"{profile}={version}")
        self.last_check = time.time()
        return changed

    def load(self, profile: str, version: str) -> bool:
        name = self.registry_name(profile)
        try:
            mv = self.registry.load(name, version=version)
            model = AnomalyModel.load(mv.path)
        except (RegistryError, FileNotFoundError, TypeError, ValueError, OSError, EOFError) as exc:
            self.errors[profile] = f"{name} {version}: {exc}"
            log.error("model %s %s could not be loaded; keeping the current one: %s", name, version, exc)
            return False
        model.version = version
        model.name = profile
        self.store.set_trained(profile, model)
        if self.monitor is not None:  # drift is now judged against what this version was trained on
            self.monitor.set_reference(profile, card_reference(mv.path, profile), f"{name} {version}")
        self.serving[profile] = version
        self.errors.pop(profile, None)
        log.info("serving model %s %s for profile %s", name, version, profile, extra={"profile": profile})
        return True

    def model_of(self, profile: str) -> tuple[str, str]:
        """Registry name and version serving ``profile`` (version ``statistical`` without a trained model)."""
        return self.registry_name(profile), self.serving.get(profile, "statistical")

    def on_event(self, event: ModelEvent) -> bool:
        if event.alias != self.alias or not event.name.startswith(self.prefix):
            return False
        profile = event.name[len(self.prefix) :]
        if profile not in self.store.profiles.by_name:
            log.warning("model event for %s, but no profile %r is configured", event.name, profile)
            return False
        return self.load(profile, event.version)

    def lifecycle(self) -> dict[str, Any]:
        """Per profile: its newest registered versions with their model cards' decisions, metrics and drift."""
        from shared.mlops.card import versions_summary

        out = {}
        for profile in self.store.profiles.by_name:
            try:
                out[profile] = versions_summary(self.registry, self.registry_name(profile), profile)
            except (RegistryError, OSError, ValueError) as exc:
                out[profile] = {"error": str(exc)}
        return out

    def readiness(self) -> tuple[bool, str]:
        """Always ready: without a trained model a profile runs the statistical detector, and says so."""
        statistical = [p for p in self.store.profiles.by_name if p not in self.serving]
        parts = [f"{p}: {v}" for p, v in sorted(self.serving.items())]
        if statistical:
            parts.append(f"statistical z-score detector only (no trained model) for: {', '.join(statistical)}")
        if self.errors:
            parts.append("load errors: " + "; ".join(self.errors.values()))
        return True, "; ".join(parts)


async def watch_models(
    serving: ModelServing, settings: Any, stop: asyncio.Event, poll_s: float = 30.0, app: Any = None
) -> None:
    """Follow the ``models`` topic with a group-less consumer; re-read the registry every ``poll_s``.

    An event that is not a usable ``ModelEvent`` (wrong types, a version that is not a plain name) goes to
    the dead letters with the reason (through ``app``'s producer) and is never acted on.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from shared.topics import MODELS

    topic = settings.topic(MODELS.name)
    while not stop.is_set():
        consumer = AIOKafkaConsumer(topic, **settings.kafka_client_options(), group_id=None, auto_offset_reset="latest")
        try:
            await consumer.start()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for rec in records:
                        try:
                            event = ModelEvent.from_dict(loads(rec.value or b""))
                            why = check_event(event)
                        except (ValueError, TypeError) as exc:
                            why = f"undecodable: {type(exc).__name__}: {exc}"
                        if why:
                            if app is not None:
                                await send_dead_letter(
                                    app,
                                    settings,
                                    "detector",
                                    topic=rec.topic,
                                    partition=rec.partition,
                                    offset=rec.offset,
                                    key=rec.key,
                                    raw=rec.value,
                                    reasons=[f"models event: {why}"],
                                )
                            continue
                        await asyncio.to_thread(serving.on_event, event)
                if time.time() - serving.last_check >= poll_s:
                    await asyncio.to_thread(serving.refresh)
        except (KafkaError, OSError) as exc:
            log.warning("models topic consumer failed (retrying in 5 s): %s", exc)
            await asyncio.sleep(5)
        finally:
            await consumer.stop()
