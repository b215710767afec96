"""The forecaster service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

Two stages, thin over pure code:

* stage 1 (readings.clean, keyed by sensor; no state): the readings pump
  (:mod:`shared.pump`) hands each fetch to :class:`~services.forecaster.worker.ReadingsFolder`,
  which folds it into one partial per zone (:mod:`services.forecaster.partials`) and sends
  those to the internal ``forecaster.zone-partials`` topic keyed by zone — a map-side
  combine instead of repartitioning every reading.
* stage 2 (zone partials, keyed by zone): the ``score_zones`` agent hands each batch to
  :class:`~services.forecaster.scoring.ZoneScorer`, which merges partials into the zone's
  state in the ``zones`` table, closes complete steps, runs both models and publishes
  ``Risk`` records keyed by zone.

The model is loaded at start in a thread (TensorFlow is imported then); until it is
loaded /ready says why and zone state keeps warming up without risk records. A
``models`` event for our model (every worker hears it), or a changed alias seen by the registry poll, hot-swaps
it (:mod:`shared.model_follower`).
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
from services.forecaster.metrics import (
    ZONES_EXPIRED,
)
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.retention import sweep_zones
from services.forecaster.scoring import ZoneScorer
from services.forecaster.serving import ModelHolder
from services.forecaster.settings import ForecasterSettings
from services.forecaster.worker import ReadingsFolder
from services.forecaster.zonestate import ZoneState
from shared.cache import Cache
from shared.limits import LabelSet
from shared.mlops.monitor import publish as publish_drift
from shared.pump import Pump
from shared.service import base_app
from shared.settings import Settings
from shared.table_route import table_page
from shared.topics import FORECASTER_ZONE_PARTIALS, READINGS_CLEAN, RISK, faust_topic

log = logging.getLogger(__name__)
SERVICE = "forecaster"
OPENAPI = Path(__file__).with_name("openapi.yaml")


def create_app(settings: Settings | None = None, forecaster_settings: ForecasterSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env(SERVICE)
    fs = forecaster_settings or ForecasterSettings.from_env()
    app, state = base_app(
        settings,
        openapi=OPENAPI,
        session_timeout_s=fs.session_timeout_s,
    )
    partials_topic = faust_topic(app, FORECASTER_ZONE_PARTIALS, settings)
    risk_topic = faust_topic(app, RISK, settings)
    # bytes in and out: Faust then uses the raw serializer for both store and changelog, and the value
    # encoding (orjson of ZoneState.to_dict) stays ours
    zones = app.Table("zones", default=None, key_type=bytes, value_type=bytes, partitions=settings.partitions)

    holder = ModelHolder(fs, settings.model_dir)
    state.add_check("model", holder.readiness)
    source_partitions = READINGS_CLEAN.partitions_for(settings)
    processor = ZoneProcessor(FeatureConfig.from_settings(fs), fs, None, source_partitions=source_partitions)
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE)
    app.forecaster = {"holder": holder, "processor": processor, "cache": cache, "zones": zones}  # type: ignore[attr-defined]

    # A backlog waiting at start is read once the model load has been tried (as in stage 2): with a model
    # in the registry its steps get risk records instead of only warming up the zones' state.
    folder = ReadingsFolder(app, settings, fs, partials_topic.get_topic_name(), holder.first_attempt.wait)
    pump = Pump.around(app, folder)
    pump.install(state, "readings")
    app.forecaster["folder"] = folder  # type: ignore[attr-defined]
    started = time.monotonic()
    zone_labels = LabelSet(fs.metric_zones)
    drift = ForecastDrift(fs, zone_labels) if fs.drift_check_s > 0 else None
    scorer = ZoneScorer(
        app, settings, fs, zones, risk_topic, holder, processor, cache, source_partitions, zone_labels, drift
    )
    app.forecaster["scorer"] = scorer  # type: ignore[attr-defined]

    @app.agent(partials_topic)
    async def score_zones(stream: Any) -> None:
        # Partials left by a previous worker close steps: with a model in the registry they must get risk
        # records, so nothing is scored before the first model load has been tried.
        await holder.first_attempt.wait()
        async for events in stream.take_events(fs.batch_size, fs.batch_within_s):
            await scorer.score(events)

    # An idle readings partition (no sensor hashes to it) must not hold every zone back until max_open_steps.
    # A partition idle for idle_partition_s with nothing waiting in it follows the event time of the partitions
    # this worker does see; before any data there is nothing to follow, so nothing is assumed.
    @app.timer(max(1.0, min(fs.idle_partition_s / 2, 5.0)))
    async def idle_watermarks() -> None:
        last_wm = folder.last_wm
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

    stop_following = asyncio.Event()

    @app.task
    async def follow_model() -> None:
        await holder.follow(app, settings, stop_following, fs.model_poll_s)

    @table_page(state, "/zones/{zone}", zones, "zone")
    async def zone_view(web: Any, request: Any, zone: str) -> Any:
        value = zones.get(zone.encode())
        if value is None:
            return web.json({"error": f"zone {zone!r} is not known"}, status=404)
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
                "model": holder.serving_label(),
            }
        )

    @app.on_before_shutdown.connect
    async def _stop(sender: Any, **_: Any) -> None:
        stop_following.set()
        await pump.stop()

    return app


app = create_app()
