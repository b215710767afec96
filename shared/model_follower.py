"""Hot model reload, one mechanism for every service: follow a registry alias, swap in what it points at.

A service follows one or more *slots* (the detector one per profile, the forecaster one), each a model name
in the registry (:mod:`shared.registry`). What triggers a reload:

* a ``models`` event for a followed name and alias, read by every worker with its own group-less consumer
  from the end (the topic has one partition, which a consumer group would hand to a single worker);
* a re-read of the aliases every ``poll_s``, which covers an event missed while a worker was down.

Either way the registry is the truth: the alias is read again and a slot is loaded only when it points at a
version the slot does not serve, so a replayed or stale event cannot roll a model back. Loading runs in a
worker thread (a TensorFlow import takes seconds; the event loop keeps heartbeating), one load at a time.
A model that cannot be loaded or is refused by the service's own check (the ``load`` callable raises) leaves
the slot's current model serving; the reason is kept for readiness, logged and counted. An event that is
not a usable ``ModelEvent`` goes to the dead letters with its reason and is never acted on.

Metrics (:class:`FollowerMetrics`, named per service): ``flowwatch_<service>_model_loads_total``,
``flowwatch_<service>_model_load_errors_total``, ``flowwatch_<service>_model_loaded{model,version}`` (1 for
the version serving).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge

from shared.codec import loads
from shared.metrics import DECODE_ERRORS
from shared.records import ModelEvent
from shared.registry import ModelRegistry, ModelVersion, RegistryError, check_event

log = logging.getLogger(__name__)

M = TypeVar("M")


@dataclass(frozen=True)
class FollowerMetrics:
    loads: Counter
    errors: Counter
    loaded: Gauge

    @classmethod
    def for_service(cls, service: str) -> FollowerMetrics:
        """The service's three metrics; create once per process (Prometheus names are global)."""
        return cls(
            Counter(f"flowwatch_{service}_model_loads_total", "Model versions loaded (hot swaps included)"),
            Counter(
                f"flowwatch_{service}_model_load_errors_total",
                "Model versions that could not be loaded or were refused (the previous one kept serving)",
            ),
            Gauge(f"flowwatch_{service}_model_loaded", "1 for each model version being served", ["model", "version"]),
        )


@dataclass(frozen=True)
class Served(Generic[M]):
    model: M
    version: str
    loaded_at: float


