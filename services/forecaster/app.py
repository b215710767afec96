"""The forecaster service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

Two stages, thin over pure code:

* stage 1 (readings.clean, keyed by sensor; no state): the readings pump
  (:mod:`shared.pump`) hands each fetch to :class:`~services.forecaster.folding.ReadingsFolder`,
  which folds it into one partial per zone (:mod:`services.forecaster.partials`) and sends
  those to the internal ``forecaster.zone-partials`` topic keyed by zone — a map-side
  combine instead of repartitioning every reading.
* ``score_zones`` (zone partials, keyed by zone): merges partials into the zone's
  state in the ``zones`` table, closes complete steps and runs both models in
  batches (:class:`services.forecaster.pipeline.ZoneProcessor`, in a worker thread so
  the event loop keeps heartbeating); writes each zone once per batch in its own
  partition (pitfall 10); publishes ``Risk`` records keyed by zone and caches the
  latest per zone in Redis (kind ``risk``).

The model is loaded at start in a thread (TensorFlow is imported then); until it is
loaded /ready says why and zone state keeps warming up without risk records. A
``models`` event for our model, or a changed alias seen by the poll timer, hot-swaps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust

from services.forecaster.drift import ForecastDrift
from services.forecaster.features import FeatureConfig
from services.forecaster.folding import ReadingsFolder
from services.forecaster.metrics import (
    DUPLICATES,
    INFERENCE_SECONDS,
    LATE_STEPS,
    STEPS_CLOSED,
    ZONE_PROBABILITY,
    ZONES_EXPIRED,
)
from services.forecaster.partials import problem as partial_problem
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.retention import sweep_zones
from services.forecaster.runtime import ModelHolder
from services.forecaster.settings import ForecasterSettings
from services.forecaster.waiting import WaitingZones
from services.forecaster.zonestate import ZoneState
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.limits import LabelSet, NewIdBudget
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.mlops.monitor import publish as publish_drift
from shared.records import ModelEvent
from shared.registry import check_event
from shared.service import base_app
from shared.settings import Settings
from shared.streaming import dead_letter_event, event_context, write_once_per_key
from shared.topics import FORECASTER_ZONE_PARTIALS, MODELS, READINGS_CLEAN, RISK, faust_topic

log = logging.getLogger(__name__)
SERVICE = "forecaster"
OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(settings: Settings | None = None, forecaster_settings: ForecasterSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env(SERVICE)
    fs = forecaster_settings or ForecasterSettings.from_env()
    app, state = base_app(
        settings,
        openapi=OPENAPI,
        broker_session_timeout=fs.session_timeout_s,
        broker_heartbeat_interval=min(3.0, fs.session_timeout_s / 4),
        broker_rebalance_timeout=max(fs.session_timeout_s, 10.0),
    )
    partials_topic = faust_topic(app, FORECASTER_ZONE_PARTIALS, settings)
    risk_topic = faust_topic(app, RISK, settings)
    models_topic = faust_topic(app, MODELS, settings)
    # bytes in and out: Faust then uses the raw serializer for both store and changelog, and the value
    # encoding (orjson of ZoneState.to_dict) stays ours
    zones = app.Table("zones", default=None, key_type=bytes, value_type=bytes, partitions=settings.partitions)

    holder = ModelHolder(fs, settings.model_dir)
    state.add_check("model", holder.check)
    source_partitions = READINGS_CLEAN.partitions_for(settings)
    processor = ZoneProcessor(FeatureConfig.from_settings(fs), fs, None, source_partitions=source_partitions)
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE)
    app.forecaster = {"holder": holder, "processor": processor, "cache": cache, "zones": zones}  # type: ignore[attr-defined]

    def use_model() -> None:
        """Point the processor at the holder's current model (between batches only)."""
        predictor = holder.predictor
        if predictor is not None and processor.models is not predictor:
            processor.config = predictor.config
            processor.feature_names = predictor.config.risk_feature_names
            processor.models = predictor

    # A backlog waiting at start is read once the model load has been tried (as in stage 2): with a model
    # in the registry its steps get risk records instead of only warming up the zones' state.
    folder = ReadingsFolder(app, settings, fs, partials_topic.get_topic_name(), holder.first_attempt.wait)
    folder.pump.install(state, "readings")
    app.forecaster["folder"] = folder  # type: ignore[attr-defined]
    started = time.monotonic()
    zone_labels = LabelSet(fs.metric_zones)
    drift = ForecastDrift(fs, zone_labels) if fs.drift_check_s > 0 else None
    key_metrics = fs.key_metric_by_utility
    new_zones = NewIdBudget(fs.new_zones_per_minute)

    # partials partition -> source partition -> watermark; rebuilt from the next broadcasts after a restart
    source_wm: dict[int, dict[str, int]] = {}

    # partials partition -> zones with open steps, looked at again when that partition's watermarks move
    waiting = WaitingZones(settings.partitions, source_partitions, fs.lateness_s * 1000)

    def _process(
        states: dict[str, ZoneState], partials: dict[int, list[dict[str, Any]]], recheck: dict[str, int]
    ) -> list[Any]:
        # every zone closes against the watermarks of its own partials partition; one model call for them all
        zone_wm: dict[str, dict[str, int] | None] = {z: source_wm.get(q) for z, q in recheck.items() if z in states}
        for q, batch in partials.items():
            marks = source_wm.get(q)
            zone_wm.update(dict.fromkeys(processor.ingest(states, batch), marks))
        return processor.close_ready(states, zone_wm, zone_wm=zone_wm)

    @app.agent(partials_topic)
    async def score_zones(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        # Partials left by a previous worker close steps: with a model in the registry they must get risk
        # records, so nothing is scored before the first model load has been tried.
        await holder.first_attempt.wait()
        async for events in stream.take_events(fs.batch_size, fs.batch_within_s):
            t0 = time.perf_counter()
            use_model()
            partials: dict[int, list[dict[str, Any]]] = {}
            last_event: dict[bytes, Any] = {}
            known: set[bytes] = set()
            moved: dict[int, Any] = {}  # partials partition whose watermarks moved -> an event of it
            if not waiting.seeded:  # zones restored from the changelog may hold open steps
                waiting.seed(list(zones.data.keys()))
            for ev in events:
                q = ev.message.partition
                try:
                    message = loads(ev.value or b"")
                    why = partial_problem(message)
                except (ValueError, TypeError) as exc:
                    why = f"undecodable: {type(exc).__name__}: {exc}"
                if why:  # never merged into a zone's state: dead-lettered with the reason
                    DECODE_ERRORS.labels(SERVICE, "zone-partials").inc()
                    await dead_letter_event(app, settings, SERVICE, ev, [f"zone partial: {why}"])
                    continue
                if "zone" not in message:
                    marks = source_wm.setdefault(q, {})
                    for p, ts in message["wm"].items():
                        if ts > marks.get(p, -1):
                            marks[p] = ts
                            moved[q] = ev
                    continue
                zone = message["zone"]
                key = zone.encode()
                if key not in last_event and key not in known and fs.new_zones_per_minute > 0:
                    with event_context(ev):
                        is_new = zones.get(key) is None
                    if is_new and not new_zones.allow(message.get("site", "")):
                        await dead_letter_event(app, settings, SERVICE, ev, [new_zones.reason(message.get("site", ""))])
                        continue
                    known.add(key)
                partials.setdefault(q, []).append(message)
                last_event[key] = ev
            recheck: dict[str, int] = {}
            for q, ev in moved.items():
                for key in waiting.due(q, source_wm.get(q, {})):
                    if key not in last_event:
                        last_event[key] = ev
                        recheck[key.decode()] = q
            states: dict[str, ZoneState] = {}
            for key, ev in last_event.items():
                with event_context(ev):
                    value = zones.get(key)
                if value is not None:
                    try:
                        states[key.decode()] = ZoneState.from_bytes(value)
                    except Exception as exc:  # noqa: BLE001 - a state we cannot read is rebuilt, not a crash
                        log.error("zone %s: unreadable state dropped (%s)", key.decode(), exc)
            dup0, late0 = processor.duplicates, processor.late
            model0 = processor.model_seconds
            risks = await loop.run_in_executor(None, _process, states, partials, recheck)
            for key, ev in last_event.items():
                waiting.update(ev.message.partition, key, states.get(key.decode()))
            if processor.model_seconds > model0:
                INFERENCE_SECONDS.observe(processor.model_seconds - model0)
            DUPLICATES.inc(processor.duplicates - dup0)
            LATE_STEPS.inc(processor.late - late0)
            STEPS_CLOSED.inc(len(risks))
            latest: dict[str, Any] = {}
            delivered = []
            for risk in risks:
                body = risk.to_dict()
                delivered.append(await risk_topic.send(key=risk.zone.encode(), value=dumps(body)))
                latest[risk.zone] = body
                if zone_labels.admit(risk.zone):  # label values from ids: plain ones, and a bounded number
                    ZONE_PROBABILITY.labels(risk.zone).set(risk.probability)
            # The risk records are on the broker before the zone states that closed their steps: a crash in
            # between repeats a risk record (consumers dedup on zone + ts) rather than losing it.
            await asyncio.gather(*delivered)
            write_once_per_key(
                zones,
                {k: dumps(states[k.decode()].to_dict()) for k in last_event if k.decode() in states},
                last_event,
            )
            if risks and drift is not None:
                drift.observe(risks, key_metrics)
            if risks:
                EVENTS_OUT.labels(SERVICE, RISK.name).inc(len(risks))
                await cache.set_many("risk", latest)
            EVENTS_IN.labels(SERVICE, "zone-partials").inc(len(events))
            BATCH_SIZE.labels(SERVICE, "score").observe(len(events))
            BATCH_SECONDS.labels(SERVICE, "score").observe(time.perf_counter() - t0)

    @app.agent(models_topic)
    async def model_events(stream: Any) -> None:
        async for events in stream.take_events(100, 1.0):
            for ev in events:
                try:
                    event = ModelEvent.from_dict(loads(ev.value or b""))
                    why = check_event(event)
                except (ValueError, TypeError) as exc:
                    why = f"undecodable: {type(exc).__name__}: {exc}"
                if why:
                    DECODE_ERRORS.labels(SERVICE, MODELS.name).inc()
                    await dead_letter_event(app, settings, SERVICE, ev, [f"models event: {why}"])
                    continue
                if event.name == fs.model_name and event.alias == fs.model_alias:
                    await holder.refresh(f"{event.action} event: {event.name} {event.alias} -> {event.version}")

    # An idle readings partition (no sensor hashes to it) must not hold every zone back until max_open_steps.
    # A partition idle for idle_partition_s with nothing waiting in it follows the event time of the partitions
    # this worker does see; before any data there is nothing to follow, so nothing is assumed.
    @app.timer(max(1.0, min(fs.idle_partition_s / 2, 5.0)))
    async def idle_watermarks() -> None:
        last_wm, pump = folder.last_wm, folder.pump
        if not last_wm:
            return
        now = time.monotonic()
        marks = {}
        for p in pump.local_partitions():
            lag = pump.lags.get(p)
            if lag is None or lag > 0 or now - folder.last_event_at.get(p, started) <= fs.idle_partition_s:
                continue
            others = [ts for q, ts in last_wm.items() if q != str(p)]
            if others:
                marks[str(p)] = max(others)
        await folder.broadcast(marks)

    if drift is not None:

        @app.timer(fs.drift_check_s)
        async def check_drift() -> None:
            await publish_drift(app, settings, drift.take_events())

    @app.timer(fs.zone_sweep_s)
    async def expire_zones() -> None:
        if fs.zone_ttl_s > 0:
            cutoff = int(time.time() * 1000) - fs.zone_ttl_s * 1000
            gone = sweep_zones(zones, partials_topic.get_topic_name(), settings.partitions, cutoff)
            if gone:
                ZONES_EXPIRED.inc(len(gone))
                log.info("deleted %d zones silent for more than %ds", len(gone), fs.zone_ttl_s)

    @app.task
    async def load_model() -> None:
        await holder.refresh("start")

    # Every worker polls the registry too: a models event reaches one consumer of the group only.
    @app.timer(fs.model_poll_s)
    async def poll_model() -> None:
        await holder.refresh("registry poll")

    @state.api_page("/zones/{zone}", "viewer")
    async def zone_view(web: Any, request: Any, zone: str) -> Any:
        value = zones.get(zone.encode())
        if value is None:
            return web.json({"error": f"zone {zone!r} is not known to this worker"}, status=404)
        st = ZoneState.from_bytes(value)
        return web.json(
            {
                "zone": st.zone,
                "site": st.site,
                "utility": st.utility,
                "last_step_ts": (st.last_step + 1) * st.step_ms if st.last_step >= 0 else None,
                "open_steps": sorted(st.open),
                "sensors": len(st.sensors),
                "late_partials": st.late,
                "forecast_next": st.pending,
                "incident": st.incident,
                "model": holder.check()[1],
            }
        )

    @app.on_before_shutdown.connect
    async def _stop(sender: Any, **_: Any) -> None:
        await folder.pump.on_revoked()
        await folder.stop()

    return app


app = create_app()
