"""The console's JSON API under /api/ on the Faust web server: auth, the operators' views, the public side.

Each handler declares the role it needs (:func:`services.console.auth.needs`; the routes guard it with the
service's shared :class:`shared.auth.Guard`: a bearer token or a session cookie), then answers from Redis (the
services' read cache) or the history and alerts APIs (called with the console's delegate token on behalf of
the session's user); its own database holds only its users and sessions. A refusal is a 4xx ``{"error": ...}`` naming the reason or the field.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from aiohttp import web as aioweb

from services.console import public
from services.console.auth import COOKIE, ApiError, needs
from services.console.live import Hub, frame
from services.console.metrics import LOGINS, REPORTS
from services.console.network import Topology
from services.console.pipeline_health import PipelineHealth
from services.console.ratelimit import RateLimit
from services.console.settings import ConsoleSettings
from services.console.status import Status
from services.console.upstream import Upstream, UpstreamError
from services.console.users import UserError, Users
from services.history import report
from shared.auth import Principal, principal_of
from shared.cache import Cache
from shared.timeutil import parse_duration_s

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
ANNOTATIONS_PER_REQUEST = 200  # fingerprints per annotations request (see list_alerts)
ALERT_CSV = (
    "fingerprint alertname severity status site zone startsAt endsAt ack_by ack_at ack_note assignee verdict summary"
)
ALERT_CSV_COLUMNS = tuple(ALERT_CSV.split())


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> aioweb.Response:
    return aioweb.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def csv_reply(text: str, filename: str) -> aioweb.Response:
    return aioweb.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def rfc3339(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class ConsoleApi:
    """The views' dependencies; app.py wires them and opens the pool and clients at start."""

    def __init__(
        self,
        cs: ConsoleSettings,
        topology: Topology,
        cache: Cache,
        history: Upstream,
        alerts: Upstream,
        hub: Hub,
        health: PipelineHealth,
        send_report: Callable[[dict[str, Any]], Awaitable[None]],
        infra: Callable[[], Awaitable[dict[str, str]]],
    ):
        self.cs = cs
        self.topology = topology
        self.network = topology.describe()
        self.cache = cache
        self.history = history
        self.alerts = alerts
        self.hub = hub
        self.health = health
        self.send_report = send_report
        self.infra = infra
        self.pool: asyncpg.Pool | None = None
        self.users: Users | None = None
        self.status: Status | None = None
        self.login_by_ip = RateLimit(cs.login_attempts, cs.login_window_s)
        self.login_by_name = RateLimit(cs.login_attempts, cs.login_window_s)
        self.reports_by_ip = RateLimit(cs.report_limit, cs.report_window_s)

    async def open(self, migrate: bool = True) -> None:
        """Connect to the database (retrying until it answers) and apply pending migrations if asked."""
        from services.history import store

        while True:
            try:
                pool = await asyncpg.create_pool(
                    self.cs.database_url, min_size=1, max_size=max(1, self.cs.pool_size), command_timeout=30
                )
                if migrate:
                    async with pool.acquire() as conn:
                        await store.migrate(conn)
                break
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("console database not reachable (retrying in 5 s): %s", type(exc).__name__)
                await asyncio.sleep(5)
        self.pool = pool
        self.users = Users(self.pool, self.cs.session_ttl_s)
        self.status = Status(self.topology, self.cache)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _ready(self) -> tuple[Users, Status, asyncpg.Pool]:
        if self.users is None or self.status is None or self.pool is None:
            raise ApiError(503, "the console is still connecting to its database", {"Retry-After": "5"})
        return self.users, self.status, self.pool

    async def who(self, request: Any, role: str = "viewer") -> Principal:
        """The caller the route's guard admitted (:func:`services.console.auth.needs` declares a handler's
        role), held to ``role`` too."""
        who = principal_of(request)
        if not who.can(role):
            raise ApiError(403, f"role {who.role!r} may not do this; needs {role!r} or above")
        return who

    async def body(self, request: Any) -> dict[str, Any]:
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise ApiError(400, "body: not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body: must be a JSON object")
        storable(data, "body")
        return data

    def client_address(self, request: Any) -> str:
        if self.cs.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[0].strip()[:64]
        return request.remote or "unknown"

    # --- auth -----------------------------------------------------------------------------------

    @needs("public")
    async def login(self, request: Any) -> Any:
        users, _, _ = self._ready()
        body = await self.body(request)
        name, password = body.get("username"), body.get("password")
        if not isinstance(name, str) or not name or not isinstance(password, str) or not password:
            raise ApiError(400, "username and password: both are required (text)")
        ip, key = self.client_address(request), name[:200]
        wait = max(self.login_by_ip.retry_after(ip), self.login_by_name.retry_after(key))
        if wait:
            LOGINS.labels("limited").inc()
            raise ApiError(429, "too many failed logins; try again later", {"Retry-After": str(math.ceil(wait))})
        user = await users.authenticate(name, password)
        if user is None:
            self.login_by_ip.hit(ip)
            self.login_by_name.hit(key)
            LOGINS.labels("refused").inc()
            raise ApiError(401, "wrong username or password")
        self.login_by_name.reset(key)
        session_id, csrf = await users.open_session(user["name"])
        LOGINS.labels("ok").inc()
        response = reply({"user": {"name": user["name"], "role": user["role"]}, "csrf": csrf})
        response.set_cookie(
            COOKIE, session_id, httponly=True, samesite="Strict", secure=self.cs.secure_cookies, path="/"
        )
        return response

    @needs("viewer")
    async def logout(self, request: Any) -> Any:
        who = principal_of(request)
        if who.session_id:
            users, _, _ = self._ready()
            await users.close_session(who.session_id)
        response = aioweb.Response(status=204)
        response.del_cookie(COOKIE, path="/")
        return response

    @needs("viewer")
    async def me(self, request: Any) -> Any:
        who = principal_of(request)
        return {"user": {"name": who.name, "role": who.role}, "csrf": who.csrf}

    # --- network and status ---------------------------------------------------------------------

    @needs("viewer")
    async def get_network(self, request: Any) -> Any:
        return self.network

    @needs("viewer")
    async def overview(self, request: Any) -> Any:
        _, status, _ = self._ready()
        who = principal_of(request)
        day = int(time.time() // 86400 * 86400 * 1000)  # today (UTC)
        zones, last_hour, today, alerts, rate = await asyncio.gather(
            status.zone_states(),
            self.history.json("GET", "/v1/history/summary", params={"since": "1h"}, user=who.name),
            self.history.json("GET", "/v1/history/summary", params={"from": str(day)}, user=who.name),
            self._alerts({"status": "firing"}, ""),
            self._readings_per_s(),
        )
        firing = {"critical": 0, "warning": 0, "info": 0}
        for a in alerts:
            sev = a["severity"] if a["severity"] in firing else "info"
            firing[sev] += 1
        kpis = {
            "readings_per_s": rate,
            "anomalies_last_hour": last_hour["anomalies"],
            "firing": firing,
            "zones_at_risk": sum(1 for z in zones if z["status"] == "at_risk"),
            "loss_today": today["loss"],
        }
        return {"kpis": kpis, "zones": zones}

    async def _readings_per_s(self) -> float:
        services, _ = await self.health.view()
        for s in services:
            if s["name"] == "ingest":
                return float(s.get("throughput_per_s") or 0.0)
        return 0.0

    @needs("viewer")
    async def zone(self, request: Any, zone: str) -> Any:
        _, status, _ = self._ready()
        found = await status.zone(zone)
        if found is None:
            raise ApiError(404, f"no zone {zone[:64]!r}")
        return found

    def _known_zone(self, zone: str) -> Any:
        z = self.topology.zone(zone)
        if z is None:
            raise ApiError(404, f"no zone {zone[:64]!r}")
        return z

    def _known_sensor(self, sensor: str) -> Any:
        s = self.topology.sensor(sensor)
        if s is None:
            raise ApiError(404, f"no sensor {sensor[:64]!r}")
        return s

    def _series_params(self, request: Any, metrics: tuple[str, ...], **where: str) -> dict[str, str]:
        q = {k: v for k, v in request.query.items() if k in ("since", "from", "to", "step")}
        if "from" not in q:
            q.setdefault("since", "6h")
        metric = request.query.get("metric") or (metrics[0] if metrics else "")
        return {**q, "metric": metric, **where}

    @needs("viewer")
    async def zone_series(self, request: Any, zone: str) -> Any:
        who = principal_of(request)
        z = self._known_zone(zone)
        metrics = tuple(dict.fromkeys(m for s in self.topology.sensors_of(z.id) for m in s.metrics))
        params = self._series_params(request, metrics, zone=zone)
        return await self.history.json("GET", "/v1/history/series", params=params, user=who.name)

    @needs("viewer")
    async def zone_risk(self, request: Any, zone: str) -> Any:
        who = principal_of(request)
        self._known_zone(zone)
        params = {k: v for k, v in request.query.items() if k in ("since", "from", "to")}
        answer = await self.history.json("GET", "/v1/history/risk", params={**params, "zone": zone}, user=who.name)
        return {"points": answer["points"]}

    @needs("viewer")
    async def zone_losses(self, request: Any, zone: str) -> Any:
        who = principal_of(request)
        self._known_zone(zone)
        params = {k: v for k, v in request.query.items() if k in ("since", "from", "to")}
        return await self.history.json(
            "GET", f"/v1/history/zones/{quote(zone, safe='')}/losses", params=params, user=who.name
        )

    @needs("viewer")
    async def sensor(self, request: Any, id: str) -> Any:
        who = principal_of(request)
        _, status, _ = self._ready()
        found = await status.sensor(id)
        if found is None:
            raise ApiError(404, f"no sensor {id[:64]!r}")
        profile, episodes = await asyncio.gather(
            self.history.json("GET", f"/v1/history/sensors/{quote(id, safe='')}/profile", user=who.name),
            self.history.json(
                "GET", "/v1/history/episodes", params={"sensor": id, "since": "7d", "limit": "50"}, user=who.name
            ),
        )
        found["reasons"], found["usual"] = profile["reasons"], profile["usual"]
        found["episodes"] = episodes.get("items", [])
        return found

    @needs("viewer")
    async def sensor_series(self, request: Any, id: str) -> Any:
        who = principal_of(request)
        s = self._known_sensor(id)
        params = self._series_params(request, tuple(s.metrics), sensor=id)
        return await self.history.json("GET", "/v1/history/series", params=params, user=who.name)

    # --- alerts ---------------------------------------------------------------------------------

    async def _alerts(self, filters: dict[str, str], user: str) -> list[dict[str, Any]]:
        """The alerts API's list in the console's shape, with the console's comments and assignees and the
        latest verdict from the history store."""
        status = filters.get("status") or ""
        if status and status not in ("firing", "resolved"):
            raise ApiError(400, "status: use firing or resolved")
        params: list[tuple[str, str]] = [("status", status)] if status else []
        for label in ("severity", "site", "zone"):
            value = filters.get(label)
            if value:
                params.append(("filter", f"{label}={orjson.dumps(value).decode()}"))
        answer = await self.alerts.json("GET", "/v1/alerts", params=params, user=user)
        raw = answer.get("alerts", [])
        fps = [a["fingerprint"] for a in raw]
        notes: dict[str, Any] = {}
        # A request line is at most 8 KB (aiohttp): 200 fingerprints (about 4 KB escaped) per request, asked together.
        chunks = [fps[i : i + ANNOTATIONS_PER_REQUEST] for i in range(0, len(fps), ANNOTATIONS_PER_REQUEST)]
        answers = await asyncio.gather(
            *(
                self.history.json(
                    "GET", "/v1/history/alerts/annotations", params={"fingerprints": ",".join(chunk)}, user=user
                )
                for chunk in chunks
            )
        )
        for found in answers:
            notes.update((n["fingerprint"], n) for n in found["items"])
        out = []
        for a in raw:
            fp, labels = a["fingerprint"], a.get("labels", {})
            ack = a.get("ack")
            out.append(
                {
                    "fingerprint": fp,
                    "alertname": labels.get("alertname", ""),
                    "severity": labels.get("severity", "info"),
                    "status": a["status"],
                    "labels": labels,
                    "annotations": a.get("annotations", {}),
                    "startsAt": a.get("startsAt"),
                    "endsAt": a.get("endsAt"),
                    "ack": {"by": ack["by"], "at": ack["at"], "note": ack.get("comment", "")} if ack else None,
                    "assignee": notes.get(fp, {}).get("assignee"),
                    "comments": [
                        {"by": c["by"], "at": rfc3339(c["at"]), "text": c["text"]}
                        for c in notes.get(fp, {}).get("comments", [])
                    ],
                    "verdict": notes.get(fp, {}).get("verdict"),
                }
            )
        return out

    @needs("viewer")
    async def list_alerts(self, request: Any) -> Any:
        who = principal_of(request)
        return {"items": await self._alerts(dict(request.query), who.name)}

    @needs("viewer")
    async def export_alerts(self, request: Any) -> Any:
        who = principal_of(request)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(ALERT_CSV_COLUMNS)
        for a in await self._alerts(dict(request.query), who.name):
            ack = a["ack"] or {}
            labels = a["labels"]
            row = {
                **a,
                "site": labels.get("site"),
                "zone": labels.get("zone"),
                "ack_by": ack.get("by"),
                "ack_at": ack.get("at"),
                "ack_note": ack.get("note"),
                "summary": a["annotations"].get("summary"),
            }
            writer.writerow(["" if row.get(c) is None else row[c] for c in ALERT_CSV_COLUMNS])
        return csv_reply(buf.getvalue(), "alerts.csv")

    async def _one_alert(self, fp: str, user: str) -> dict[str, Any]:
        for a in await self._alerts({}, user):
            if a["fingerprint"] == fp:
                return a
        raise ApiError(404, f"no alert with fingerprint {fp[:64]!r}")

    @needs("operator")
    async def ack(self, request: Any, fp: str) -> Any:
        who = principal_of(request)
        note = _text(await self.body(request), "note", 1000)
        await self.alerts.json("POST", f"/v1/alerts/{quote(fp, safe='')}/ack", json={"comment": note}, user=who.name)
        await self._log(fp, "ack", who, note)
        return await self._one_alert(fp, who.name)

    async def _log(self, fp: str, kind: str, who: Principal, note: str) -> None:
        """One line of history's alert log (what the history API's alert log and exports show), as the user."""
        await self.history.json(
            "POST",
            f"/v1/history/alerts/{quote(fp, safe='')}/notes",
            json={"kind": kind, "note": note},
            user=who.name,
        )

    async def _note(self, fp: str, kind: str, who: Principal, text: str) -> Any:
        await self._one_alert(fp, who.name)  # 404 for an unknown alert
        await self._log(fp, kind, who, text)
        return await self._one_alert(fp, who.name)

    @needs("operator")
    async def comment(self, request: Any, fp: str) -> Any:
        who = principal_of(request)
        text = _text(await self.body(request), "text", 5000).strip()
        if not text:
            raise ApiError(400, "text: a comment needs text")
        return await self._note(fp, "comment", who, text)

    @needs("operator")
    async def assign(self, request: Any, fp: str) -> Any:
        who = principal_of(request)
        body = await self.body(request)
        if "assignee" not in body:
            raise ApiError(400, "assignee: is required (empty text unassigns)")
        return await self._note(fp, "assign", who, _text(body, "assignee", 200).strip())

    @needs("operator")
    async def verdict(self, request: Any, fp: str) -> Any:
        who = principal_of(request)
        body = await self.body(request)
        verdict = body.get("verdict")
        if verdict not in ("true_positive", "false_positive"):
            raise ApiError(400, "verdict: must be true_positive or false_positive")
        payload = {"fingerprint": fp, "verdict": verdict, "comment": _text(body, "comment", 2000)}
        await self.alerts.json("POST", "/v1/feedback", json=payload, user=who.name)
        await self._log(fp, "verdict", who, f"{verdict} {payload['comment']}".strip())
        alert = await self._one_alert(fp, who.name)
        alert["verdict"] = verdict  # on the feedback topic now; the history store has it a moment later
        return alert

    # --- silences -------------------------------------------------------------------------------

    @needs("viewer")
    async def list_silences(self, request: Any) -> Any:
        who = principal_of(request)
        params = {"state": request.query["state"]} if request.query.get("state") else None
        return {"items": await self.alerts.json("GET", "/v1/silences", params=params, user=who.name)}

    @needs("operator")
    async def create_silence(self, request: Any) -> Any:
        who = principal_of(request)
        body = await self.body(request)
        try:
            seconds = parse_duration_s(body.get("duration"))
        except ValueError as exc:
            raise ApiError(400, f"duration: {exc}") from None
        if seconds <= 0:
            raise ApiError(400, "duration: must be positive")
        now = int(time.time() * 1000)
        matchers = body.get("matchers")
        if not isinstance(matchers, list) or not matchers:
            raise ApiError(400, "matchers: at least one {name, value, isRegex}")
        payload = {
            "matchers": matchers,
            "startsAt": now,
            "endsAt": now + int(seconds * 1000),
            "comment": _text(body, "comment", 1000) or f"silenced in the console by {who.name}",
        }
        return await self.alerts.json("POST", "/v1/silences", json=payload, user=who.name)

    @needs("operator")
    async def delete_silence(self, request: Any, id: str) -> Any:
        who = principal_of(request)
        return await self.alerts.json("DELETE", f"/v1/silences/{quote(id, safe='')}", user=who.name)

    # --- history (proxied) ----------------------------------------------------------------------

    async def _proxy(self, request: Any, path: str) -> Any:
        who = principal_of(request)
        r = await self.history.call("GET", path, params=list(request.query.items()), user=who.name)
        if r.status_code >= 500 or r.status_code in (401, 403):
            raise UpstreamError(502, f"the history API answered {r.status_code}")
        return aioweb.Response(
            body=r.content,
            status=r.status_code,
            content_type=r.headers.get("content-type", "application/json").split(";")[0],
            headers={k: v for k, v in r.headers.items() if k.lower() == "content-disposition"},
        )

    @needs("viewer")
    async def anomaly_rates(self, request: Any) -> Any:
        return await self._proxy(request, "/v1/history/anomaly-rates")

    @needs("viewer")
    async def history_alerts(self, request: Any) -> Any:
        return await self._proxy(request, "/v1/history/alerts")

    @needs("viewer")
    async def episodes(self, request: Any) -> Any:
        return await self._proxy(request, "/v1/history/episodes")

    @needs("viewer")
    async def episode(self, request: Any, id: str) -> Any:
        return await self._proxy(request, f"/v1/history/episodes/{quote(id, safe='')}")

    @needs("viewer")
    async def playback(self, request: Any) -> Any:
        return await self._proxy(request, "/v1/history/playback")

    @needs("viewer")
    async def history_export(self, request: Any) -> Any:
        return await self._proxy(request, "/v1/history/export.csv")

    # --- planners' report and pipeline health ---------------------------------------------------

    async def _report(self, request: Any) -> dict[str, Any]:
        params = {k: v for k, v in request.query.items() if k in ("since", "from", "to")}
        return await self.history.json("GET", "/v1/history/report", params=params, user=principal_of(request).name)

    @needs("viewer")
    async def planners_report(self, request: Any) -> Any:
        return await self._report(request)

    @needs("viewer")
    async def planners_report_csv(self, request: Any) -> Any:
        return csv_reply(report.to_csv(await self._report(request)), "report.csv")

    @needs("viewer")
    async def pipeline(self, request: Any) -> Any:
        (services, reasons), infra = await asyncio.gather(self.health.view(), self.infra())
        return {"services": services, "quarantine_reasons": reasons, "infra": infra}

    # --- public leak reports --------------------------------------------------------------------

    @needs("operator")
    async def list_reports(self, request: Any) -> Any:
        wanted = request.query.get("status", "")
        if wanted not in ("", "new", "confirmed", "rejected"):
            raise ApiError(400, "status: use new, confirmed or rejected")
        params = {"status": wanted, "limit": "500"} if wanted else {"limit": "500"}
        found = await self.history.json("GET", "/v1/history/reports", params=params, user=principal_of(request).name)
        return {"items": [_report_view(r) for r in found["items"]]}

    @needs("operator")
    async def triage(self, request: Any, id: str) -> Any:
        body = await self.body(request)
        if body.get("status") not in ("confirmed", "rejected"):
            raise ApiError(400, "status: confirmed or rejected")
        payload = {"status": body["status"], "note": _text(body, "note", 2000)}
        # History keeps the triage and puts a confirmation on `feedback` (a verdict for retraining).
        found = await self.history.json(
            "POST", f"/v1/history/reports/{quote(id, safe='')}/triage", json=payload, user=principal_of(request).name
        )
        return _report_view(found)

    @needs("public")
    async def localities(self, request: Any) -> Any:
        _, status, _ = self._ready()
        net = self.topology.network
        watched = [s for s in net.sensors if public.WATCHED_METRICS & set(s.metrics)]
        zones, scores, summary = await asyncio.gather(
            status.zone_states(),
            self.cache.get_many("score", [s.id for s in watched]),
            self.history.json("GET", "/v1/history/summary"),
        )
        anomalous = {s.site for s in watched if (scores.get(s.id) or {}).get("is_anomaly")}
        open_sites = set(summary["open_incident_sites"])
        return {"localities": public.localities(self.topology.site_ids(), zones, anomalous, open_sites)}

    @needs("public")
    async def submit_report(self, request: Any) -> Any:
        ip = self.client_address(request)
        wait = self.reports_by_ip.retry_after(ip)
        if wait:
            REPORTS.labels("limited").inc()
            raise ApiError(429, "too many reports from here; try again later", {"Retry-After": str(math.ceil(wait))})
        try:
            record = public.report_record(await self.body(request), self.topology.site_ids())
        except public.ReportError as exc:
            REPORTS.labels("invalid").inc()
            raise ApiError(400, str(exc)) from None
        self.reports_by_ip.hit(ip)
        await self.send_report(record)
        REPORTS.labels("accepted").inc()
        message = "Thank you. Your report has been passed on to the operators on duty."
        return reply({"id": record["id"], "message": message}, status=202)

    # --- users ----------------------------------------------------------------------------------

    @needs("admin")
    async def list_users(self, request: Any) -> Any:
        users, _, _ = self._ready()
        return {"items": await users.list()}

    @needs("admin")
    async def add_user(self, request: Any) -> Any:
        users, _, _ = self._ready()
        body = await self.body(request)
        return reply(await users.add(body.get("username"), body.get("password"), body.get("role")), status=201)

    @needs("admin")
    async def update_user(self, request: Any, name: str) -> Any:
        users, _, _ = self._ready()
        body = await self.body(request)
        return await users.update(
            name, role=body.get("role"), disabled=body.get("disabled"), password=body.get("password")
        )

    # --- live -----------------------------------------------------------------------------------

    @needs("viewer")
    async def live(self, request: Any) -> Any:
        from services.console.live import EVENTS

        known = set(EVENTS.values())
        wanted = {e.strip() for e in request.query.get("events", "").split(",") if e.strip()} or known
        if wanted - known:
            raise ApiError(400, f"events: one or more of {', '.join(sorted(known))}")
        client = self.hub.join(wanted)
        if client is None:
            raise ApiError(503, "too many live clients on this replica; try again", {"Retry-After": "10"})
        response = aioweb.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        try:
            await response.prepare(request)
            await response.write(frame("hello", orjson.dumps({"events": sorted(wanted)})))
            reported = 0
            while True:
                try:
                    await asyncio.wait_for(client.ready.wait(), self.cs.live_heartbeat_s)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                chunks = [framed for _, framed in client.take()]
                if client.dropped != reported:
                    chunks.append(frame("dropped", orjson.dumps({"dropped": client.dropped})))
                    reported = client.dropped
                await response.write(b"".join(chunks))
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self.hub.leave(client)
        return response


def storable(value: Any, where: str) -> None:
    """400 for text PostgreSQL cannot hold (NUL) or no encoder can write (unpaired surrogates), naming the field."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            raise ApiError(400, f"{where}: contains NUL or unpaired surrogate characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            storable(k, where)
            storable(v, f"{k}" if where == "body" else f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            storable(v, where)


def _text(body: dict[str, Any], field: str, limit: int) -> str:
    value = body.get(field, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: must be text")
    if len(value) > limit:
        raise ApiError(400, f"{field}: at most {limit} characters")
    return value


def _report_view(r: dict[str, Any]) -> dict[str, Any]:
    payload = r.get("payload") or {}
    return {
        "id": r["id"],
        "ts": r["ts"],
        "locality": payload.get("locality") or r["site"],
        "remark": r["text"],
        "name": payload.get("name", ""),
        "contact": payload.get("contact", ""),
        "status": r["status"] or "new",
        "triage": {"by": r["triage_by"], "at": r["triage_at"], "note": r["triage_note"]} if r["status"] else None,
    }


def errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn``'s result as a response; a refusal as its status with ``{"error": ...}``."""

    async def run(request: Any, **kw: Any) -> tuple[Any, int, dict[str, str] | None]:
        try:
            for name, value in (*kw.items(), *request.query.items()):
                storable(value, name)
            return await fn(request, **kw), 200, None
        except ApiError as exc:
            return {"error": str(exc)}, exc.status, exc.headers
        except UpstreamError as exc:
            return {"error": str(exc)}, exc.status, None
        except UserError as exc:
            return {"error": str(exc)}, exc.status, None

    return run
