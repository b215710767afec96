"""The detector service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

- readings.clean -> :class:`~services.detector.worker.DetectorEngine` (the readings pump,
  micro-batches, the ``detector-sensor-state`` and ``detector-progress`` tables) -> scores,
  anomalies, zone partials, Redis.
- zone partials -> the ``detector-aggregate`` agent (per-zone open windows in the
  ``detector-zone-windows`` table, written once per zone per batch) -> aggregates.
- models topic -> hot swap of a profile's model (:mod:`shared.model_follower`: every worker, group-less
  consumer, and a poll of the registry).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust

from services.detector import aggregates
from services.detector.metrics import AGGREGATES_EMITTED, TRAINED_PROFILES
from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.serving import ModelServing
from services.detector.settings import DetectorSettings
from services.detector.state import Layout
from services.detector.worker import DetectorEngine
from shared.codec import dumps, loads
from shared.metrics import DECODE_ERRORS, EVENTS_OUT
from shared.mlops.monitor import DriftMonitor
from shared.mlops.monitor import check as drift_check
from shared.pump import Pump
from shared.registry import ModelRegistry
from shared.service import base_app
from shared.settings import Settings
from shared.streaming import dead_letter_event, event_context, write_once_per_key
from shared.table_route import table_page
from shared.topics import AGGREGATES, DETECTOR_ZONE_PARTIALS, faust_topic

log = logging.getLogger("services.detector")

SERVICE = "detector"
OPENAPI = Path(__file__).with_name("openapi.yaml")


def state_summary(sensor_id: str, held: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """What the detector thinks is usual for one sensor, for people and tests."""
    metrics, vec = held
    lay = Layout(len(metrics))
    b = lay.blocks
    return {
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


def create_app(settings: Settings | None = None, detector_settings: DetectorSettings | None = None) -> faust.App:
    settings = settings or Settings.from_env(SERVICE)
    ds = detector_settings or DetectorSettings.from_env()
    app, health = base_app(
        settings,
        openapi=OPENAPI,
        session_timeout_s=ds.session_timeout_s,
    )
    profiles = ProfileSet.load(ds.profiles_file)
    store = ModelStore(profiles, ds.zscore_threshold)
    monitor = (
        DriftMonitor(SERVICE, ds.drift_window_s * 1000, ds.drift_reference_s * 1000, ds.drift_bucket_s * 1000)
        if ds.drift_check_s > 0
        else None
    )
    serving = ModelServing(store, ModelRegistry(settings.model_dir), ds.model_prefix, ds.model_alias, monitor)
    scorer = Scorer(store, ds.aggregate_window_s * 1000, ds.reason_metrics, ds.emit_scores, False, monitor)
    engine = DetectorEngine(app, settings, ds, scorer)
    pump = Pump.around(app, engine)
    app.detector = engine  # type: ignore[attr-defined]
    window_ms, grace_ms = ds.aggregate_window_s * 1000, ds.aggregate_grace_s * 1000
    aggregates_name = settings.topic(AGGREGATES.name)

    partials_topic = faust_topic(app, DETECTOR_ZONE_PARTIALS, settings)
    zone_windows = app.Table(
        "detector-zone-windows",
        default=None,
        key_type=bytes,  # bytes types make Faust use the raw serializer for the store and changelog
        value_type=bytes,
        partitions=settings.partitions,
        help="Open aggregate windows per zone",
    )

    serving.refresh_now("start")
    TRAINED_PROFILES.set(len(serving.serving))
    health.add_check("models", serving.readiness)
    pump.install(health, "readings")
    statistical = [p for p in profiles.by_name if p not in serving.serving]
    if statistical:
        log.warning(
            "no trained model for profiles %s: running the statistical z-score detector (%.1f sigma) for them",
            ", ".join(statistical),
            ds.zscore_threshold,
        )

    @app.agent(partials_topic, name="detector-aggregate")
    async def aggregate_zones(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.5):
            incoming: dict[bytes, dict[str, dict]] = {}
            last_event: dict[bytes, Any] = {}
            watermark = 0
            for ev in events:
                try:
                    partials = loads(ev.value or b"")
                    why = aggregates.problem(partials, ev.key)
                except (ValueError, TypeError) as exc:
                    why = f"undecodable: {type(exc).__name__}: {exc}"
                if why:
                    DECODE_ERRORS.labels(SERVICE, partials_topic.get_topic_name()).inc()
                    await dead_letter_event(app, settings, SERVICE, ev, [f"zone partial: {why}"])
                    continue
                have = incoming.setdefault(ev.key, {})
                for ws, p in partials.items():
                    have[ws] = aggregates.merge(have[ws], p) if ws in have else p
                    watermark = max(watermark, p.get("ts", 0))
                last_event[ev.key] = ev
            out = []
            updates: dict[bytes, bytes] = {}
            for key, partials in incoming.items():
                with event_context(last_event[key]):  # the read goes to the zone's own partition, as the write
                    stored = zone_windows.get(key)
                windows = loads(stored) if stored else {}
                open_windows, closed = aggregates.apply(windows, partials, watermark, window_ms, grace_ms)
                updates[key] = dumps(open_windows)
                zone = key.decode()
                out.extend((key, dumps(aggregates.to_record(zone, ws, p, window_ms))) for ws, p in closed)
            write_once_per_key(zone_windows, updates, last_event)
            for key, value in out:
                await app.producer.send(aggregates_name, key, value, None, None, None)
            if out:
                EVENTS_OUT.labels(SERVICE, aggregates_name).inc(len(out))
                AGGREGATES_EMITTED.inc(len(out))

    stop_watch = asyncio.Event()

    @app.task
    async def follow_models() -> None:
        await serving.follow(app, settings, stop_watch, ds.model_poll_s)

    @app.timer(interval=ds.cache_flush_s, name="detector-cache")
    async def flush_cache() -> None:
        await engine.flush_cache()

    if ds.partials_every_s > 0:

        @app.timer(interval=ds.partials_every_s, name="detector-partials")
        async def send_partials() -> None:
            async with pump.lock:  # between batches and checkpoints, which take the held partials too
                try:
                    await engine.send_due_partials()
                except Exception as exc:  # noqa: BLE001 - held again: they go with the next batch or checkpoint
                    log.warning("zone partials not sent (held for the next batch): %s", exc)

    @app.timer(interval=ds.state_sweep_s, name="detector-state-sweep")
    async def sweep_states() -> None:
        async with pump.lock:  # between batches: a deletion never races a checkpoint
            await engine.sweep()

    if monitor is not None:

        @app.timer(interval=ds.drift_check_s, name="detector-drift")
        async def check_drift() -> None:
            await drift_check(monitor, app, settings, serving.model_of, ds.drift_window_s)

    @app.timer(interval=10.0)
    async def model_gauge() -> None:
        TRAINED_PROFILES.set(len(serving.serving))

    @app.on_before_shutdown.connect
    async def _stop(sender: Any, **_: Any) -> None:
        stop_watch.set()
        await pump.stop()

    @table_page(health, "/detector/state/{sensor_id}", engine.states, "sensor_id")
    async def sensor_view(web: Any, request: Any, sensor_id: str) -> Any:
        raw = engine.memory.get(sensor_id)
        if raw is None:
            for p in pump.owned_partitions():
                raw = engine.load_state(sensor_id, p)
                if raw is not None:
                    break
        if raw is None:
            return web.json({"sensor_id": sensor_id, "error": "no state for this sensor"}, status=404)
        return web.json(state_summary(sensor_id, raw))

    @health.api_page("/detector/stats", "viewer")
    async def stats_view(web: Any, request: Any) -> Any:
        """Totals and the processing time of recent micro-batches (p50/p99)."""
        seconds = sorted(t for t, _ in engine.recent)
        sizes = [n for _, n in engine.recent]

        def pct(q: float) -> float | None:
            return round(seconds[min(len(seconds) - 1, int(q * len(seconds)))], 6) if seconds else None

        return web.json(
            {
                **engine.totals,
                "recent_batches": len(seconds),
                "batch_seconds_p50": pct(0.5),
                "batch_seconds_p99": pct(0.99),
                "batch_seconds_max": seconds[-1] if seconds else None,
                "batch_size_mean": round(sum(sizes) / len(sizes), 1) if sizes else None,
                "batch_size": ds.batch_size,
                "lag": pump.lag,
            }
        )

    @health.api_page("/detector/drift", "viewer")
    async def drift_view(web: Any, request: Any) -> Any:
        """Per profile: drift status, PSI per column over the window, where each reference came from."""
        if monitor is None:
            return web.json({"enabled": False, "profiles": {}})
        return web.json({"enabled": True, "window_s": ds.drift_window_s, "profiles": monitor.snapshot()})

    @health.api_page("/detector/models", "viewer")
    async def models_view(web: Any, request: Any) -> Any:
        _, detail = serving.readiness()
        lifecycle = await asyncio.to_thread(serving.lifecycle)
        return web.json(
            {"serving": serving.versions(), "errors": serving.errors, "detail": detail, "lifecycle": lifecycle}
        )

    return app


app = create_app()
