"""The Faust side of history: the sink that reads every topic it keeps and writes PostgreSQL.

Why not Faust agents and why not :class:`shared.pump.Pump`: the pump checkpoints a job's
state and offsets into Faust tables; the sink's state *is* the database. So the sink reads
with its own aiokafka consumer (one ``getmany`` per micro-batch over all topics, the group
assigning partitions to workers) and writes each batch, *and the offsets that follow it*, in
one PostgreSQL transaction. A worker killed at any moment resumes from the offsets of its last
committed transaction: nothing is lost and nothing is written twice, whatever the replay.
A message the decoder cannot read is a reject (the ``rejected`` table, with why); a batch PostgreSQL
refuses (a value no index row can hold, ...) is written again in halves, down to single messages, and a message
refused alone becomes a reject: one record never stops the sink.
Upstream services are at-least-once, so records also carry natural keys (a duplicate
anomaly, alert change or sensor event is ignored) and readings are deduplicated per sensor
before they are folded into rollups.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from services.history import store
from services.history.metrics import ACCEPTED, BATCH_SECONDS, DUPLICATES, MESSAGES, REJECTED, ROWS
from services.history.pipeline import Batch, Decoder, fold_episodes, fold_incidents, last_per_key
from services.history.settings import HistorySettings
from shared.settings import Settings

log = logging.getLogger(__name__)

#: What one fetch waits to fill (bytes; ~3,000 readings), up to ``batch_within_s``.
FILL_BYTES = 1024 * 1024

TOPICS = (
    "readings.clean",
    "anomalies",
    "aggregates",
    "risk",
    "alerts",
    "sensor.events",
    "readings.quarantine",
    "reports",
    "feedback",
    "labels",
)

# (column, postgres type) per table, in the order the pipeline builds rows.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "rollups": [
        ("sensor_id", "text"),
        ("metric", "text"),
        ("minute", "bigint"),
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("count", "integer"),
        ("min", "float8"),
        ("max", "float8"),
        ("sum", "float8"),
    ],
    "anomalies": [
        ("sensor_id", "text"),
        ("ts", "bigint"),
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("asset", "text"),
        ("score", "float8"),
        ("threshold", "float8"),
        ("severity", "text"),
        ("reason", "text"),
        ("model_version", "text"),
        ("top_metrics", "jsonb"),
        ("values", "jsonb"),
    ],
    "aggregates": [
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("window_start", "bigint"),
        ("window_end", "bigint"),
        ("count", "integer"),
        ("anomaly_count", "integer"),
        ("metrics", "jsonb"),
    ],
    "risk": [
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("ts", "bigint"),
        ("horizon_s", "integer"),
        ("probability", "float8"),
        ("incident_type", "text"),
        ("class_probs", "jsonb"),
        ("forecast", "jsonb"),
        ("loss", "jsonb"),
        ("model_version", "text"),
    ],
    "alert_log": [
        ("fingerprint", "text"),
        ("ts", "bigint"),
        ("kind", "text"),
        ("status", "text"),
        ("author", "text"),
        ("note", "text"),
        ("episode_id", "bigint"),
        ("labels", "jsonb"),
        ("annotations", "jsonb"),
        ("starts_at", "bigint"),
        ("ends_at", "bigint"),
    ],
    "sensor_events": [
        ("sensor_id", "text"),
        ("ts", "bigint"),
        ("kind", "text"),
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("asset", "text"),
        ("last_seen_ms", "bigint"),
        ("expected_interval_ms", "bigint"),
    ],
    "quarantine_counts": [("minute", "bigint"), ("source", "text"), ("reason", "text"), ("count", "integer")],
    "quarantine_samples": [
        ("minute", "bigint"),
        ("source", "text"),
        ("reason", "text"),
        ("received_ms", "bigint"),
        ("sensor_id", "text"),
        ("reasons", "jsonb"),
        ("payload", "text"),
        ("payload_md5", "text"),
    ],
    "reports": [
        ("id", "text"),
        ("ts", "bigint"),
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("kind", "text"),
        ("text", "text"),
        ("payload", "jsonb"),
    ],
    "feedback": [
        ("fingerprint", "text"),
        ("ts", "bigint"),
        ("author", "text"),
        ("verdict", "text"),
        ("comment", "text"),
        ("labels", "jsonb"),
    ],
    "labels": [
        ("incident_id", "text"),
        ("type", "text"),
        ("start_ms", "bigint"),
        ("end_ms", "bigint"),
        ("site", "text"),
        ("zone", "text"),
        ("utility", "text"),
        ("sensors", "jsonb"),
    ],
    "rejected": [
        ("topic", "text"),
        ("partition", "integer"),
        ("offset", "bigint"),
        ("reason", "text"),
        ("payload", "text"),
    ],
}


async def insert_rows(
    conn: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]], conflict: str, returning: str = ""
) -> list[asyncpg.Record]:
    """``INSERT ... SELECT FROM unnest(arrays)``: one statement, one round trip for any number of rows."""
    if not rows:
        return []
    cols = COLUMNS[table]
    names = ", ".join(f'"{c}"' for c, _ in cols)
    arrays = ", ".join(f"${i + 1}::{'text' if t == 'jsonb' else t}[]" for i, (_, t) in enumerate(cols))
    select = ", ".join(f'u."{c}"::jsonb' if t == "jsonb" else f'u."{c}"' for c, t in cols)
    sql = f"INSERT INTO {table} ({names}) SELECT {select} FROM unnest({arrays}) AS u({names}) {conflict}" + (
        f" RETURNING {returning}" if returning else ""
    )
    columns = [list(c) for c in zip(*rows, strict=True)]
    return await conn.fetch(sql, *columns)


EPISODE_FIELDS = (
    "sensor_id",
    "site",
    "zone",
    "utility",
    "asset",
    "start_ts",
    "end_ts",
    "state",
    "anomaly_count",
    "peak_score",
    "severity",
    "top_metrics",
    "reasons",
)
INCIDENT_FIELDS = (
    "site",
    "zone",
    "utility",
    "incident_type",
    "start_ts",
    "end_ts",
    "state",
    "peak_probability",
    "loss_volume",
    "loss_cost",
    "loss_unit",
    "currency",
)


def _row_dict(record: asyncpg.Record) -> dict[str, Any]:
    out = dict(record)
    for key in ("top_metrics", "reasons"):
        if isinstance(out.get(key), str):
            out[key] = orjson.loads(out[key])
    return out


async def _save_frames(
    conn: asyncpg.Connection, table: str, fields: tuple[str, ...], frames: list[dict[str, Any]]
) -> list[int]:
    """Insert new frames (id None) and update changed ones; returns their ids."""
    now = int(time.time() * 1000)
    ids = []
    json_fields = {"top_metrics", "reasons"}
    for f in frames:
        values = [orjson.dumps(f[k]).decode() if k in json_fields else f[k] for k in fields]
        casts = [f"${i + 1}::jsonb" if k in json_fields else f"${i + 1}" for i, k in enumerate(fields)]
        if f["id"] is None:
            cols = ", ".join(fields)
            ids.append(
                await conn.fetchval(
                    f"INSERT INTO {table} ({cols}, updated_at) VALUES ({', '.join(casts)}, ${len(fields) + 1}) RETURNING id",
                    *values,
                    now,
                )
            )
        else:
            sets = ", ".join(f"{k} = {c}" for k, c in zip(fields, casts, strict=True))
            await conn.execute(
                f"UPDATE {table} SET {sets}, updated_at = ${len(fields) + 1} WHERE id = ${len(fields) + 2}",
                *values,
                now,
                f["id"],
            )
            ids.append(f["id"])
    return ids


# Links between frames and what they refer to: the UPDATE with ``{side}`` naming which side is new
# (frame ids as $1::bigint[], or the other table's keys as $1::text[]); $2 is the gap. Two statements
# rather than one with OR, so each can use its index instead of joining everything with everything.
LINK_EPISODE_ALERT = (
    "UPDATE episodes e SET alert_fingerprint = a.fingerprint FROM alert_log a "
    "WHERE e.alert_fingerprint IS NULL AND {side} AND a.kind = 'state' AND a.status = 'firing' "
    "AND a.labels->>'sensor' = e.sensor_id AND a.starts_at BETWEEN e.start_ts - $2 AND e.end_ts + $2",
    "e.id",
    "a.fingerprint",
)
LINK_INCIDENT_ALERT = (
    "UPDATE incidents i SET alert_fingerprint = a.fingerprint FROM alert_log a "
    "WHERE i.alert_fingerprint IS NULL AND {side} AND a.kind = 'state' AND a.status = 'firing' "
    "AND a.labels->>'zone' = i.zone AND NOT (a.labels ? 'sensor') "
    "AND a.starts_at BETWEEN i.start_ts - $2 AND i.end_ts + $2",
    "i.id",
    "a.fingerprint",
)
LINK_EPISODE_REPORT = (
    "UPDATE episodes e SET report_id = r.id FROM reports r "
    "WHERE e.report_id IS NULL AND {side} AND r.zone = e.zone AND (r.site = '' OR r.site = e.site) "
    "AND r.ts BETWEEN e.start_ts - $2 AND e.end_ts + $2",
    "e.id",
    "r.id",
)
LINK_EPISODE_LABEL = (
    "UPDATE episodes e SET label_id = l.incident_id FROM labels l "
    "WHERE e.label_id IS NULL AND {side} "
    "AND (l.sensors ? e.sensor_id OR (jsonb_array_length(l.sensors) = 0 AND l.zone = e.zone)) "
    "AND e.start_ts <= l.end_ms + $2 AND e.end_ts >= l.start_ms - $2",
    "e.id",
    "l.incident_id",
)


async def _link(
    conn: asyncpg.Connection, link: tuple[str, str, str], frame_ids: list[int], new_keys: list[str], gap: int
) -> None:
    sql, frame_key, other_key = link
    if frame_ids:
        await conn.execute(sql.format(side=f"{frame_key} = ANY($1::bigint[])"), frame_ids, gap)
    if new_keys:
        await conn.execute(sql.format(side=f"{other_key} = ANY($1::text[])"), new_keys, gap)


async def close_stale(conn: asyncpg.Connection, hs: HistorySettings, watermark: int) -> None:
    """Close episodes and incidents the stream (its clock: ``watermark``) has left more than a gap behind."""
    now = int(time.time() * 1000)
    await conn.execute(
        "UPDATE episodes SET state = 'closed', updated_at = $2 WHERE state = 'open' AND end_ts < $1",
        watermark - int(hs.episode_gap_s * 1000),
        now,
    )
    await conn.execute(
        "UPDATE incidents SET state = 'closed', updated_at = $2 WHERE state = 'open' AND end_ts < $1",
        watermark - int(hs.incident_gap_s * 1000),
        now,
    )


async def write_batch(
    conn: asyncpg.Connection,
    batch: Batch,
    hs: HistorySettings,
    partitions: store.Partitions,
    prefix: str,
    watermark: int,
) -> dict[str, int]:
    """Everything of one batch and the offsets after it, in the caller's transaction. Returns rows per table."""
    gap = int(hs.episode_gap_s * 1000)
    counts: dict[str, int] = {}
    rollups = batch.rollup_rows()
    for table, rows, col in (
        ("rollups", rollups, 2),
        ("anomalies", batch.anomalies, 1),
        ("aggregates", batch.aggregates, 3),
        ("risk", batch.risk, 3),
        ("alert_log", batch.alerts, 1),
        ("sensor_events", batch.sensor_events, 1),
        ("quarantine_samples", batch.quarantine_samples, 0),
    ):
        if rows:
            await partitions.ensure(conn, table, {r[col] for r in rows})
    if batch.quarantine_counts:
        await partitions.ensure(conn, "quarantine_counts", {k[0] for k in batch.quarantine_counts})

    await insert_rows(
        conn,
        "rollups",
        rollups,
        "ON CONFLICT (sensor_id, metric, minute) DO UPDATE SET count = rollups.count + excluded.count, "
        "min = least(rollups.min, excluded.min), max = greatest(rollups.max, excluded.max), "
        "sum = rollups.sum + excluded.sum",
    )
    counts["rollups"] = len(rollups)

    # Anomalies: only those new to the store feed the episodes (a replayed one changes nothing).
    fresh = await insert_rows(
        conn,
        "anomalies",
        batch.anomalies,
        "ON CONFLICT DO NOTHING",
        "sensor_id, ts, site, zone, utility, asset, score, severity, reason, top_metrics",
    )
    counts["anomalies"] = len(fresh)
    touched_episodes: list[int] = []
    if fresh:
        by_sensor: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in fresh:
            a = dict(r)
            a["top_metrics"] = orjson.loads(a["top_metrics"]) if isinstance(a["top_metrics"], str) else a["top_metrics"]
            by_sensor[a["sensor_id"]].append(a)
        lo = min(r["ts"] for r in fresh) - gap
        hi = max(r["ts"] for r in fresh) + gap
        near: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in await conn.fetch(
            f"SELECT id, {', '.join(EPISODE_FIELDS)} FROM episodes WHERE sensor_id = ANY($1::text[]) "
            "AND end_ts >= $2 AND start_ts <= $3 ORDER BY start_ts FOR UPDATE",
            list(by_sensor),
            lo,
            hi,
        ):
            near[r["sensor_id"]].append(_row_dict(r))
        changed = []
        for sensor, anomalies in by_sensor.items():
            changed.extend(fold_episodes(near[sensor], anomalies, gap))
        touched_episodes = await _save_frames(conn, "episodes", EPISODE_FIELDS, changed)
        counts["episodes"] = len(changed)

    aggregates = await insert_rows(
        conn,
        "aggregates",
        last_per_key(batch.aggregates, 4),  # (site, zone, utility, window_start)
        "ON CONFLICT (site, zone, utility, window_start) DO UPDATE SET window_end = excluded.window_end, "
        "count = excluded.count, anomaly_count = excluded.anomaly_count, metrics = excluded.metrics",
        "1",
    )
    counts["aggregates"] = len(aggregates)
    if batch.aggregates:
        # The hours these windows fall in, summed again from the windows (a re-sent window replaces its
        # predecessor, so adding it to the hour would count it twice).
        hours = sorted({r[3] - r[3] % 3_600_000 for r in batch.aggregates})
        zones = sorted({r[1] for r in batch.aggregates})
        await conn.execute(
            "INSERT INTO aggregates_hourly (site, zone, utility, hour, count, anomaly_count) "
            "SELECT site, zone, utility, window_start - window_start % 3600000, sum(count), sum(anomaly_count) "
            "FROM aggregates WHERE zone = ANY($1::text[]) AND window_start >= $2 AND window_start < $3 "
            "AND window_start - window_start % 3600000 = ANY($4::bigint[]) GROUP BY 1, 2, 3, 4 "
            "ON CONFLICT (site, zone, utility, hour) DO UPDATE SET count = excluded.count, "
            "anomaly_count = excluded.anomaly_count",
            zones,
            hours[0],
            hours[-1] + 3_600_000,
            hours,
        )

    fresh_risk = await insert_rows(
        conn, "risk", batch.risk, "ON CONFLICT DO NOTHING", "site, zone, utility, ts, probability, incident_type, loss"
    )
    counts["risk"] = len(fresh_risk)
    touched_incidents: list[int] = []
    if fresh_risk:
        igap = int(hs.incident_gap_s * 1000)
        by_zone: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in fresh_risk:
            d = dict(r)
            d["loss"] = orjson.loads(d["loss"]) if isinstance(d["loss"], str) else d["loss"]
            by_zone[(d["site"], d["zone"])].append(d)
        lo = min(r["ts"] for r in fresh_risk) - igap
        hi = max(r["ts"] for r in fresh_risk) + igap
        nearz: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in await conn.fetch(
            f"SELECT id, {', '.join(INCIDENT_FIELDS)} FROM incidents WHERE zone = ANY($1::text[]) "
            "AND end_ts >= $2 AND start_ts <= $3 ORDER BY start_ts FOR UPDATE",
            list({z for _, z in by_zone}),
            lo,
            hi,
        ):
            nearz[(r["site"], r["zone"])].append(dict(r))
        changed_i = []
        for key, risks in by_zone.items():
            changed_i.extend(fold_incidents(nearz[key], risks, hs.incident_threshold, igap))
        touched_incidents = await _save_frames(conn, "incidents", INCIDENT_FIELDS, changed_i)
        counts["incidents"] = len(changed_i)

    fresh_alerts = await insert_rows(conn, "alert_log", batch.alerts, "ON CONFLICT DO NOTHING", "fingerprint")
    counts["alert_log"] = len(fresh_alerts)
    new_fps = sorted({r["fingerprint"] for r in fresh_alerts})
    # An alert and its episode (or incident) may arrive in either order: link from whichever side is new.
    await _link(conn, LINK_EPISODE_ALERT, touched_episodes, new_fps, gap)
    await _link(conn, LINK_INCIDENT_ALERT, touched_incidents, new_fps, int(hs.incident_gap_s * 1000))

    counts["sensor_events"] = len(
        await insert_rows(conn, "sensor_events", batch.sensor_events, "ON CONFLICT DO NOTHING", "1")
    )
    qrows = [(*k, v) for k, v in batch.quarantine_counts.items()]
    await insert_rows(
        conn,
        "quarantine_counts",
        qrows,
        "ON CONFLICT (minute, source, reason) DO UPDATE SET count = quarantine_counts.count + excluded.count",
    )
    counts["quarantine_counts"] = len(qrows)
    await insert_rows(conn, "quarantine_samples", batch.quarantine_samples, "ON CONFLICT DO NOTHING")

    fresh_reports = [r["id"] for r in await insert_rows(conn, "reports", batch.reports, "ON CONFLICT DO NOTHING", "id")]
    counts["reports"] = len(fresh_reports)
    await _link(conn, LINK_EPISODE_REPORT, touched_episodes, fresh_reports, gap)
    fresh_labels = [
        r["incident_id"]
        for r in await insert_rows(
            conn,
            "labels",
            last_per_key(batch.labels, 1),  # incident_id
            "ON CONFLICT (incident_id) DO UPDATE SET end_ms = excluded.end_ms, sensors = excluded.sensors",
            "incident_id",
        )
    ]
    await _link(conn, LINK_EPISODE_LABEL, touched_episodes, fresh_labels, gap)
    fresh_feedback = await insert_rows(
        conn, "feedback", batch.feedback, "ON CONFLICT DO NOTHING", "fingerprint, ts, author, verdict, labels"
    )
    for f in fresh_feedback:
        labels = orjson.loads(f["labels"]) if isinstance(f["labels"], str) else f["labels"]
        episode = labels.get("episode_id")
        await conn.execute(
            "UPDATE episodes SET verdict = $1, verdict_by = $2, verdict_at = $3 "
            "WHERE (alert_fingerprint = $4 OR id = $5) AND (verdict_at IS NULL OR verdict_at <= $3)",
            f["verdict"],
            f["author"],
            f["ts"],
            f["fingerprint"],
            int(episode) if str(episode or "").isdigit() else -1,
        )
    counts["feedback"] = len(fresh_feedback)
    counts["labels"] = len(fresh_labels)

    if batch.rejects:
        await insert_rows(conn, "rejected", batch.rejects, 'ON CONFLICT (topic, partition, "offset") DO NOTHING')
    if watermark:
        await close_stale(conn, hs, watermark)
    if batch.offsets:
        topics, parts, offsets = zip(*((prefix + t, p, o) for (t, p), o in batch.offsets.items()), strict=True)
        await conn.execute(
            "INSERT INTO sink_offsets (topic, partition, next_offset) "
            "SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[]) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()",
            list(topics),
            list(parts),
            list(offsets),
        )
    return counts


