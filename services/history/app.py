"""The history service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

One worker runs the sink (every kept topic -> PostgreSQL, one transaction per micro-batch)
and serves the history API on the Faust web server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from services.history.api import HistoryApi, mount
from services.history.settings import HistorySettings
from services.history.worker import Sink
from shared.auth import TokenStore
from shared.codec import dumps
from shared.service import base_app
from shared.settings import Settings
from shared.topics import FEEDBACK, faust_topic


def create_app(settings: Settings | None = None, history_settings: HistorySettings | None = None) -> faust.App:
    settings = settings or Settings.from_env("history")
    hs = history_settings or HistorySettings.from_env()
    app, state = base_app(settings, openapi=Path(__file__).with_name("openapi.yaml"))
    sink = Sink(settings, hs)
    feedback = faust_topic(app, FEEDBACK, settings)

    async def send_feedback(record: dict[str, Any]) -> None:
        await feedback.send(key=record["fingerprint"].encode(), value=dumps(record))

    api = HistoryApi(hs, TokenStore.from_settings(settings), send_feedback)
    app.flowwatch_history = sink  # type: ignore[attr-defined]
    mount(app, api)
    # The sink has its own consumer group (no Faust agent): its assignment is what "joined" means here.
    state.add_check("sink", sink.check)
    sink.on_assigned = lambda: setattr(state, "joined", True)

    @app.task
    async def run_sink() -> None:
        await api.open()
        await sink.run()

    @app.on_before_shutdown.connect
    async def _shutdown(sender: Any, **_: Any) -> None:
        await sink.stop()
        await api.close()

    return app


app = create_app()
