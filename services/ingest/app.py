"""The ingest service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

One worker serves every door: the readings agent on readings.raw (Kafka producers, and
the HTTP and MQTT doors, which write there too), POST /v1/readings on the Faust web
server, the MQTT subscription, the silence timer and the Redis cache writer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faust

from services.ingest import mappings
from services.ingest.http import ReadingsEndpoint, install
from services.ingest.mqtt import MqttBridge
from services.ingest.rules import Rules
from services.ingest.settings import IngestSettings
from services.ingest.sources import MappedSources
from services.ingest.worker import Ingest
from shared.pump import Pump
from shared.service import base_app
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, ingest_settings: IngestSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env("ingest")
    isettings = ingest_settings or IngestSettings.from_env()
    rules = Rules.load(isettings)
    app, state = base_app(
        settings,
        openapi=Path(__file__).with_name("openapi.yaml"),
        session_timeout_s=isettings.session_timeout_s,
    )
    ingest = Ingest(app, settings, isettings, rules, mappings.load(isettings.mappings_file))
    pump = Pump.around(app, ingest)
    app.flowwatch_ingest = ingest  # type: ignore[attr-defined]

    @app.agent(ingest.events_topic, name="ingest-sensor-events")
    async def sensor_events(stream: Any) -> None:
        await ingest.run_events(stream)

    @app.timer(isettings.silence_check_s, name="ingest-silence")
    async def silence() -> None:
        # A failed round (broker hiccup) is retried at the next tick; it must not crash the worker.
        try:
            await ingest.check_silence()
        except Exception:
            log.exception("silence check failed; retrying at the next tick")

    @app.timer(isettings.cache_flush_s, name="ingest-cache")
    async def cache() -> None:
        await ingest.flush_cache()

    sources = MappedSources(ingest, pump if isettings.sources_direct else None)
    if sources.routes:
        state.add_check("sources", sources.check)

        @app.task
        async def mapped_sources() -> None:
            await sources.run()

    endpoint = ReadingsEndpoint(ingest, isettings.resolved_token())
    install(app, endpoint)
    state.add_check("output", ingest.ready_check)
    pump.install(state, "readings")

    if isettings.mqtt_enabled:
        bridge = MqttBridge(ingest, settings.mqtt_url)
        app.flowwatch_mqtt = bridge  # type: ignore[attr-defined]
        state.add_check("mqtt", bridge.check)

        @app.task
        async def mqtt() -> None:
            await bridge.run()

    @app.on_before_shutdown.connect
    async def _shutdown(sender: Any, **_: Any) -> None:
        await pump.on_revoked()
        await endpoint.close()
        await ingest.stop()

    return app


app = create_app()