def connection_error(exc: BaseException) -> bool:
    """An error of the way to PostgreSQL (retried after a reset), not of what was written (isolated)."""
    return isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError,
            KafkaError,
        ),
    )


class _Listener(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch being written commits (with its offsets) before the partitions move.
        async with self.sink.lock:
            pending, self.sink.pending = self.sink.pending, None
            if pending is not None:
                try:
                    await pending
                except Exception as exc:  # noqa: BLE001 - not committed: the next owner reads it again
                    log.warning("history sink: the batch in flight at a rebalance failed: %s", exc)
            self.sink.assigned -= set(revoked)
            self.sink.generation += 1

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.sink.seek_committed(set(assigned))


class Sink:
    """Kafka -> PostgreSQL, one transaction per micro-batch (see the module docstring)."""

    def __init__(self, settings: Settings, hs: HistorySettings) -> None:
        self.settings = settings
        self.hs = hs
        self.prefix = settings.topic_prefix
        self.topics = {settings.topic(t): t for t in TOPICS}
        self.decoder = Decoder(samples_per_minute=hs.quarantine_samples, sample_max_bytes=hs.sample_max_bytes)
        self.partitions = store.Partitions(hs.partition_days)
        self.lock = asyncio.Lock()
        self.conn: asyncpg.Connection | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[TopicPartition] = set()
        self.error = ""
        self.started = False
        self.watermark = 0
        self.last_batch_at = time.monotonic()
        self.written = 0
        self.pending: asyncio.Future[None] | None = None
        self.generation = 0  # rebalances seen: a fetch made across one is dropped (read again after the seek)
        self.stopping = False
        self.sought: dict[TopicPartition, int] = {}  # where each partition was sought at its last assignment
        self.on_assigned: Callable[[], None] = lambda: None

    async def _connect(self) -> asyncpg.Connection:
        conn = await store.connect(self.hs)
        if self.hs.migrate_on_start:
            await store.migrate(conn)
        version = await store.schema_version(conn)
        latest = store.migrations()[-1][0]
        if version < latest:
            raise RuntimeError(
                f"schema version {version}, this worker needs {latest}: run `python -m services.history migrate`"
            )
        self.partitions = store.Partitions(self.hs.partition_days)
        await self.partitions.load(conn)
        return conn

    async def seek_committed(self, tps: set[TopicPartition]) -> None:
        """Start each assigned partition after the offset committed with the data (else at the beginning)."""
        assert self.consumer is not None
        conn = self.conn
        offsets = {}
        if conn is not None:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM sink_offsets WHERE topic = ANY($1::text[])",
                sorted({tp.topic for tp in tps}),
            )
            offsets = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        for tp in tps:
            # Without a committed offset: from the start (offset 0, or the earliest kept once retention deleted it).
            # Not seek_to_beginning: awaiting its offset lookup inside the rebalance callback never returns.
            self.sought[tp] = offsets.get((tp.topic, tp.partition), 0)
            self.consumer.seek(tp, self.sought[tp])
        self.assigned |= tps
        self.generation += 1
        self.on_assigned()
        log.info("history sink: %d partitions assigned", len(self.assigned))

    async def start(self) -> None:
        self.conn = await self._connect()
        self.consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(),
            group_id=f"{self.prefix}flowwatch-history-sink",
            client_id=f"{self.prefix}flowwatch-history-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.hs.batch_size,
            fetch_max_wait_ms=max(1, int(self.hs.batch_within_s * 1000)),
            # The broker holds a fetch until this much has come (or batch_within_s has passed): with the default
            # of one byte a steady stream came as a fetch, and a transaction, per few milliseconds of readings
            # (at 5,000 readings/s ~60 a second, each a few round trips to PostgreSQL and one to Kafka, and each
            # reading's minute rolled up again per fetch): most of the sink's CPU, and PostgreSQL's.
            fetch_min_bytes=FILL_BYTES,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            session_timeout_ms=30_000,
            heartbeat_interval_ms=3_000,
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Listener(self))
        self.started = True

    async def run(self) -> None:
        """Read, write, repeat; a database or broker failure is retried, never fatal."""
        backoff = 1.0
        while not self.stopping:
            try:
                if not self.started:
                    await self.start()
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the sink must outlive any outage; it says why on /ready
                if self.stopping:
                    # stop() let go of the consumer under the loop: not an outage, and nothing to connect again
                    return
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("history sink: %s; retrying in %.0fs", self.error, backoff)
                await self._reset()
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
            else:
                backoff = 1.0

    async def _reset(self) -> None:
        """Drop connections; the next start reads again from the offsets committed with the data."""
        self.started = False
        self.assigned = set()
        self.decoder.forget()
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.consumer is not None:
            try:
                await self.consumer.stop()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self.consumer = None
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def _loop(self) -> None:
        """Fetch and decode the next batch while PostgreSQL commits the previous one (two cores at work)."""
        assert self.consumer is not None and self.conn is not None
        # As in shared.pump: what lives now lives as long as the process; keep it out of the collector's scans
        # and collect young objects less often (a batch allocates a few objects per message and frees them).
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        last_retention = last_idle_close = time.monotonic()
        within_ms = max(1, int(self.hs.batch_within_s * 1000))
        while not self.stopping:
            generation = self.generation
            fetched = await self.consumer.getmany(
                timeout_ms=0 if self.pending else within_ms, max_records=self.hs.batch_size
            )
            async with self.lock:
                if generation != self.generation:
                    # A rebalance came in during the fetch: its records may be from before the seek to the
                    # committed offsets (written now and read again, they would count twice: rollups are sums) or
                    # from after it (the consumer's position is past them). Either way: drop them and seek back to
                    # the committed offset, so they are read once, next.
                    for tp, records in fetched.items():
                        if tp in self.assigned and records:
                            self.consumer.seek(tp, self.sought.get(tp, records[0].offset))
                    fetched = {}
                # Only partitions still ours: a revocation during the fetch has waited for the commit in flight.
                groups = [
                    (self.topics[tp.topic], tp.partition, records)
                    for tp, records in fetched.items()
                    if records and tp in self.assigned
                ]
                batch = self.decoder.decode_groups(groups) if groups else None
                if self.pending is not None and (batch is not None or not fetched):
                    pending, self.pending = self.pending, None
                    await pending
                if batch is not None:
                    self.watermark = max(self.watermark, batch.newest_ts)
                    self.pending = asyncio.ensure_future(self._commit_or_isolate(batch, groups, self.watermark))
            self.error = ""
            if not fetched and self.pending is None and time.monotonic() - last_idle_close >= 10.0:
                # A quiet network sends nothing that would move the stream's clock: close by the wall clock
                # then (a late anomaly within the gap reopens its episode).
                last_idle_close = time.monotonic()
                await close_stale(self.conn, self.hs, int(time.time() * 1000))
            if self.pending is None and time.monotonic() - last_retention >= self.hs.retention_check_s:
                last_retention = time.monotonic()
                done = await store.apply_retention(self.conn, self.hs, int(time.time() * 1000))
                if done:
                    log.info("history retention: %s", done)
                    self.partitions = store.Partitions(self.hs.partition_days)
                    await self.partitions.load(self.conn)

    async def _commit_or_isolate(self, batch: Batch, groups: list[tuple[str, int, list[Any]]], watermark: int) -> None:
        """Commit a batch; when the database (or the write) refuses it, its messages one at a time.

        A refused batch would be read again after the reset and refused again, forever: the sink would stop. So
        when the error is not the connection's, the batch is written again in halves, down to single messages
        (:meth:`_bisect`), and a message refused alone is a reject (in ``rejected``, with the error): the batch
        goes on without it.
        """
        try:
            await self._commit(batch, watermark)
        except Exception as exc:  # sorted below: the connection's errors go up, the data's are isolated
            if connection_error(exc):
                raise
            log.error(
                "history sink: a batch of %d messages was refused (%s: %s); writing it again in halves",
                sum(len(records) for _, _, records in groups),
                type(exc).__name__,
                exc,
            )
            await self._isolate(groups, watermark)

    async def _isolate(self, groups: list[tuple[str, int, list[Any]]], watermark: int) -> None:
        # The decoder remembered the batch's readings (dedup): forget, or each would now look like its own duplicate.
        self.decoder.forget()
        await self._bisect(
            [(topic, partition, rec) for topic, partition, records in groups for rec in records], watermark
        )

    async def _bisect(self, items: list[tuple[str, int, Any]], watermark: int) -> None:
        """Commit ``items`` (in order); refused, each half alone, down to single messages, which become rejects.

        A batch of n messages with k the database refuses takes about k * log2(n) commits, not n.
        """
        state = self.decoder.snapshot()
        groups: dict[tuple[str, int], list[Any]] = {}
        for topic, partition, rec in items:
            groups.setdefault((topic, partition), []).append(rec)
        part = self.decoder.decode_groups([(t, p, recs) for (t, p), recs in groups.items()])
        try:
            await self._commit(part, watermark)
            return
        except Exception as exc:  # as in _commit_or_isolate
            if connection_error(exc):
                raise
            self.decoder.restore(state)
            if len(items) > 1:
                half = len(items) // 2
                await self._bisect(items[:half], watermark)
                await self._bisect(items[half:], watermark)
                return
            topic, partition, rec = items[0]
            reject = Batch()
            Decoder._reject(reject, topic, partition, rec, exc)
            reject.offsets[(topic, partition)] = rec.offset + 1
            reject.counts[topic] = 1
            log.error("history sink: %s[%d] offset %d refused alone; rejected: %s", topic, partition, rec.offset, exc)
            await self._commit(reject, watermark)

    async def _commit(self, batch: Batch, watermark: int) -> None:
        """One batch and the offsets after it, in one transaction."""
        assert self.conn is not None
        started = time.perf_counter()
        try:
            async with self.conn.transaction():
                counts = await write_batch(self.conn, batch, self.hs, self.partitions, self.prefix, watermark)
        except BaseException:
            # Not committed: the partitions this batch created may be gone too.
            self.partitions = store.Partitions(self.hs.partition_days)
            raise
        messages = 0
        for topic, n in batch.counts.items():
            MESSAGES.labels(topic).inc(n)
            messages += n
        for table, n in counts.items():
            ROWS.labels(table).inc(n)
        for topic, *_ in batch.rejects:
            REJECTED.labels(topic).inc()
        for topic, n in batch.accepted.items():
            ACCEPTED.labels(topic).inc(n)
        DUPLICATES.inc(batch.duplicates)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        self.written += messages
        self.last_batch_at = time.monotonic()
        if self.consumer is not None:
            # Mirror of the offsets for lag tools; the truth is in sink_offsets (best effort).
            try:
                await self.consumer.commit(
                    {TopicPartition(self.prefix + t, p): o for (t, p), o in batch.offsets.items()}
                )
            except (KafkaError, AssertionError) as exc:
                log.debug("could not mirror offsets: %s", exc)

    async def stop(self) -> None:
        """Commit the batch in flight, then let go of Kafka and PostgreSQL."""
        self.stopping = True
        async with self.lock:
            pending, self.pending = self.pending, None
            if pending is not None:
                try:
                    await pending
                except Exception as exc:  # noqa: BLE001 - not committed: read again after the restart
                    log.warning("history sink: the last batch did not commit: %s", exc)
            await self._reset()

    def check(self) -> tuple[bool, str]:
        if self.error:
            return False, self.error
        if not self.started:
            return False, "starting: connecting to PostgreSQL and Kafka"
        return True, f"{len(self.assigned)} partitions, {self.written} messages written"
