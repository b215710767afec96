"""The detector service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

Agents are thin: they decode, move data and touch tables. Scoring is
:class:`services.detector.pipeline.Scorer` (pure), run in a worker thread so the
event loop keeps heartbeating while numpy and scikit-learn work.

State: ``detector-sensor-state`` (sensor_id -> packed rolling state) is written
once per sensor per micro-batch, under the partition context of that sensor's
last event in the batch (design pitfall 10), so its changelog partition matches
the sensor's input partition and recovery puts it back on the right worker.
``detector-zone-windows`` (zone -> open aggregate windows) lives with the
zone-keyed partials topic the scoring agent feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import faust

from services.detector import aggregates
from services.detector.metrics import (
    AGGREGATES_EMITTED,
    ANOMALIES,
    LATE,
    MODEL_LOADS,
    QUARANTINED,
    READINGS_SCORED,
    SEND_ERRORS,
    STATE_ERRORS,
    TRAINED_PROFILES,
)
from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.serving import ModelServing, watch_models
from services.detector.settings import DetectorSettings
from services.detector.state import unpack
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.records import QuarantinedReading, Reading
from shared.registry import ModelRegistry
from shared.service import base_app
from shared.settings import Settings
from shared.topics import AGGREGATES, READINGS_CLEAN, READINGS_QUARANTINE, SCORES, faust_topic
from shared.topics import ANOMALIES as ANOMALIES_TOPIC

log = logging.getLogger("services.detector")

SERVICE = "detector"
STATE_TABLE = "detector-sensor-state"
WINDOWS_TABLE = "detector-zone-windows"
PARTIALS_TOPIC = "detector.zone-partials"


@contextlib.contextmanager
def event_context(stream: Any, event: Any) -> Iterator[None]:
    """Make ``event`` the stream's current event while writing its key's table value.

    A Faust table write takes its changelog partition from the current event;
    inside ``take_events`` there is none, so we set the one the key belongs to.
    """
    previous = stream.current_event
    stream._set_current_event(event)
    try:
        yield
    finally:
        stream._set_current_event(previous)


def decode_readings(events: list[Any]) -> tuple[list[Reading], list[Any], list[QuarantinedReading]]:
    """Readings and their events, plus what could not be read (never dropped silently)."""
    readings, kept, bad = [], [], []
    now = int(time.time() * 1000)
    for ev in events:
        raw = ev.value
        reason = None
        try:
            data = loads(raw)
            r = Reading.from_dict(data)
            if not isinstance(r.sensor_id, str) or not r.sensor_id:
                reason = "missing sensor_id"
            elif not isinstance(r.ts, int):
                reason = "ts is not an integer (epoch ms)"
            elif not isinstance(r.values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in r.values.values()
            ):
                reason = "values must be a map of numbers"
        except (ValueError, TypeError, AttributeError) as exc:
            reason = f"undecodable: {type(exc).__name__}: {exc}"
        if reason is None:
            readings.append(r)
            kept.append(ev)
        else:
            key = ev.key.decode("utf-8", "replace") if isinstance(ev.key, bytes) else None
            payload = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
            bad.append(
                QuarantinedReading(payload=payload, source="detector", reasons=[reason], received_ms=now, sensor_id=key)
            )
    return readings, kept, bad


def create_app(settings: Settings | None = None, detector_settings: DetectorSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env(SERVICE)
    ds = detector_settings or DetectorSettings.from_env()
    app, health = base_app(settings)
    profiles = ProfileSet.load(ds.profiles_file)
    store = ModelStore(profiles, ds.zscore_threshold)
    serving = ModelServing(store, ModelRegistry(settings.model_dir), ds.model_prefix, ds.model_alias)
    scorer = Scorer(store, ds.aggregate_window_s * 1000, ds.reason_metrics, ds.emit_scores)
    window_ms, grace_ms = ds.aggregate_window_s * 1000, ds.aggregate_grace_s * 1000
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE)
    app.detector = {"settings": ds, "store": store, "serving": serving, "scorer": scorer}  # type: ignore[attr-defined]

    clean = faust_topic(app, READINGS_CLEAN, settings)
    names = {
        "scores": settings.topic(SCORES.name),
        "anomalies": settings.topic(ANOMALIES_TOPIC.name),
        "aggregates": settings.topic(AGGREGATES.name),
        "quarantine": settings.topic(READINGS_QUARANTINE.name),
        "partials": settings.topic(PARTIALS_TOPIC),
    }
    partials_topic = app.topic(
        names["partials"],
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        internal=True,
    )
    sensor_state = app.Table(
        STATE_TABLE,
        default=None,
        key_type=bytes,  # bytes types make Faust use the raw serializer for the store and changelog
        value_type=bytes,
        partitions=settings.partitions,
        help="Rolling state per sensor (packed float64 vector)",
    )
    zone_windows = app.Table(
        WINDOWS_TABLE,
        default=None,
        key_type=bytes,  # bytes types make Faust use the raw serializer for the store and changelog
        value_type=bytes,
        partitions=settings.partitions,
        help="Open aggregate windows per zone",
    )

    changed = serving.refresh()
    TRAINED_PROFILES.set(len(serving.serving))
    health.add_check("models", serving.readiness)
    statistical = [p for p in profiles.by_name if p not in serving.serving]
    if statistical:
        log.warning(
            "no trained model for profiles %s: running the statistical z-score detector (%.1f sigma) for them",
            ", ".join(statistical),
            ds.zscore_threshold,
        )
    if changed:
        MODEL_LOADS.inc(len(changed))

    send_errors: dict[str, int] = {}

    def _sent(topic: str) -> Any:
        def done(fut: asyncio.Future) -> None:
            if fut.cancelled() or fut.exception() is not None:
                SEND_ERRORS.labels(topic).inc()
                send_errors[topic] = send_errors.get(topic, 0) + 1
                if send_errors[topic] in (1, 100, 10_000):
                    log.error("send to %s failed: %s", topic, fut.exception() if not fut.cancelled() else "cancelled")

        return done

    async def send_all(kind: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        producer = app.producer
        topic = names[kind]
        callback = _sent(topic)
        for key, value in messages:
            fut = await producer.send(topic, key, value, None, None, None)
            fut.add_done_callback(callback)
        if messages:
            EVENTS_OUT.labels(SERVICE, topic).inc(len(messages))

    @app.agent(clean, name="detector-score")
    async def score_readings(stream: Any) -> None:
        async for events in stream.take_events(ds.batch_size, within=ds.batch_wait_s):
            started = time.perf_counter()
            EVENTS_IN.labels(SERVICE, clean.get_topic_name()).inc(len(events))
            readings, kept, bad = decode_readings(events)
            if bad:
                DECODE_ERRORS.labels(SERVICE, clean.get_topic_name()).inc(len(bad))
                for q in bad:
                    QUARANTINED.labels(q.reasons[0].split(":")[0]).inc()
                await send_all("quarantine", [(q.sensor_id.encode() if q.sensor_id else None, dumps(q)) for q in bad])
            if not readings:
                continue
            keys = {r.sensor_id for r in readings}
            states = {sid: sensor_state.get(sid.encode()) for sid in keys}
            if ds.compute_in_thread:
                result = await asyncio.to_thread(scorer.process, readings, states.get)
            else:
                result = scorer.process(readings, states.get)
            if result.bad_states:
                STATE_ERRORS.inc(result.bad_states)
            if result.late:
                LATE.inc(result.late)
            # one table write per sensor per batch, in the partition of its last event
            for sid, blob in result.states.items():
                with event_context(stream, kept[result.last_index[sid]]):
                    sensor_state[sid.encode()] = blob
            await send_all("scores", [(s.sensor_id.encode(), dumps(s)) for s in result.scores])
            await send_all("anomalies", [(a.sensor_id.encode(), dumps(a)) for a in result.anomalies])
            await send_all("partials", [(k.encode(), dumps(v)) for k, v in result.partials.items()])
            by_profile: dict[str, int] = {}
            flagged: dict[str, int] = {}
            for s in result.scores:
                by_profile[s.model] = by_profile.get(s.model, 0) + 1
            for a in result.anomalies:
                key = aggregates.zone_key(a.site, a.zone, a.utility)
                flagged[key] = flagged.get(key, 0) + 1
                ANOMALIES.labels(store.profiles.for_reading(readings[result.last_index[a.sensor_id]]).name).inc()
            for profile, n in by_profile.items():
                READINGS_SCORED.labels(profile).inc(n)
            if ds.cache_enabled:
                latest = {
                    s.sensor_id: {
                        "ts": s.ts,
                        "score": s.score,
                        "threshold": s.threshold,
                        "is_anomaly": s.is_anomaly,
                        "model_version": s.model_version,
                        "zone": s.zone,
                    }
                    for s in result.scores
                }
                await cache.set_many("score", latest)
                await cache.incr_many("zone_anomalies", flagged)
            BATCH_SIZE.labels(SERVICE, "score").observe(len(events))
            BATCH_SECONDS.labels(SERVICE, "score").observe(time.perf_counter() - started)

    @app.agent(partials_topic, name="detector-aggregate")
    async def aggregate_zones(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.5):
            incoming: dict[bytes, dict[str, dict]] = {}
            last_event: dict[bytes, Any] = {}
            watermark = 0
            for ev in events:
                try:
                    partials = loads(ev.value)
                except ValueError:
                    DECODE_ERRORS.labels(SERVICE, names["partials"]).inc()
                    continue
                have = incoming.setdefault(ev.key, {})
                for ws, p in partials.items():
                    have[ws] = aggregates.merge(have[ws], p) if ws in have else p
                    watermark = max(watermark, p.get("ts", 0))
                last_event[ev.key] = ev
            out = []
            for key, partials in incoming.items():
                stored = zone_windows.get(key)
                windows = loads(stored) if stored else {}
                open_windows, closed = aggregates.apply(windows, partials, watermark, window_ms, grace_ms)
                with event_context(stream, last_event[key]):
                    zone_windows[key] = dumps(open_windows)
                zone = key.decode()
                out.extend((key, dumps(aggregates.to_record(zone, ws, p, window_ms))) for ws, p in closed)
            await send_all("aggregates", out)
            AGGREGATES_EMITTED.inc(len(out))

    stop_watch = asyncio.Event()

    @app.task
    async def follow_models() -> None:
        await watch_models(serving, settings, stop_watch, ds.model_poll_s)

    @app.timer(interval=10.0)
    async def model_gauge() -> None:
        TRAINED_PROFILES.set(len(serving.serving))

    @app.on_before_shutdown.connect
    async def _stop(*_: Any, **__: Any) -> None:
        stop_watch.set()

    @app.page("/detector/state/{sensor_id}")
    async def sensor_view(web: Any, request: Any, sensor_id: str) -> Any:
        """What the detector currently thinks is usual for one sensor (from the local table)."""
        raw = sensor_state.get(sensor_id.encode())
        if raw is None:
            return web.json({"sensor_id": sensor_id, "error": "no state for this sensor on this worker"}, status=404)
        metrics, vec = unpack(raw)
        from services.detector.state import Layout

        lay = Layout(len(metrics))
        b = lay.blocks
        body = {
            "sensor_id": sensor_id,
            "readings": int(vec[lay.N]),
            "last_ts": int(vec[lay.TS]),
            "score": float(vec[lay.SCORE]),
            "in_anomaly": bool(vec[lay.FLAG]),
            "metrics": {
                m: {
                    "count": int(vec[b["count"]][j]),
                    "last": None if vec[b["last"]][j] != vec[b["last"]][j] else float(vec[b["last"]][j]),
                    "mean": float(vec[b["ml"]][j]),
                    "std": float(max(vec[b["vl"]][j], 0.0) ** 0.5),
                }
                for j, m in enumerate(metrics)
            },
        }
        return web.json(body)

    @app.page("/detector/models")
    async def models_view(web: Any, request: Any) -> Any:
        _, detail = serving.readiness()
        return web.json({"serving": serving.serving, "errors": serving.errors, "detail": detail})

    return app


app = create_app()
