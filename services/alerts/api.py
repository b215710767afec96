"""The HTTP API, Alertmanager-flavoured: alerts, acks, silences, feedback. Token auth with roles.

Reads come from the Redis mirror (alerts) and the silences table; writes become
events on Kafka that the owning worker applies, so the tables stay the only source
of truth. Every refusal is a 4xx with a JSON ``{"error": ...}`` saying why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.web import Request, Response, View

from services.alerts import transitions
from services.alerts.config import Config
from services.alerts.matchers import Matcher, MatcherError, parse_matchers
from services.alerts.metrics import API_REQUESTS
from services.alerts.mirror import Mirror, Unavailable
from services.alerts.silences import (
    Limits,
    SilenceError,
    new_silence,
    regex_matchers,
    rfc3339,
    status,
    updated_silence,
)
from services.alerts.silences import view as silence_view
from shared.auth import NOT_CONFIGURED, USER_HEADER, AuthError, Principal, TokenStore, authorize
from shared.codec import loads

log = logging.getLogger(__name__)
VERDICTS = ("true_positive", "false_positive")
UNCONFIGURED = NOT_CONFIGURED + " (or FLOWWATCH_ALERTS_TOKENS / FLOWWATCH_ALERTS_TOKENS_FILE)"


MAX_BODY = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class AlertsApi:
    """The dependencies of the views; the Faust app wires it (see app.py)."""

    def __init__(
        self,
        config: Config,
        tokens: TokenStore,
        mirror: Mirror,
        silences: Any,
        *,
        send_ack: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]],
        send_silence: Callable[[str, dict[str, Any] | None], Awaitable[None]],
        send_feedback: Callable[[dict[str, Any]], Awaitable[None]],
        limits: Limits = Limits(),
        max_silences: int = 1000,
    ):
        self.limits = limits
        self.max_silences = max_silences
        self._matching = asyncio.Semaphore(1)
        self.config = config
        self.tokens = tokens
        self.mirror = mirror
        self.silences = silences
        self.send_ack = send_ack
        self.send_silence = send_silence
        self.send_feedback = send_feedback

    def authorize(self, request: Request, role: str) -> Principal:
        try:
            return authorize(
                self.tokens,
                request.headers.get("Authorization"),
                role,
                UNCONFIGURED,
                acting_for=request.headers.get(USER_HEADER),
            )
        except AuthError as exc:
            raise ApiError(exc.status, str(exc), exc.headers) from None

    async def body(self, request: Request) -> Any:
        if (request.content_length or 0) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        if not raw:
            raise ApiError(400, "request body is empty; send a JSON object")
        try:
            return loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None

    # ------------------------------------------------------------------------------------------ alerts

    def _silences(self) -> list[dict[str, Any]]:
        return [s for s in self.silences.values() if s]

    async def _with_status(
        self, alerts: list[dict[str, Any]], matchers: tuple[Matcher, ...] = ()
    ) -> list[dict[str, Any]]:
        """The alerts the filter matches, with their status; the matching runs in a worker thread, one call at a
        time: thousands of alerts against hundreds of silences must not hold the event loop (the worker's
        heartbeats, its stream, every other request)."""
        silences = self._silences()  # the table is read here, on the loop
        async with self._matching:
            return await asyncio.to_thread(self._views, alerts, matchers, silences)

    def _views(
        self, alerts: list[dict[str, Any]], matchers: tuple[Matcher, ...], silences: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        now_ms = int(time.time() * 1000)
        alerts = [a for a in alerts if all(m.matches(a["labels"]) for m in matchers)]
        firing = [a for a in alerts if a["status"] == "firing"]
        sup = transitions.Suppression.build(self.config, silences, firing, now_ms)
        out = []
        for a in alerts:
            silenced = sup.silenced_by(a["labels"]) if a["status"] == "firing" else []
            inhibited = a["status"] == "firing" and sup.inhibited(a)
            view = transitions.alert_view(a, self.config.external_url)
            view.update(
                {
                    "updatedAt": rfc3339(a["updated_at"]),
                    "receivers": sorted({r.receiver for r in self.config.route.match(a["labels"])}),
                    "count": a.get("count", 1),
                    "ack": {"by": a["acked_by"], "at": rfc3339(a["acked_at"]), "comment": a.get("ack_comment", "")}
                    if a.get("acked_by")
                    else None,
                    "state": "suppressed"
                    if (silenced or inhibited)
                    else ("active" if a["status"] == "firing" else "resolved"),
                    "silencedBy": silenced,
                    "inhibited": inhibited,
                }
            )
            out.append(view)
        return out

    async def list_alerts(self, request: Request) -> dict[str, Any]:
        self.authorize(request, "viewer")
        q = request.query
        try:
            matchers = parse_matchers(q.getall("filter", []))
        except MatcherError as exc:
            raise ApiError(400, f"filter: {exc}") from None
        wanted_status = q.get("status")
        if wanted_status not in (None, "firing", "resolved"):
            raise ApiError(400, "status: use firing or resolved")
        alerts = await self.mirror.all_alerts()
        if wanted_status:
            alerts = [a for a in alerts if a["status"] == wanted_status]
        views = await self._with_status(alerts, matchers)
        for flag, key in (("silenced", "silencedBy"), ("inhibited", "inhibited")):
            if flag in q:
                want = q[flag].lower() in ("1", "true", "yes")
                views = [v for v in views if bool(v[key]) == want]
        if "receiver" in q:
            views = [v for v in views if q["receiver"] in v["receivers"]]
        views.sort(key=lambda v: (v["status"] != "firing", v["startsAt"]), reverse=False)
        return {"alerts": views, "count": len(views)}

    async def get_alert(self, request: Request, fingerprint: str) -> dict[str, Any]:
        self.authorize(request, "viewer")
        alert = await self.mirror.alert(fingerprint)
        if alert is None:
            raise ApiError(404, f"no alert with fingerprint {fingerprint[:64]!r}")
        [view] = await self._with_status([alert])
        return view

    async def ack(self, request: Request, fingerprint: str) -> dict[str, Any]:
        who = self.authorize(request, "operator")
        body = await self.body(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        alert = await self.mirror.alert(fingerprint)
        if alert is None:
            raise ApiError(404, f"no alert with fingerprint {fingerprint[:64]!r}")
        if alert["status"] != "firing":
            raise ApiError(409, "alert is resolved; nothing to acknowledge")
        comment = _text(body, "comment", 1000)
        await self.send_ack(alert, {"type": "ack", "fingerprint": fingerprint, "by": who.name, "comment": comment})
        # Read-your-write: wait briefly for the agent to apply it.
        for _ in range(50):
            current = await self.mirror.alert(fingerprint)
            if current and current.get("acked_by"):
                return {"status": "acknowledged", "fingerprint": fingerprint, "by": who.name}
            await asyncio.sleep(0.1)
        return {"status": "accepted", "fingerprint": fingerprint, "by": who.name}

    # ------------------------------------------------------------------------------------------ silences

    async def list_silences(self, request: Request) -> list[dict[str, Any]]:
        self.authorize(request, "viewer")
        now_ms = int(time.time() * 1000)
        state = request.query.get("state")
        out = [silence_view(s, now_ms) for s in self._silences()]
        if state:
            out = [s for s in out if s["status"]["state"] == state]
        return sorted(out, key=lambda s: s["endsAt"], reverse=True)

    async def create_silence(self, request: Request) -> dict[str, Any]:
        """A new silence: the server assigns its id, its author is the token's identity."""
        who = self.authorize(request, "operator")
        now_ms = int(time.time() * 1000)
        try:
            silence = new_silence(await self.body(request), now_ms, who.name, self.limits)
        except SilenceError as exc:
            raise ApiError(400, str(exc)) from None
        live = sum(1 for s in self._silences() if status(s, now_ms) != "expired")
        if live >= self.max_silences:
            raise ApiError(409, f"{live} silences are pending or active (limit {self.max_silences}); expire some first")
        self._regex_budget(silence, now_ms)
        return await self._store(silence, now_ms)

    def _regex_budget(self, silence: dict[str, Any], now_ms: int) -> None:
        """Refuse a silence that would take the live silences' regular expressions over their budget."""
        others = [s for s in self._silences() if s["id"] != silence["id"]]
        total = regex_matchers([*others, silence], now_ms)
        if total > self.limits.max_regex_total:
            raise ApiError(
                409,
                f"the silences not yet expired would hold {total} regular-expression matchers (limit "
                f"{self.limits.max_regex_total}): every alert is matched against each; use = matchers or expire some",
            )

    async def update_silence(self, request: Request, silence_id: str) -> dict[str, Any]:
        """Change a silence's matchers, times or comment; its id and author stay (author or admin only)."""
        who = self.authorize(request, "operator")
        existing = self.silences.get(silence_id) if silence_id.isascii() else None
        if existing is None:
            raise ApiError(404, f"no silence {silence_id[:64]!r}")
        if existing["created_by"] != who.name and not who.can("admin"):
            raise ApiError(403, "only its author or an admin may change a silence")
        now_ms = int(time.time() * 1000)
        if status(existing, now_ms) == "expired":
            raise ApiError(409, "silence has expired; create a new one")
        try:
            silence = updated_silence(existing, await self.body(request), now_ms, who.name, self.limits)
        except SilenceError as exc:
            raise ApiError(400, str(exc)) from None
        self._regex_budget(silence, now_ms)
        return await self._store(silence, now_ms)

    async def _store(self, silence: dict[str, Any], now_ms: int) -> dict[str, Any]:
        await self.send_silence(silence["id"], silence)
        applied = await self._wait(lambda: (self.silences.get(silence["id"]) or {}).get("updated_at") == now_ms)
        return {"silenceID": silence["id"], "applied": applied}

    async def delete_silence(self, request: Request) -> dict[str, Any]:
        who = self.authorize(request, "operator")
        sid = request.query.get("id") or request.match_info.get("silence_id")
        if not sid:
            raise ApiError(400, "give the silence id: DELETE /v1/silences/{id} or ?id=")
        silence = self.silences.get(sid) if sid.isascii() else None
        if silence is None:
            raise ApiError(404, f"no silence {sid[:64]!r}")
        if silence["created_by"] != who.name and not who.can("admin"):
            raise ApiError(403, "only its author or an admin may expire a silence")
        now_ms = int(time.time() * 1000)
        if status(silence, now_ms) == "expired":
            raise ApiError(409, "silence has already expired")
        expired = {**silence, "ends_at": now_ms, "starts_at": min(silence["starts_at"], now_ms), "updated_at": now_ms}
        await self.send_silence(sid, expired)
        applied = await self._wait(lambda: (self.silences.get(sid) or {}).get("updated_at") == now_ms)
        return {"silenceID": sid, "status": "expired", "applied": applied}

    async def _wait(self, done: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Read-your-write when the table catches up quickly; the change is durable on Kafka either way."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # ------------------------------------------------------------------------------------------ feedback

    async def feedback(self, request: Request) -> dict[str, Any]:
        who = self.authorize(request, "operator")
        body = await self.body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object with fingerprint and verdict")
        fp, verdict = body.get("fingerprint"), body.get("verdict")
        if not isinstance(fp, str) or not fp:
            raise ApiError(400, "fingerprint: is required")
        if verdict not in VERDICTS:
            raise ApiError(400, f"verdict: must be one of {', '.join(VERDICTS)}")
        alert = await self.mirror.alert(fp)
        if alert is None:
            raise ApiError(404, f"no alert with fingerprint {fp[:64]!r}")
        record = {
            "fingerprint": fp,
            "verdict": verdict,
            "ts": int(time.time() * 1000),
            "author": who.name,
            "comment": _text(body, "comment", 2000),
            "labels": alert["labels"],
            "v": 1,
        }
        await self.send_feedback(record)
        return {"status": "recorded", **record}


def _text(body: dict[str, Any], field: str, limit: int) -> str:
    """An optional string field of a request body, at most ``limit`` characters; anything else is a 400."""
    value = body.get(field, "")
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: must be a string")
    if len(value) > limit:
        raise ApiError(400, f"{field}: at most {limit} characters")
    return value


def mount(app: faust.App, api: AlertsApi) -> None:
    """Register the views on the Faust web server."""

    def handler(endpoint: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Response]]:
        async def run(self: View, request: Request, **kw: Any) -> Response:
            headers = None
            try:
                result = await fn(request, **kw)
                code = 200
            except ApiError as exc:
                result, code, headers = {"error": str(exc)}, exc.status, exc.headers
            except Unavailable as exc:
                result, code, headers = {"error": str(exc)}, 503, {"Retry-After": "5"}
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                result, code = {"error": "internal error; see the alerts log"}, 500
            API_REQUESTS.labels(endpoint, str(code)).inc()
            return self.json(result, status=code, headers=headers)

        return run

    app.page("/v1/alerts")(type("AlertsList", (View,), {"get": handler("alerts", api.list_alerts)}))
    app.page("/v1/alerts/{fingerprint}")(type("AlertOne", (View,), {"get": handler("alert", api.get_alert)}))
    app.page("/v1/alerts/{fingerprint}/ack")(type("AlertAck", (View,), {"post": handler("ack", api.ack)}))
    app.page("/v1/silences")(
        type(
            "Silences",
            (View,),
            {
                "get": handler("silences", api.list_silences),
                "post": handler("silences", api.create_silence),
                "delete": handler("silences", api.delete_silence),
            },
        )
    )
    app.page("/v1/silences/{silence_id}")(
        type(
            "SilenceOne",
            (View,),
            {
                "put": handler("silences", api.update_silence),
                "delete": handler("silences", lambda request, silence_id: api.delete_silence(request)),
            },
        )
    )
    app.page("/v1/feedback")(type("Feedback", (View,), {"post": handler("feedback", api.feedback)}))
