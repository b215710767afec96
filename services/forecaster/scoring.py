"""Stage 2 of the forecaster: zone partials merged into zone states, steps closed, risk published.

:class:`ZoneScorer` takes one batch of ``forecaster.zone-partials`` events (Faust's agent hands it
over; :mod:`services.forecaster.app` only wires it): it dead-letters what is not a partial, keeps
each partials partition's source watermarks, reads the states of the zones in the batch (and of the
zones waiting for a watermark that just moved, :mod:`services.forecaster.waiting`), runs
:class:`~services.forecaster.pipeline.ZoneProcessor` in a worker thread so the event loop keeps
heartbeating, publishes ``Risk`` records keyed by zone, then writes each zone once in its own
partition (pitfall 10) and caches the latest risk per zone in Redis (kind ``risk``).

The risk records are on the broker before the zone states that closed their steps: a crash in
between repeats a risk record (consumers dedup on zone + ts) rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from services.forecaster.drift import ForecastDrift
from services.forecaster.metrics import DUPLICATES, INFERENCE_SECONDS, LATE_STEPS, STEPS_CLOSED, ZONE_PROBABILITY
from services.forecaster.partials import problem as partial_problem
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.serving import ModelHolder
from services.forecaster.settings import ForecasterSettings
from services.forecaster.waiting import WaitingZones
from services.forecaster.zonestate import ZoneState
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.limits import LabelSet, NewIdBudget
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.settings import Settings
from shared.streaming import dead_letter_event, event_context, write_once_per_key
from shared.topics import FORECASTER_ZONE_PARTIALS, RISK

log = logging.getLogger(__name__)
SERVICE = "forecaster"


@dataclass
class Gathered:
    """What one batch of events holds, per kind: partials to merge and zones to look at."""

    partials: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # partials partition -> partials
    last_event: dict[bytes, Any] = field(default_factory=dict)  # zone key -> its latest event (for the write)
    recheck: dict[str, int] = field(default_factory=dict)  # waiting zone -> its partials partition
    # zone key -> its table value as read by the new-zone check (read once a batch, not again to load the state)
    values: dict[bytes, Any] = field(default_factory=dict)


class ZoneScorer:
    def __init__(
        self,
        app: Any,
        settings: Settings,
        fs: ForecasterSettings,
        zones: Any,
        risk_topic: Any,
        holder: ModelHolder,
        processor: ZoneProcessor,
        cache: Cache,
        source_partitions: int,
        zone_labels: LabelSet,
        drift: ForecastDrift | None,
    ) -> None:
        self.app = app
        self.settings = settings
        # the ``topic`` label of the events counters: the full name, as every pump and agent gives it
        self.partials_topic = settings.topic(FORECASTER_ZONE_PARTIALS.name)
        self.fs = fs
        self.zones = zones
        self.risk_topic = risk_topic
        self.holder = holder
        self.processor = processor
        self.cache = cache
        self.zone_labels = zone_labels
        self.drift = drift
        self.key_metrics = fs.key_metric_by_utility
        self.new_zones = NewIdBudget(fs.new_zones_per_minute)
        # partials partition -> source partition -> watermark; rebuilt from the next broadcasts after a restart
        self.source_wm: dict[int, dict[str, int]] = {}
        # partials partition -> zones with open steps, looked at again when that partition's watermarks move
        self.waiting = WaitingZones(settings.partitions, source_partitions, fs.lateness_s * 1000)

    async def score(self, events: list[Any]) -> None:
        t0 = time.perf_counter()
        if self.holder.predictor is not None:  # a model swapped in by a reload serves from this batch on
            self.processor.use(self.holder.predictor)
        if not self.waiting.seeded:  # zones restored from the changelog may hold open steps
            self.waiting.seed(list(self.zones.data.keys()))
        got = await self._gather(events)
        states = self._load_states(got.last_event, got.values)
        processor = self.processor
        dup0, late0, model0 = processor.duplicates, processor.late, processor.model_seconds
        risks = await asyncio.get_running_loop().run_in_executor(None, self._process, states, got.partials, got.recheck)
        for key, ev in got.last_event.items():
            self.waiting.update(ev.message.partition, key, states.get(key.decode()))
        if processor.model_seconds > model0:
            INFERENCE_SECONDS.observe(processor.model_seconds - model0)
        DUPLICATES.inc(processor.duplicates - dup0)
        LATE_STEPS.inc(processor.late - late0)
        STEPS_CLOSED.inc(len(risks))
        latest = await self._publish(risks)
        write_once_per_key(
            self.zones,
            {k: dumps(states[k.decode()].to_dict()) for k in got.last_event if k.decode() in states},
            got.last_event,
        )
        if risks and self.drift is not None:
            self.drift.observe(risks, self.key_metrics)
        if risks:
            EVENTS_OUT.labels(SERVICE, self.settings.topic(RISK.name)).inc(len(risks))
            await self.cache.set_many("risk", latest)
        EVENTS_IN.labels(SERVICE, self.partials_topic).inc(len(events))
        BATCH_SIZE.labels(SERVICE, "score").observe(len(events))
        BATCH_SECONDS.labels(SERVICE, "score").observe(time.perf_counter() - t0)

    async def _gather(self, events: list[Any]) -> Gathered:
        """Sort a batch: partials by partition, watermarks into ``source_wm``, the unusable to the dead letters."""
        got = Gathered()
        known: set[bytes] = set()
        moved: dict[int, Any] = {}  # partials partition whose watermarks moved -> an event of it
        for ev in events:
            q = ev.message.partition
            try:
                message = loads(ev.value or b"")
                why = partial_problem(message)
            except (ValueError, TypeError) as exc:
                why = f"undecodable: {type(exc).__name__}: {exc}"
            if why:  # never merged into a zone's state: dead-lettered with the reason
                DECODE_ERRORS.labels(SERVICE, self.partials_topic).inc()
                await dead_letter_event(self.app, self.settings, SERVICE, ev, [f"zone partial: {why}"])
                continue
            if "zone" not in message:
                marks = self.source_wm.setdefault(q, {})
                for p, ts in message["wm"].items():
                    if ts > marks.get(p, -1):
                        marks[p] = ts
                        moved[q] = ev
                continue
            key = message["zone"].encode()
            if key not in got.last_event and key not in known and self.fs.new_zones_per_minute > 0:
                with event_context(ev):
                    value = got.values[key] = self.zones.get(key)
                is_new = value is None
                site = message.get("site", "")
                if is_new and not self.new_zones.allow(site):
                    await dead_letter_event(self.app, self.settings, SERVICE, ev, [self.new_zones.reason(site)])
                    continue
                known.add(key)
            got.partials.setdefault(q, []).append(message)
            got.last_event[key] = ev
        for q, ev in moved.items():
            for key in self.waiting.due(q, self.source_wm.get(q, {})):
                if key not in got.last_event:
                    got.last_event[key] = ev
                    got.recheck[key.decode()] = q
        return got

    def _load_states(self, last_event: dict[bytes, Any], read: dict[bytes, Any]) -> dict[str, ZoneState]:
        states: dict[str, ZoneState] = {}
        for key, ev in last_event.items():
            if key in read:
                value = read[key]
            else:
                with event_context(ev):
                    value = self.zones.get(key)
            if value is not None:
                try:
                    states[key.decode()] = ZoneState.from_bytes(value)
                except Exception as exc:  # noqa: BLE001 - a state we cannot read is rebuilt, not a crash
                    log.error("zone %s: unreadable state dropped (%s)", key.decode(), exc)
        return states

    def _process(
        self, states: dict[str, ZoneState], partials: dict[int, list[dict[str, Any]]], recheck: dict[str, int]
    ) -> list[Any]:
        # every zone closes against the watermarks of its own partials partition; one model call for them all
        source_wm, processor = self.source_wm, self.processor
        zone_wm: dict[str, dict[str, int] | None] = {z: source_wm.get(q) for z, q in recheck.items() if z in states}
        for q, batch in partials.items():
            marks = source_wm.get(q)
            zone_wm.update(dict.fromkeys(processor.ingest(states, batch), marks))
        return processor.close_ready(states, list(zone_wm), zone_wm=zone_wm)

    async def _publish(self, risks: list[Any]) -> dict[str, Any]:
        """Send the risk records and wait for their acks; the latest per zone, for the cache."""
        latest: dict[str, Any] = {}
        delivered = []
        for risk in risks:
            body = risk.to_dict()
            delivered.append(await self.risk_topic.send(key=risk.zone.encode(), value=dumps(body)))
            latest[risk.zone] = body
            if self.zone_labels.admit(risk.zone):  # label values from ids: plain ones, and a bounded number
                ZONE_PROBABILITY.labels(risk.zone).set(risk.probability)
        await asyncio.gather(*delivered)
        return latest
