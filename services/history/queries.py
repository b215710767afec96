"""Query parameters -> SQL for the history API and its CSV export (one builder per view).

Every builder takes the request's query parameters (a mapping of strings), checks them and
returns ``(sql, args)``; a bad parameter raises :class:`QueryError` naming it. The JSON
views and ``export.csv`` share the builders, so an export is exactly the filtered query.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from typing import Any

from services.history.settings import HistorySettings
from shared.timeutil import parse_duration_ms

DAY_MS = 86_400_000
DIMENSIONS = {
    "site": "site",
    "zone": "zone",
    "utility": "utility",
    # Integer arithmetic on epoch ms (UTC), several times cheaper than to_timestamp + extract per row.
    "hour": "((hour / 3600000) % 24)::int",
    "dow": "(((hour / 86400000) + 3) % 7 + 1)::int",  # ISO: 1 Monday .. 7 Sunday (1970-01-01 a Thursday)
}
SEVERITIES = ("info", "warning", "critical")
STATES = ("open", "closed")
VERDICTS = ("true_positive", "false_positive", "none")


class QueryError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(f"parameter {param!r}: {message}")
        self.param = param


def duration_ms(text: str, param: str) -> int:
    """``90``, ``90s``, ``5m``, ``1h``, ``7d``, ``2w``, ``500ms`` -> milliseconds (a bare number is seconds)."""
    try:
        return parse_duration_ms(text)
    except ValueError:
        raise QueryError(param, f"{text!r} is not a duration like 30s, 5m, 1h or 7d") from None


def time_ms(text: str, param: str) -> int:
    """Epoch milliseconds or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    if re.fullmatch(r"\d{10,16}", text):
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(param, f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


class Params:
    """The query parameters of one request, read and checked."""

    def __init__(self, query: Mapping[str, str], hs: HistorySettings, now_ms: int | None = None):
        self.q = query
        self.hs = hs
        self.now = now_ms if now_ms is not None else int(time.time() * 1000)

    def get(self, name: str, default: str = "") -> str:
        return str(self.q.get(name, default) or default).strip()

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.get(name)
        if value and value not in allowed:
            raise QueryError(name, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def span(self, default_ms: int = DAY_MS) -> tuple[int, int]:
        """``from``/``to`` (or ``since`` back from now); bounded by max_range_days."""
        to = time_ms(self.get("to"), "to") if self.get("to") else self.now
        if self.get("since"):
            start = to - duration_ms(self.get("since"), "since")
        elif self.get("from"):
            start = time_ms(self.get("from"), "from")
        else:
            start = to - default_ms
        if start >= to:
            raise QueryError("from", "must be before 'to'")
        if to - start > self.hs.max_range_days * DAY_MS:
            raise QueryError("from", f"the range is longer than {self.hs.max_range_days} days")
        return start, to

    def page(self) -> tuple[int, int]:
        try:
            limit = int(self.get("limit", "100"))
        except ValueError:
            raise QueryError("limit", "must be an integer") from None
        try:
            offset = int(self.get("offset", "0"))
        except ValueError:
            raise QueryError("offset", "must be an integer") from None
        if not 1 <= limit <= self.hs.max_page_size:
            raise QueryError("limit", f"must be between 1 and {self.hs.max_page_size}")
        if offset < 0:
            raise QueryError("offset", "must not be negative")
        return limit, offset

    def step(self, start: int, to: int, series: int = 1) -> int:
        step = duration_ms(self.get("step", "5m"), "step")
        if step < 60_000:
            raise QueryError("step", "must be at least 1m (rollups are per minute)")
        if (to - start) // step * max(1, series) > self.hs.max_points:
            raise QueryError("step", f"too many points for the range; at most {self.hs.max_points}")
        return step


class Where:
    """``AND``-joined conditions with numbered arguments."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: Any) -> None:
        self.parts.append(template.format(*(self.arg(v) for v in values)))

    def equal(self, column: str, value: str) -> None:
        if value:
            self.add(f"{column} = {{}}", value)

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts) or "true"


def _common(w: Where, p: Params) -> None:
    for name in ("site", "zone", "utility"):
        w.equal(name, p.get(name))


def anomaly_rates(p: Params) -> tuple[str, list[Any]]:
    """Anomalies / readings per group, from the hourly sums (the range is widened to whole hours)."""
    by = [b.strip() for b in p.get("by", "site").split(",") if b.strip()]
    bad = [b for b in by if b not in DIMENSIONS]
    if bad or not by:
        raise QueryError("by", f"group by any of {', '.join(DIMENSIONS)} (comma separated); got {p.get('by')!r}")
    start, to = p.span()
    w = Where()
    w.add("hour >= {} AND hour < {}", start - start % 3_600_000, to)
    _common(w, p)
    dims = ", ".join(f"{DIMENSIONS[b]} AS {b}" for b in by)
    keys = ", ".join(by)
    sql = (
        f"SELECT {dims}, sum(count)::bigint AS readings, sum(anomaly_count)::bigint AS anomalies, "
        f"CASE WHEN sum(count) > 0 THEN sum(anomaly_count)::float8 / sum(count) ELSE 0 END AS rate "
        f"FROM aggregates_hourly WHERE {w.sql} GROUP BY {keys} ORDER BY {keys}"
    )
    return sql, w.args


def series(p: Params) -> tuple[str, list[Any]]:
    metric = p.get("metric")
    if not metric:
        raise QueryError("metric", "is required")
    sensor, zone = p.get("sensor"), p.get("zone")
    if not sensor and not zone:
        raise QueryError("sensor", "give sensor= (or zone= for a zone's metric)")
    start, to = p.span()
    step = p.step(start, to)
    w = Where()
    w.add("metric = {}", metric)
    w.add("minute >= {} AND minute < {}", start, to)
    if sensor:
        w.add("sensor_id = {}", sensor)
    else:
        w.add("zone = {}", zone)
        w.equal("site", p.get("site"))
    b = w.arg(start)
    s = w.arg(step)
    sql = (
        f"SELECT {b}::bigint + (minute - {b}::bigint) / {s}::bigint * {s}::bigint AS ts, sum(count)::bigint AS count, "
        f"min(min) AS min, max(max) AS max, sum(sum) / sum(count) AS mean "
        f"FROM rollups WHERE {w.sql} GROUP BY 1 ORDER BY 1"
    )
    return sql, w.args


def band(p: Params) -> tuple[str, list[Any]] | None:
    """The forecaster's band for a zone's metric, on the same steps as :func:`series` (None without zone)."""
    zone = p.get("zone")
    if not zone or p.get("sensor"):
        return None
    start, to = p.span()
    step = p.step(start, to)
    w = Where()
    metric = w.arg(p.get("metric"))
    w.add("zone = {}", zone)
    w.add("ts >= {} AND ts < {}", start, to)
    w.parts.append(f"forecast ? {metric}")
    w.equal("site", p.get("site"))
    b, s = w.arg(start), w.arg(step)
    f = f"forecast -> {metric}"
    sql = (
        f"SELECT {b}::bigint + (ts - {b}::bigint) / {s}::bigint * {s}::bigint AS ts, "
        f"avg(({f} ->> 'q10')::float8) AS q10, avg(({f} ->> 'q50')::float8) AS q50, "
        f"avg(({f} ->> 'q90')::float8) AS q90, avg(({f} ->> 'expected')::float8) AS expected, "
        f"avg(({f} ->> 'actual')::float8) AS actual "
        f"FROM risk WHERE {w.sql} GROUP BY 1 ORDER BY 1"
    )
    return sql, w.args


EPISODE_COLUMNS = (
    "id, sensor_id, site, zone, utility, asset, start_ts, end_ts, state, anomaly_count, peak_score, severity, "
    "top_metrics, reasons, alert_fingerprint, ack_by, ack_at, ack_note, assignee, verdict, verdict_by, verdict_at, "
    "label_id, report_id, updated_at"
)


def episodes(p: Params, *, paged: bool = True) -> tuple[str, list[Any]]:
    start, to = p.span(7 * DAY_MS)
    w = Where()
    w.add("start_ts < {} AND end_ts >= {}", to, start)
    _common(w, p)
    w.equal("sensor_id", p.get("sensor"))
    w.equal("severity", p.choice("severity", SEVERITIES))
    w.equal("state", p.choice("state", STATES))
    verdict = p.choice("verdict", VERDICTS)
    if verdict == "none":
        w.parts.append("verdict IS NULL")
    else:
        w.equal("verdict", verdict)
    sql = f"SELECT {EPISODE_COLUMNS} FROM episodes WHERE {w.sql} ORDER BY start_ts DESC, id DESC"
    if paged:
        limit, offset = p.page()
        sql += f" LIMIT {w.arg(limit)} OFFSET {w.arg(offset)}"
    return sql, w.args


def anomalies(p: Params) -> tuple[str, list[Any]]:
    start, to = p.span()
    w = Where()
    w.add("ts >= {} AND ts < {}", start, to)
    _common(w, p)
    w.equal("sensor_id", p.get("sensor"))
    w.equal("severity", p.choice("severity", SEVERITIES))
    sql = (
        "SELECT sensor_id, ts, site, zone, utility, asset, score, threshold, severity, reason, model_version, "
        f"top_metrics FROM anomalies WHERE {w.sql} ORDER BY ts, sensor_id"
    )
    return sql, w.args


def alerts(p: Params, *, paged: bool = True) -> tuple[str, list[Any]]:
    start, to = p.span(7 * DAY_MS)
    w = Where()
    w.add("ts >= {} AND ts < {}", start, to)
    w.equal("fingerprint", p.get("fingerprint"))
    w.equal("kind", p.choice("kind", ("state", "ack", "comment", "assign", "verdict")))
    w.equal("status", p.choice("status", ("firing", "resolved")))
    for name in ("site", "zone", "utility"):
        if p.get(name):
            w.add(f"labels ->> '{name}' = {{}}", p.get(name))
    sql = (
        "SELECT fingerprint, ts, kind, status, author, note, episode_id, labels, annotations, starts_at, ends_at "
        f"FROM alert_log WHERE {w.sql} ORDER BY ts DESC, fingerprint"
    )
    if paged:
        limit, offset = p.page()
        sql += f" LIMIT {w.arg(limit)} OFFSET {w.arg(offset)}"
    return sql, w.args


def reports(p: Params) -> tuple[str, list[Any]]:
    start, to = p.span(7 * DAY_MS)
    w = Where()
    w.add("ts >= {} AND ts < {}", start, to)
    _common(w, p)
    return f"SELECT id, ts, site, zone, utility, kind, text FROM reports WHERE {w.sql} ORDER BY ts", w.args


def quarantine(p: Params) -> tuple[str, list[Any]]:
    start, to = p.span()
    w = Where()
    w.add("minute >= {} AND minute < {}", start, to)
    w.equal("source", p.get("source"))
    w.equal("reason", p.get("reason"))
    return (
        f"SELECT minute, source, reason, count FROM quarantine_counts WHERE {w.sql} ORDER BY minute, source, reason",
        w.args,
    )


def losses(p: Params, zone: str) -> tuple[str, list[Any]]:
    """Volume and cost lost per day: the growth of the forecaster's running total per incident."""
    start, to = p.span(30 * DAY_MS)
    w = Where()
    w.add("zone = {}", zone)
    w.add("ts >= {} AND ts < {}", start, to)
    w.equal("site", p.get("site"))
    sql = (
        "WITH steps AS (SELECT ts, (loss ->> 'volume')::float8 AS volume, (loss ->> 'cost')::float8 AS cost, "
        "loss ->> 'unit' AS unit, loss ->> 'currency' AS currency, "
        "(loss ->> 'since_ms')::bigint AS since FROM risk "
        f"WHERE {w.sql} AND (loss ->> 'ongoing')::boolean), "
        "deltas AS (SELECT ts, unit, currency, "
        "volume - coalesce(lag(volume) OVER (PARTITION BY since ORDER BY ts), 0) AS dv, "
        "cost - coalesce(lag(cost) OVER (PARTITION BY since ORDER BY ts), 0) AS dc FROM steps) "
        "SELECT to_char(to_timestamp(ts / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, "
        "sum(greatest(dv, 0)) AS volume, sum(greatest(dc, 0)) AS cost, max(unit) AS unit, max(currency) AS currency "
        "FROM deltas GROUP BY 1 ORDER BY 1"
    )
    return sql, w.args


def playback(p: Params) -> tuple[list[tuple[str, list[Any]]], int, int, int]:
    """Per step and zone: risk status, key values (aggregates) and open episodes."""
    start, to = p.span(6 * 3_600_000)
    step = p.step(start, to, series=1)
    w = Where()
    b, s = w.arg(start), w.arg(step)
    lo, hi = w.arg(start), w.arg(to)
    bucket = f"{b}::bigint + ({{col}} - {b}::bigint) / {s}::bigint * {s}::bigint"
    zone_filter = " AND site = $5" if p.get("site") else ""
    args = [*w.args, *([p.get("site")] if p.get("site") else [])]
    risk_sql = (
        f"SELECT DISTINCT ON (1, site, zone) {bucket.format(col='ts')} AS ts, site, zone, utility, probability, "
        f"incident_type FROM risk WHERE ts >= {lo} AND ts < {hi}{zone_filter} ORDER BY 1, site, zone, probability DESC"
    )
    agg_sql = (
        f"SELECT DISTINCT ON (1, site, zone, utility) {bucket.format(col='window_start')} AS ts, site, zone, utility, "
        f"count, anomaly_count, metrics FROM aggregates WHERE window_start >= {lo} AND window_start < {hi}{zone_filter} "
        f"ORDER BY 1, site, zone, utility, window_start DESC"
    )
    ep_sql = (
        f"SELECT g.ts, e.site, e.zone, count(*) AS open_episodes, max(e.severity) AS severity "
        f"FROM generate_series({b}::bigint, {hi}::bigint - 1, {s}::bigint) AS g(ts) "
        f"JOIN episodes e ON e.start_ts < g.ts + {s}::bigint AND e.end_ts >= g.ts "
        f"WHERE e.start_ts < {hi} AND e.end_ts >= {lo}{zone_filter.replace('site', 'e.site')} GROUP BY 1, 2, 3 ORDER BY 1"
    )
    return [(risk_sql, args), (agg_sql, args), (ep_sql, args)], start, to, step


def risk(p: Params) -> tuple[str, list[Any]]:
    """A zone's risk probability and incident type over time (the forecaster's records as stored)."""
    zone = p.get("zone")
    if not zone:
        raise QueryError("zone", "is required")
    start, to = p.span(6 * 3_600_000)
    w = Where()
    w.add("zone = {}", zone)
    w.add("ts >= {} AND ts < {}", start, to)
    w.equal("site", p.get("site"))
    return f"SELECT ts, probability, incident_type FROM risk WHERE {w.sql} ORDER BY ts LIMIT 20000", w.args


def summary(p: Params) -> list[tuple[str, list[Any]]]:
    """Over the span: the anomalies, and the estimated loss of the incidents active in it; and the sites with an
    incident open now."""
    start, to = p.span(3_600_000)
    return [
        ("SELECT count(*) AS n FROM anomalies WHERE ts >= $1 AND ts < $2", [start, to]),
        (
            "SELECT coalesce(sum(loss_volume), 0)::float8 AS volume, coalesce(sum(loss_cost), 0)::float8 AS cost, "
            "max(loss_unit) AS unit, max(currency) AS currency, count(*) AS incidents FROM incidents "
            "WHERE start_ts < $2 AND end_ts >= $1",
            [start, to],
        ),
        ("SELECT DISTINCT site FROM incidents WHERE state = 'open' ORDER BY site", []),
    ]


def sensor_profile(p: Params, sensor: str) -> list[tuple[str, list[Any]]]:
    """What is usual for a sensor over the span (mean and spread of its one-minute means per metric), and the
    reasons of its latest anomalies."""
    start, to = p.span()
    return [
        (
            "SELECT reason, max(ts) AS ts FROM anomalies WHERE sensor_id = $1 AND ts >= $2 AND ts < $3 "
            "GROUP BY reason ORDER BY 2 DESC LIMIT 5",
            [sensor, start, to],
        ),
        (
            "SELECT metric, avg(sum / count)::float8 AS mean, coalesce(stddev_samp(sum / count), 0)::float8 AS std "
            "FROM rollups WHERE sensor_id = $1 AND minute >= $2 AND minute < $3 AND count > 0 GROUP BY metric "
            "ORDER BY metric",
            [sensor, start, to],
        ),
    ]
