"""The history API on the Faust web server: viewer tokens read, operator tokens annotate.

Views turn their query into SQL through :mod:`services.history.queries` (the CSV export
uses the same builders), run it on a connection pool, and answer JSON; a bad parameter is a
400 naming it, a missing token 401, a weak one 403.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import faust
import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View

from services.history import queries, report
from services.history.metrics import API_REQUESTS
from services.history.queries import Params, QueryError
from services.history.settings import HistorySettings
from services.history.store import Partitions
from shared.auth import USER_HEADER, AuthError, Principal, TokenStore, authorize

JSON_COLUMNS = {"top_metrics", "reasons", "labels", "annotations", "metrics", "values", "payload"}
NOTE_KINDS = ("ack", "comment", "assign", "verdict")
TRIAGE = ("confirmed", "rejected")
REPORT_COLUMNS = (
    "r.id, r.ts, r.site, r.zone, r.text, r.payload, t.status, t.author AS triage_by, t.ts AS triage_at, "
    "t.note AS triage_note"
)
EXPORTS = ("anomalies", "episodes", "alerts", "series", "reports", "quarantine")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _row(record: asyncpg.Record) -> dict[str, Any]:
    out = dict(record)
    for key in JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            out[key] = orjson.loads(out[key])
    return out


class HistoryApi:
    """The views' dependencies; app.py wires it and opens the pool at start."""

    def __init__(
        self, hs: HistorySettings, tokens: TokenStore, send_feedback: Callable[[dict[str, Any]], Awaitable[None]]
    ):
        self.hs = hs
        self.tokens = tokens
        self.send_feedback = send_feedback
        self.partitions = Partitions(hs.partition_days)
        self.pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        from services.history.store import pool

        self.pool = await pool(self.hs)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def authorize(self, request: Request, role: str) -> Principal:
        try:
            return authorize(
                self.tokens, request.headers.get("Authorization"), role, acting_for=request.headers.get(USER_HEADER)
            )
        except AuthError as exc:
            raise ApiError(exc.status, str(exc)) from None

    def params(self, request: Request) -> Params:
        return Params(request.query, self.hs)

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise ApiError(503, "the history store is not connected yet")
        return self.pool

    async def fetch(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        return [_row(r) for r in await self._pool().fetch(sql, *args)]

    async def body(self, request: Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        return data

    # --- reads ----------------------------------------------------------------------------------

    async def anomaly_rates(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        return {"rows": await self.fetch(*queries.anomaly_rates(self.params(request)))}

    async def series(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        p = self.params(request)
        out: dict[str, Any] = {"points": await self.fetch(*queries.series(p))}
        band = queries.band(p)
        if band is not None:
            out["band"] = await self.fetch(*band)
        return out

    async def episodes(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        p = self.params(request)
        limit, offset = p.page()
        items = await self.fetch(*queries.episodes(p))
        return {
            "items": items,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(items) == limit else None,
        }

    async def episode(self, request: Request, episode_id: str) -> Any:
        self.authorize(request, "viewer")
        ep = await self._episode(episode_id)
        ep["comments"] = await self.fetch(
            "SELECT id, ts, author, text FROM episode_comments WHERE episode_id = $1 ORDER BY ts, id", [ep["id"]]
        )
        ep["anomalies"] = await self.fetch(
            'SELECT ts, score, threshold, severity, reason, top_metrics, "values" FROM anomalies '
            "WHERE sensor_id = $1 AND ts >= $2 AND ts <= $3 ORDER BY ts LIMIT 1000",
            [ep["sensor_id"], ep["start_ts"], ep["end_ts"]],
        )
        ep["log"] = await self.fetch(
            "SELECT fingerprint, ts, kind, status, author, note FROM alert_log "
            "WHERE episode_id = $1 OR (fingerprint = $2 AND ts >= $3) ORDER BY ts LIMIT 1000",
            [ep["id"], ep["alert_fingerprint"] or "", ep["start_ts"] - 86_400_000],
        )
        return ep

    async def _episode(self, episode_id: str) -> dict[str, Any]:
        if not episode_id.isdigit():
            raise ApiError(400, "parameter 'id': must be an integer")
        rows = await self.fetch(f"SELECT {queries.EPISODE_COLUMNS} FROM episodes WHERE id = $1", [int(episode_id)])
        if not rows:
            raise ApiError(404, f"no episode {episode_id}")
        return rows[0]

    async def alerts(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        p = self.params(request)
        limit, offset = p.page()
        items = await self.fetch(*queries.alerts(p))
        return {
            "items": items,
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(items) == limit else None,
        }

    async def losses(self, request: Request, zone: str) -> Any:
        self.authorize(request, "viewer")
        return {"zone": zone, "days": await self.fetch(*queries.losses(self.params(request), zone))}

    async def playback(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        parts, start, to, step = queries.playback(self.params(request))
        # Three independent reads on three pooled connections: the answer waits for the slowest, not the sum.
        risk, aggs, eps = await asyncio.gather(*(self.fetch(sql, args) for sql, args in parts))
        frames: dict[int, dict[tuple[str, str], dict[str, Any]]] = {t: {} for t in range(start, to, step)}

        def zone(ts: int, site: str, name: str) -> dict[str, Any]:
            return frames.setdefault(ts, {}).setdefault(
                (site, name),
                {"site": site, "zone": name, "status": "unknown", "probability": None, "open_episodes": 0},
            )

        for r in aggs:
            z = zone(r["ts"], r["site"], r["zone"])
            z.update(utility=r["utility"], readings=r["count"], anomalies=r["anomaly_count"], values=r["metrics"])
            z["status"] = "anomalous" if r["anomaly_count"] else "normal"
        for r in risk:
            z = zone(r["ts"], r["site"], r["zone"])
            z.update(probability=r["probability"], incident_type=r["incident_type"])
            if r["probability"] >= self.hs.incident_threshold and r["incident_type"] != "normal":
                z["status"] = "at_risk"
        for r in eps:
            z = zone(r["ts"], r["site"], r["zone"])
            z["open_episodes"] = r["open_episodes"]
            if z["status"] in ("unknown", "normal"):
                z["status"] = "anomalous"
        return {
            "from": start,
            "to": to,
            "step": step,
            "frames": [{"ts": ts, "zones": list(zones.values())} for ts, zones in sorted(frames.items())],
        }

    async def risk(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        return {"points": await self.fetch(*queries.risk(self.params(request)))}

    async def summary(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        p = self.params(request)
        start, to = p.span(3_600_000)
        anomalies, incidents, open_sites = await asyncio.gather(*(self.fetch(s, a) for s, a in queries.summary(p)))
        loss = incidents[0]
        return {
            "from": start,
            "to": to,
            "anomalies": anomalies[0]["n"],
            "incidents": loss["incidents"],
            "loss": {
                "volume": loss["volume"],
                "cost": loss["cost"],
                "unit": loss["unit"] or "m3",
                "currency": loss["currency"] or "",
            },
            "open_incident_sites": [r["site"] for r in open_sites],
        }

    async def sensor_profile(self, request: Request, sensor_id: str) -> Any:
        self.authorize(request, "viewer")
        reasons, usual = await asyncio.gather(
            *(self.fetch(s, a) for s, a in queries.sensor_profile(self.params(request), sensor_id))
        )
        return {
            "sensor_id": sensor_id,
            "reasons": [r["reason"] for r in reasons],
            "usual": {r["metric"]: {"mean": r["mean"], "std": r["std"]} for r in usual},
        }

    async def report(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        start, to = self.params(request).span(30 * queries.DAY_MS)
        return await report.build(self._pool(), start, to)

    # --- alert notes (the console's acks, comments, assignments and verdicts, by its delegate token) -----

    async def alert_note(self, request: Request, fingerprint: str) -> Any:
        who = self.authorize(request, "operator")
        body = await self.body(request)
        kind = body.get("kind")
        if kind not in NOTE_KINDS:
            raise ApiError(400, f"parameter 'kind': one of {', '.join(NOTE_KINDS)}")
        note = _text(body, "note", 5000)
        _storable(fingerprint, "fingerprint")
        now = int(time.time() * 1000)
        async with self._pool().acquire() as conn:
            await self.partitions.ensure(conn, "alert_log", [now])
            await conn.execute(
                "INSERT INTO alert_log (fingerprint, ts, kind, status, author, note) VALUES ($1, $2, $3, '', $4, $5) "
                "ON CONFLICT DO NOTHING",
                fingerprint[:500],
                now,
                kind,
                who.name,
                note,
            )
        return {"fingerprint": fingerprint[:500], "ts": now, "kind": kind, "author": who.name, "note": note}

    async def alert_annotations(self, request: Request) -> Any:
        """Per alert: its comments, its latest assignee and its latest verdict."""
        self.authorize(request, "viewer")
        fps = [f.strip() for f in self.params(request).get("fingerprints").split(",") if f.strip()]
        if len(fps) > 1000:
            raise QueryError("fingerprints", "at most 1000")
        notes, verdicts = await asyncio.gather(
            self.fetch(
                "SELECT fingerprint, ts, kind, author, note FROM alert_log WHERE fingerprint = ANY($1) "
                "AND kind IN ('comment', 'assign') ORDER BY ts",
                [fps],
            ),
            self.fetch(
                "SELECT DISTINCT ON (fingerprint) fingerprint, verdict FROM feedback WHERE fingerprint = ANY($1) "
                "ORDER BY fingerprint, ts DESC",
                [fps],
            ),
        )
        out = {fp: {"fingerprint": fp, "comments": [], "assignee": None, "verdict": None} for fp in fps}
        for n in notes:
            if n["kind"] == "comment":
                out[n["fingerprint"]]["comments"].append({"by": n["author"], "at": n["ts"], "text": n["note"]})
            else:
                out[n["fingerprint"]]["assignee"] = n["note"] or None
        for v in verdicts:
            out[v["fingerprint"]]["verdict"] = v["verdict"]
        return {"items": list(out.values())}

    # --- public leak reports and their triage -----------------------------------------------------

    async def reports(self, request: Request) -> Any:
        self.authorize(request, "operator")  # names and contacts of the public
        p = self.params(request)
        status = p.choice("status", ("new", *TRIAGE))
        limit, _ = p.page()
        items = await self.fetch(
            f"SELECT {REPORT_COLUMNS} FROM reports r LEFT JOIN console_report_triage t ON t.report_id = r.id "
            "WHERE ($1 = '' OR coalesce(t.status, 'new') = $1) ORDER BY r.ts DESC LIMIT $2",
            [status, limit],
        )
        return {"items": items}

    async def _report(self, report_id: str) -> dict[str, Any]:
        rows = await self.fetch(
            f"SELECT {REPORT_COLUMNS} FROM reports r LEFT JOIN console_report_triage t ON t.report_id = r.id "
            "WHERE r.id = $1",
            [report_id[:200]],
        )
        if not rows:
            raise ApiError(404, f"no report {report_id[:64]!r}")
        return rows[0]

    async def triage(self, request: Request, report_id: str) -> Any:
        """Confirm or reject a public report; a confirmation is a verdict on ``feedback`` (for retraining)."""
        who = self.authorize(request, "operator")
        body = await self.body(request)
        status = body.get("status")
        if status not in TRIAGE:
            raise ApiError(400, "parameter 'status': confirmed or rejected")
        note = _text(body, "note", 2000)
        _storable(report_id, "id")
        found = await self._report(report_id)
        now = int(time.time() * 1000)
        await self._pool().execute(
            "INSERT INTO console_report_triage (report_id, status, author, note, ts) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (report_id) DO UPDATE SET status = $2, author = $3, note = $4, ts = $5",
            found["id"],
            status,
            who.name,
            note,
            now,
        )
        if status == "confirmed":
            await self.send_feedback(
                {
                    "fingerprint": f"report-{found['id']}",
                    "verdict": "true_positive",
                    "ts": now,
                    "author": who.name,
                    "comment": note,
                    "labels": {"alertname": "PublicLeakReport", "site": found["site"], "report_id": found["id"]},
                    "v": 1,
                }
            )
        return await self._report(report_id)

    # --- annotations ----------------------------------------------------------------------------

    async def _annotate(
        self, episode_id: str, kind: str, who: Principal, note: str, sql: str, *args: Any
    ) -> dict[str, Any]:
        ep = await self._episode(episode_id)
        now = int(time.time() * 1000)
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            if sql:
                await conn.execute(sql, ep["id"], now, who.name, *args)
            await conn.execute(
                "INSERT INTO alert_log (fingerprint, ts, kind, status, author, note, episode_id) "
                "VALUES ($1, $2, $3, '', $4, $5, $6) ON CONFLICT DO NOTHING",
                ep["alert_fingerprint"] or f"episode-{ep['id']}",
                now,
                kind,
                who.name,
                note,
                ep["id"],
            )
        return await self._episode(episode_id)

    async def ack(self, request: Request, episode_id: str) -> Any:
        who = self.authorize(request, "operator")
        note = str((await self.body(request)).get("note", ""))[:2000]
        return await self._annotate(
            episode_id,
            "ack",
            who,
            note,
            "UPDATE episodes SET ack_at = $2, ack_by = $3, ack_note = $4, updated_at = $2 WHERE id = $1",
            note,
        )

    async def comment(self, request: Request, episode_id: str) -> Any:
        who = self.authorize(request, "operator")
        text = str((await self.body(request)).get("text", "")).strip()[:5000]
        if not text:
            raise ApiError(400, "parameter 'text': a comment needs text")
        return await self._annotate(
            episode_id,
            "comment",
            who,
            text,
            "INSERT INTO episode_comments (episode_id, ts, author, text) VALUES ($1, $2, $3, $4)",
            text,
        )

    async def assign(self, request: Request, episode_id: str) -> Any:
        who = self.authorize(request, "operator")
        assignee = str((await self.body(request)).get("assignee", "")).strip()[:200]
        return await self._annotate(
            episode_id,
            "assign",
            who,
            assignee,
            "UPDATE episodes SET assignee = nullif($4::text, ''), updated_at = $2 WHERE id = $1 AND $3::text IS NOT NULL",
            assignee,
        )

    async def verdict(self, request: Request, episode_id: str) -> Any:
        who = self.authorize(request, "operator")
        body = await self.body(request)
        verdict = str(body.get("verdict", ""))
        if verdict not in ("true_positive", "false_positive"):
            raise ApiError(400, "parameter 'verdict': must be true_positive or false_positive")
        comment = str(body.get("comment", ""))[:2000]
        ep = await self._annotate(
            episode_id,
            "verdict",
            who,
            f"{verdict} {comment}".strip(),
            "UPDATE episodes SET verdict = $4, verdict_by = $3, verdict_at = $2, updated_at = $2 WHERE id = $1",
            verdict,
        )
        labels = {k: str(ep[k]) for k in ("site", "zone", "utility", "sensor_id")}
        labels["episode_id"] = str(ep["id"])
        await self.send_feedback(
            {
                "fingerprint": ep["alert_fingerprint"] or f"episode-{ep['id']}",
                "verdict": verdict,
                "ts": ep["verdict_at"],
                "author": who.name,
                "comment": comment,
                "labels": labels,
                "v": 1,
            }
        )
        return ep

    # --- export ---------------------------------------------------------------------------------

    async def export(self, request: Request) -> Any:
        self.authorize(request, "viewer")
        p = self.params(request)
        what = p.get("what")
        builders = {
            "anomalies": queries.anomalies,
            "episodes": lambda p: queries.episodes(p, paged=False),
            "alerts": lambda p: queries.alerts(p, paged=False),
            "series": queries.series,
            "reports": queries.reports,
            "quarantine": queries.quarantine,
        }
        if what not in builders:
            raise QueryError("what", f"export one of {', '.join(EXPORTS)}")
        sql, args = builders[what](p)
        if self.pool is None:
            raise ApiError(503, "the history store is not connected yet")
        response = aioweb.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{what}.csv"',
            },
        )
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = conn.cursor(f"{sql} LIMIT {int(self.hs.max_csv_rows)}", *args, prefetch=2000)
            await response.prepare(request._request if hasattr(request, "_request") else request)
            buf = io.StringIO()
            writer = csv.writer(buf)
            header_done = False
            async for record in cursor:
                if not header_done:
                    writer.writerow(record.keys())
                    header_done = True
                writer.writerow(_cell(v) for v in record.values())
                if buf.tell() > 64 * 1024:
                    await response.write(buf.getvalue().encode())
                    buf.seek(0)
                    buf.truncate()
            if not header_done:
                writer.writerow(_export_header(sql))
            await response.write(buf.getvalue().encode())
        await response.write_eof()
        return response


def _storable(value: str, name: str) -> None:
    """400 for text PostgreSQL cannot hold (NUL) or no encoder can write (unpaired surrogates)."""
    if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
        raise ApiError(400, f"parameter {name!r}: contains NUL or unpaired surrogate characters")


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"parameter {name!r}: must be text")
    _storable(value, name)
    return value[:limit]


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return "" if value is None else value


def _export_header(sql: str) -> list[str]:
    """Column names of an empty result, read from the SELECT list (an export always has its header)."""
    select = sql.split(" FROM ", 1)[0].removeprefix("SELECT ")
    names, depth, current = [], 0, ""
    for ch in select:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    names.append(current)
    return [n.strip().split(" AS ")[-1].split(" ")[-1] for n in names]


def mount(app: faust.App, api: HistoryApi) -> None:
    """Register the views on the Faust web server."""

    def handler(endpoint: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Response]]:
        async def run(self: View, request: Request, **kw: Any) -> Any:
            try:
                result = await fn(request, **kw)
                code = 200
            except ApiError as exc:
                result, code = {"error": str(exc)}, exc.status
            except QueryError as exc:
                result, code = {"error": str(exc), "parameter": exc.param}, 400
            API_REQUESTS.labels(endpoint, str(code)).inc()
            if isinstance(result, aioweb.StreamResponse):
                return result
            return self.bytes(orjson.dumps(result), content_type="application/json", status=code)

        return run

    def page(path: str, endpoint: str, **methods: Callable[..., Awaitable[Any]]) -> None:
        app.page(path)(
            type(
                f"History{endpoint.title().replace('-', '')}",
                (View,),
                {m: handler(endpoint, f) for m, f in methods.items()},
            )
        )

    page("/v1/history/anomaly-rates", "anomaly-rates", get=api.anomaly_rates)
    page("/v1/history/series", "series", get=api.series)
    page("/v1/history/episodes", "episodes", get=api.episodes)
    page("/v1/history/episodes/{episode_id}", "episode", get=api.episode)
    page("/v1/history/episodes/{episode_id}/ack", "ack", post=api.ack)
    page("/v1/history/episodes/{episode_id}/comments", "comments", post=api.comment)
    page("/v1/history/episodes/{episode_id}/assign", "assign", post=api.assign)
    page("/v1/history/episodes/{episode_id}/verdict", "verdict", post=api.verdict)
    page("/v1/history/alerts", "alerts", get=api.alerts)
    page("/v1/history/alerts/annotations", "alert-annotations", get=api.alert_annotations)
    page("/v1/history/alerts/{fingerprint}/notes", "alert-notes", post=api.alert_note)
    page("/v1/history/reports", "reports", get=api.reports)
    page("/v1/history/reports/{report_id}/triage", "triage", post=api.triage)
    page("/v1/history/zones/{zone}/losses", "losses", get=api.losses)
    page("/v1/history/playback", "playback", get=api.playback)
    page("/v1/history/risk", "risk", get=api.risk)
    page("/v1/history/summary", "summary", get=api.summary)
    page("/v1/history/sensors/{sensor_id}/profile", "sensor-profile", get=api.sensor_profile)
    page("/v1/history/report", "report", get=api.report)
    page("/v1/history/export.csv", "export", get=api.export)
