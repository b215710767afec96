"""The console service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

One worker serves the operators' console and the public page (API under /api/, the built front
end elsewhere) and fans the live topics out to SSE clients through a group-less consumer, so every
replica has the whole feed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust

from services.console.api import ConsoleApi
from services.console.auth import MISSING, session_source
from services.console.infra import Infra
from services.console.live import Feed, Hub
from services.console.network import Topology
from services.console.pipeline_health import PipelineHealth
from services.console.routes import mount
from services.console.settings import ConsoleSettings
from services.console.upstream import Upstream, service_token
from shared.cache import Cache
from shared.codec import dumps
from shared.service import base_app
from shared.settings import Settings
from shared.topics import REPORTS, faust_topic


def create_app(settings: Settings | None = None, console_settings: ConsoleSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env("console")
    cs = console_settings or ConsoleSettings.from_env()
    app, state = base_app(settings, openapi=Path(__file__).with_name("openapi.yaml"))
    token = service_token(cs.service_token, state.tokens)
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service="console")
    hub = Hub(cs.live_queue, cs.live_max_clients)
    feed = Feed(settings, hub)
    health = PipelineHealth(cs.targets())
    reports = faust_topic(app, REPORTS, settings)
    infra = Infra(settings, cache, feed)

    async def send_report(record: dict[str, Any]) -> None:
        await (await reports.send(value=dumps(record)))

    api = ConsoleApi(
        cs,
        Topology.load(cs.network_file),
        cache,
        Upstream("history", cs.history_url, token, cs.upstream_timeout_s),
        Upstream("alerts", cs.alerts_url, token, cs.upstream_timeout_s),
        hub,
        health,
        send_report,
        infra.status,
    )
    infra.pool = lambda: api.pool
    state.add_principal_source(session_source(lambda: api.users), missing=MISSING)
    mount(app, state, api, Path(cs.web_dist) if cs.web_dist else Path(__file__).with_name("web") / "dist")
    # No consumer group: "joined" means the live feed reads from the topics' ends.
    state.add_check("live_feed", feed.check)
    state.add_check("database", lambda: (api.pool is not None, "connected" if api.pool else "connecting"))
    stop = asyncio.Event()

    @app.task
    async def run_console() -> None:
        await api.open(migrate=cs.migrate_on_start)
        state.joined = True
        await asyncio.gather(feed.run(), health.run(stop))

    @app.on_before_shutdown.connect
    async def _shutdown(sender: Any, **_: Any) -> None:
        stop.set()
        await feed.stop()
        await api.close()
        await health.close()
        await cache.close()

    return app


app = create_app()
