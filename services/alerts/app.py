"""The alerts service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

Two stages (see :mod:`services.alerts.worker`): stage 1 evaluates the inputs by the rules
(anomalies through a pump, the other inputs through an agent) onto the internal events topic;
stage 2, a pump on that topic (:mod:`services.alerts.state`), keeps alerts, groups and the outbox. Deliveries run beside
the stream (:mod:`services.alerts.dispatcher`) so a slow receiver never stalls a partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from services.alerts.api import AlertsApi, mount
from services.alerts.config import Config, load_config
from services.alerts.settings import AlertsSettings
from services.alerts.silences import Limits
from services.alerts.worker import AlertsWorker
from shared.auth import TokenStore
from shared.pump import Pump
from shared.service import base_app
from shared.settings import Settings


def create_app(
    settings: Settings | None = None, alerts_settings: AlertsSettings | None = None, config: Config | None = None
) -> faust.App:
    settings = settings or Settings.from_env("alerts")
    asettings = alerts_settings or AlertsSettings.from_env()
    config = (config or load_config(asettings.config_path)).with_external_url(asettings.external_url)
    app, state = base_app(
        settings,
        openapi=Path(__file__).with_name("openapi.yaml"),
        session_timeout_s=asettings.session_timeout_s,
        # Every hop of an alert (evaluate -> events, the outbox intent before a delivery, results) is one
        # record waited for: a linger would add itself to each. aiokafka keeps one request in flight per
        # broker, so what is produced meanwhile still goes out as one batch.
        producer_linger_ms=0,
    )
    # The alerts API also takes the tokens of its own older variable, besides everyone's FLOWWATCH_API_TOKENS.
    state.tokens.extend(TokenStore.load(asettings.tokens_env, asettings.tokens_file))
    worker = AlertsWorker(app, settings, asettings, config, state)
    app.flowwatch_alerts = worker  # type: ignore[attr-defined]
    out = worker.out
    mount(
        app,
        AlertsApi(
            config,
            state.tokens,
            worker.mirror,
            worker.silences,
            send_ack=out.ack,
            send_silence=out.silence,
            send_feedback=out.feedback,
            limits=Limits.of(asettings),
            max_silences=asettings.silence_max_count,
        ),
    )
    intake = Pump.around(app, worker.intake)
    intake.install(state, "anomalies")
    state_pump = Pump.around(app, worker.state_job)
    state_pump.install(state, "events")

    @app.agent(worker.input_topic)
    async def evaluate(stream: Any) -> None:
        await worker.inputs.run(stream)

    @app.agent(out.silence_commands)
    async def silence_writer(stream: Any) -> None:
        await worker.silence_keeper.run(stream)

    @app.on_partitions_assigned.connect
    async def _forget_schedule(sender: Any, assigned: Any, **_: Any) -> None:
        worker.state.forget()

    @app.timer(asettings.silence_gc_interval_s)
    async def collect_silences() -> None:
        await worker.silence_keeper.collect()

    @app.timer(asettings.tick_interval_s)
    async def tick() -> None:
        await worker.tick()

    @app.timer(5.0)
    async def check_redis() -> None:
        await worker.probe_redis()

    state.add_check("config", worker.config_check)
    state.add_check("redis", worker.redis.check)

    @app.on_before_shutdown.connect
    async def _shutdown(sender: Any, **_: Any) -> None:
        await intake.stop()  # the anomaly intake first: nothing new is evaluated while the worker lets go
        await state_pump.stop()  # then the state stage, checkpointed: deliveries in flight still report results
        await worker.close()

    return app


app = create_app()