class ModelFollower(Generic[M]):
    """Serves, per slot, the model version a registry alias points at.

    ``names``: slot -> registry name. ``load(slot, model_version)`` builds the model from the registry's
    files (it may raise to refuse one: the current model keeps serving). ``on_swap(slot, served, mv)`` runs
    after a swap, in the loading thread (set the model where the service reads it, reset references).
    ``required``: readiness fails while a slot serves nothing (the forecaster); otherwise a slot without a
    model runs the service's fallback, which ``fallback`` names in the readiness detail (the detector).
    ``newest_without_alias``: before the alias exists, follow the newest version.
    """

    def __init__(
        self,
        service: str,
        registry: ModelRegistry,
        names: Mapping[str, str],
        alias: str,
        load: Callable[[str, ModelVersion], M],
        metrics: FollowerMetrics,
        *,
        on_swap: Callable[[str, Served[M], ModelVersion], None] | None = None,
        required: bool = False,
        fallback: str = "",
        newest_without_alias: bool = False,
        missing_hint: str = "",
    ) -> None:
        self.service = service
        self.registry = registry
        self.names = dict(names)
        self.alias = alias
        self._load = load
        self.metrics = metrics
        self.on_swap = on_swap
        self.required = required
        self.fallback = fallback
        self.newest_without_alias = newest_without_alias
        self.missing_hint = missing_hint
        self.serving: dict[str, Served[M]] = {}
        self.errors: dict[str, str] = {}
        self.last_check = 0.0
        self.tried = False  # a refresh has run (loaded, failed, or found nothing to load)
        self._lock = threading.Lock()  # one load at a time: a poll and an event never load the same version twice
        self.first_attempt = asyncio.Event()  # :attr:`tried`, for the event loop to wait on

    # what is served

    def model(self, slot: str) -> M | None:
        served = self.serving.get(slot)
        return served.model if served is not None else None

    def version(self, slot: str) -> str | None:
        served = self.serving.get(slot)
        return served.version if served is not None else None

    def versions(self) -> dict[str, str]:
        """slot -> version, for the slots serving a model."""
        return {slot: s.version for slot, s in self.serving.items()}

    def readiness(self) -> tuple[bool, str]:
        parts = [f"{self._label(slot)}{s.version}" for slot, s in sorted(self.serving.items())]
        missing = [slot for slot in self.names if slot not in self.serving]
        if missing and self.fallback:
            parts.append(f"{self.fallback} for: {', '.join(missing)}")
        if missing and self.required:
            if not self.tried:
                return False, "model not loaded yet"
            why = "; ".join(self.errors.get(slot) or self._missing(slot) for slot in missing)
            return False, why
        if self.errors:
            parts.append("load errors: " + "; ".join(self.errors.values()))
        return True, "; ".join(parts)

    def _label(self, slot: str) -> str:
        # one slot named as its model reads "forecaster:v3"; slots of a family read "pump: v3"
        return f"{slot}:" if self.names[slot] == slot else f"{slot}: "

    def _missing(self, slot: str) -> str:
        return f"no model {self.names[slot]!r} in {self.registry.root}" + (
            f"; {self.missing_hint}" if self.missing_hint else ""
        )

    # reloading

    def wanted(self, slot: str) -> str | None:
        """The version the alias points at (the newest before the alias exists, if so configured)."""
        name = self.names[slot]
        version = self.registry.aliases(name).get(self.alias)
        if version is None and self.newest_without_alias:
            try:
                return self.registry.load(name, verified=False).version
            except RegistryError:
                return None
        return version

    def refresh_now(self, reason: str, slots: list[str] | None = None) -> list[str]:
        """Load every slot whose alias points at a version it does not serve (blocking); ``slot=version``
        of each swap."""
        changed = []
        with self._lock:
            for slot in slots if slots is not None else list(self.names):
                try:
                    version = self.wanted(slot)
                except Exception as exc:  # noqa: BLE001 - an unreadable registry is a readiness detail, not a crash
                    self.errors[slot] = f"cannot read model registry {self.registry.root}: {exc}"
                    continue
                if version is None or self.version(slot) == version:
                    self.errors.pop(slot, None)  # what failed is no longer wanted (or the registry is back)
                    continue
                if self._swap(slot, version, reason):
                    changed.append(f"{slot}={version}")
            self.last_check = time.time()
            self.tried = True
        return changed

    async def refresh(self, reason: str, slots: list[str] | None = None) -> list[str]:
        """:meth:`refresh_now` in a worker thread."""
        try:
            return await asyncio.to_thread(self.refresh_now, reason, slots)
        finally:
            self.first_attempt.set()

    def _swap(self, slot: str, version: str, reason: str) -> bool:
        name = self.names[slot]
        t0 = time.monotonic()
        try:
            mv = self.registry.load(name, version=version)
            model = self._load(slot, mv)
        except Exception as exc:  # noqa: BLE001 - a model is outside input: refused, never fatal
            self.metrics.errors.inc()
            self.errors[slot] = f"{name} {version}: {type(exc).__name__}: {exc}"
            log.error(
                "model %s %s could not be loaded; still serving %s: %s",
                name,
                version,
                self.version(slot) or "none",
                exc,
                extra={"profile": slot},
            )
            return False
        previous = self.serving.get(slot)
        served = Served(model, version, time.time())
        if self.on_swap is not None:
            self.on_swap(slot, served, mv)
        self.serving[slot] = served
        self.errors.pop(slot, None)
        if previous is not None:
            self.metrics.loaded.labels(name, previous.version).set(0)
        self.metrics.loaded.labels(name, version).set(1)
        self.metrics.loads.inc()
        log.info(
            "serving model %s %s for %s (%s, loaded in %.1fs)",
            name,
            version,
            slot,
            reason,
            time.monotonic() - t0,
            extra={"profile": slot},
        )
        return True

    def slots_of(self, event: ModelEvent) -> list[str]:
        """The slots an event is about (none when it is for another model or alias)."""
        if event.alias != self.alias:
            return []
        return [slot for slot, name in self.names.items() if name == event.name]

    async def on_event(self, event: ModelEvent) -> list[str]:
        slots = self.slots_of(event)
        if not slots:
            return []
        return await self.refresh(f"{event.action} event: {event.name} {event.alias} -> {event.version}", slots)

    async def follow(self, app: Any, settings: Any, stop: asyncio.Event, poll_s: float) -> None:
        """Refresh once, then follow the ``models`` topic (group-less, from the end) and poll every ``poll_s``."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        from shared.streaming import send_dead_letter
        from shared.topics import MODELS

        await self.refresh("start")
        topic = settings.topic(MODELS.name)
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                topic, **settings.kafka_client_options(), group_id=None, auto_offset_reset="latest"
            )
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
                                DECODE_ERRORS.labels(self.service, MODELS.name).inc()
                                await send_dead_letter(
                                    app,
                                    settings,
                                    self.service,
                                    topic=rec.topic,
                                    partition=rec.partition,
                                    offset=rec.offset,
                                    key=rec.key,
                                    raw=rec.value,
                                    reasons=[f"models event: {why}"],
                                )
                                continue
                            await self.on_event(event)
                    if time.time() - self.last_check >= poll_s:
                        await self.refresh("registry poll")
            except (KafkaError, OSError) as exc:
                log.warning("models topic consumer failed (retrying in 5 s): %s", exc)
                await asyncio.sleep(5)
            finally:
                await consumer.stop()
