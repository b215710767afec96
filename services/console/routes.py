"""The console's routes on the Faust web server: the API under /api/ and the built front end everywhere else.

The front end (``web/dist``) is served as files; any other non-API path answers ``index.html`` (the
app routes on the client), ``/public`` included. Without a build, those paths answer 503 saying how
to build it; the API works either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from aiohttp import web as aioweb
from faust.web import Request, View

from services.console.api import ConsoleApi, errors
from services.console.auth import role_of
from services.console.metrics import API_REQUESTS
from services.console.models import ModelsView
from services.console.upstream import service_token
from shared.service import ServiceState

log = logging.getLogger(__name__)
NOT_BUILT = "front end not built: run make console-web"


def mount(app: faust.App, state: ServiceState, api: ConsoleApi, dist: Path) -> None:
    def handler(endpoint: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        answer = errors(fn)

        async def respond(self: View, request: Request, **kw: Any) -> Any:
            try:
                result, code, headers = await answer(request, **kw)
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                result, code, headers = {"error": "internal error; see the console log"}, 500, None
            if isinstance(result, aioweb.StreamResponse):
                return result
            return aioweb.Response(
                body=orjson.dumps(result), status=code, content_type="application/json", headers=headers
            )

        # The service's shared guard (bearer token or session) admits the caller before the handler runs.
        guarded = state.guarded(role_of(fn), respond)

        async def run(self: View, request: Request, **kw: Any) -> Any:
            response = await guarded(self, request, **kw)
            API_REQUESTS.labels(endpoint, str(response.status)).inc()
            return response

        return run

    def page(path: str, endpoint: str, **methods: Callable[..., Awaitable[Any]]) -> None:
        name = "Console" + "".join(p.title() for p in endpoint.replace(".", "-").split("-"))
        app.page(path)(type(name, (View,), {m: handler(endpoint, f) for m, f in methods.items()}))

    page("/api/login", "login", post=api.login)
    page("/api/logout", "logout", post=api.logout)
    page("/api/me", "me", get=api.me)
    page("/api/network", "network", get=api.get_network)
    page("/api/overview", "overview", get=api.overview)
    page("/api/zones/{zone}", "zone", get=api.zone)
    page("/api/zones/{zone}/series", "zone-series", get=api.zone_series)
    page("/api/zones/{zone}/risk", "zone-risk", get=api.zone_risk)
    page("/api/zones/{zone}/losses", "zone-losses", get=api.zone_losses)
    page("/api/sensors/{id}", "sensor", get=api.sensor)
    page("/api/sensors/{id}/series", "sensor-series", get=api.sensor_series)
    page("/api/alerts", "alerts", get=api.list_alerts)
    page("/api/alerts/export.csv", "alerts-export", get=api.export_alerts)
    page("/api/alerts/{fp}/ack", "ack", post=api.ack)
    page("/api/alerts/{fp}/comment", "comment", post=api.comment)
    page("/api/alerts/{fp}/assign", "assign", post=api.assign)
    page("/api/alerts/{fp}/verdict", "verdict", post=api.verdict)
    page("/api/silences", "silences", get=api.list_silences, post=api.create_silence)
    page("/api/silences/{id}", "silence", delete=api.delete_silence)
    page("/api/history/anomaly-rates", "anomaly-rates", get=api.anomaly_rates)
    page("/api/history/alerts", "history-alerts", get=api.history_alerts)
    page("/api/history/episodes", "episodes", get=api.episodes)
    page("/api/history/episodes/{id}", "episode", get=api.episode)
    page("/api/history/playback", "playback", get=api.playback)
    page("/api/history/export.csv", "history-export", get=api.history_export)
    page("/api/report", "report", get=api.planners_report)
    page("/api/report.csv", "report-csv", get=api.planners_report_csv)
    page("/api/pipeline", "pipeline", get=api.pipeline)
    page("/api/models", "models", get=ModelsView(api, service_token(api.cs.service_token, state.tokens)).get)
    page("/api/reports", "reports", get=api.list_reports)
    page("/api/reports/{id}/triage", "triage", post=api.triage)
    page("/api/users", "users", get=api.list_users, post=api.add_user)
    page("/api/users/{name}", "user", patch=api.update_user)
    page("/api/live", "live", get=api.live)
    page("/api/public/localities", "localities", get=api.localities)
    page("/api/public/reports", "public-reports", post=api.submit_report)

    async def unknown_api(request: Any, **kw: Any) -> Any:
        return aioweb.json_response({"error": f"no endpoint {request.method} {request.path[:200]}"}, status=404)

    async def front_end(self: View, request: Request, **kw: Any) -> Any:
        path = request.path
        if path.startswith("/api/") or path == "/api" or request.method != "GET":
            return await unknown_api(request)
        index = dist / "index.html"
        if not index.is_file():
            return aioweb.Response(text=NOT_BUILT, status=503)
        relative = path.lstrip("/")
        if relative:
            candidate = (dist / relative).resolve()
            # Only files inside dist/: a path with .. never leaves it.
            if candidate.is_file() and candidate.is_relative_to(dist.resolve()):
                return aioweb.FileResponse(candidate)
        return aioweb.FileResponse(index, headers={"Cache-Control": "no-cache"})

    # Registered last: the catch-all answers only what no route above matched.
    app.page("/")(type("ConsoleIndex", (View,), {"get": front_end}))
    app.page("/{tail:.*}")(type("ConsoleFrontEnd", (View,), {"get": front_end, "post": front_end}))
