"""The alerts service's Faust app: `create_app(settings)` and the module-level `app` for the CLI.

Two stages, both thin over pure code:

* ``evaluate`` (input partitions, micro-batches, no state): anomalies, risk, sensor
  events and quarantined readings → rule hits merged per fingerprint → the internal
  events topic, keyed by the shard labels (``global.shard_by``, default site/zone),
  so every alert, group and inhibition of a zone lives on one partition. Anomalies,
  the input that floods, are read by a pump (:mod:`services.alerts.intake`), the
  others by an agent; both hand a batch over as soon as nothing more is ready.
* ``alert_state`` (internal events, micro-batches split by partition): alert
  lifecycle, groups, outbox. Events go through write-back overlays of decoded
  in-memory images of the tables (:mod:`services.alerts.image`);
  each changed key is then written once per batch inside an event context of its
  partition (pitfall 10), so the changelog and the rocksdb partition are the right
  ones and recovery restores them. A timer sends a ``tick`` to each partition this
  worker owns: timers run *inside* stream iteration, so their writes are recovered too.
  A group made due by a batch (a new alert with ``group_wait: 0``) flushes at the end of
  that batch; the tick is for the timers (group_wait, group_interval, repeat, resolve).

Deliveries run beside the stream (:mod:`services.alerts.dispatcher`) so a slow
receiver never stalls a partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
import httpx

from services.alerts.api import AlertsApi, mount
from services.alerts.config import Config, load_config
from services.alerts.dispatcher import Dispatcher, Integrations
from services.alerts.evaluate import INPUTS, FloodGate, decode_internal, evaluate_batch, internal_messages
from services.alerts.image import TableImage
from services.alerts.intake import AnomalyIntake
from services.alerts.metrics import EVALUATED, OBSERVATIONS
from services.alerts.mirror import Mirror
from services.alerts.overlay import Overlay
from services.alerts.processor import Processor, Schedule, fuse
from services.alerts.settings import AlertsSettings
from services.alerts.silences import Limits, collectable, stored
from shared import deadletter
from shared.auth import TokenStore
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DEAD_LETTERS, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.service import base_app
from shared.settings import Settings
from shared.streaming import event_context, take_ready
from shared.topics import ALERTS_DLQ, ANOMALIES, DEADLETTER, FEEDBACK

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, alerts_settings: AlertsSettings | None = None, config: Config | None = None
) -> faust.App:
    settings = settings or Settings.from_env("alerts")
    asettings = alerts_settings or AlertsSettings.from_env()
    config = config or load_config(asettings.config_path)
    if asettings.external_url:
        config = Config(**{**config.__dict__, "external_url": asettings.external_url})
    app, state = base_app(
        settings,
        openapi=Path(__file__).with_name("openapi.yaml"),
        session_timeout_s=asettings.session_timeout_s,
        # Every hop of an alert (evaluate -> events, the outbox intent before a delivery, results) is one
        # record waited for: a linger would add itself to each. aiokafka keeps one request in flight per
        # broker, so what is produced meanwhile still goes out as one batch.
        producer_linger_ms=0,
    )
    # The alerts API also takes the tokens of its own older variable, besides everyone's FLOWWATCH_API_TOKENS.
    tokens = state.tokens
    tokens.extend(TokenStore.load(asettings.tokens_env, asettings.tokens_file))
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}

    # Anomalies come in floods: they are read by the intake's pump (below), the other inputs by an agent.
    by_topic = {settings.topic(name): name for name in INPUTS if name != ANOMALIES.name}
    inputs = app.topic(*by_topic, internal=False, **raw)
    events = app.topic(f"{app.conf.id}-events", internal=True, partitions=settings.partitions, **raw)
    silence_commands = app.topic(f"{app.conf.id}-silence-commands", internal=True, partitions=1, **raw)
    dlq = app.topic(settings.topic(ALERTS_DLQ.name), internal=False, **raw)
    deadletters = app.topic(settings.topic(DEADLETTER.name), internal=False, **raw)
    feedback = app.topic(settings.topic(FEEDBACK.name), internal=False, **raw)
    outputs: dict[str, Any] = {}

    schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="orjson")
    table_kw: dict[str, Any] = {"partitions": settings.partitions, "schema": schema}
    alerts_t = app.Table("alerts", **table_kw)
    groups_t = app.Table("groups", **table_kw)
    outbox_t = app.Table("outbox", **table_kw)
    limits_t = app.Table("limits", **table_kw)
    counters_t = app.Table("counters", **table_kw)
    inhibitors_t = app.Table("inhibitors", **table_kw)
    # Every worker needs every silence; faust's advice for GlobalTable: one partition, recovery buffer 1.
    silences_t = app.GlobalTable("silences", partitions=1, recovery_buffer_size=1, schema=schema)

    state_tables = {
        "alerts": alerts_t,
        "groups": groups_t,
        "outbox": outbox_t,
        "limits": limits_t,
        "counters": counters_t,
        "inhibitors": inhibitors_t,
    }
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service="alerts")
    mirror = Mirror(cache)

    async def send_event(value: dict[str, Any], *, key: bytes | None = None, partition: int | None = None) -> None:
        fut = await events.send(key=key, value=dumps(value), partition=partition)
        await fut

    async def kafka_send(topic: str, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        name = settings.topic(topic)
        if name not in outputs:
            outputs[name] = app.topic(name, internal=False, **raw)
        # all sent, then one wait for the acks: a notification of N alerts is one round trip, not N
        futures = [await outputs[name].send(key=key, value=dumps(value)) for key, value in records]
        await asyncio.gather(*futures)
        EVENTS_OUT.labels("alerts", topic).inc(len(records))

    async def dead_letter(record: dict[str, Any]) -> None:
        fut = await dlq.send(key=record["receiver"].encode(), value=dumps(record))
        await fut
        EVENTS_OUT.labels("alerts", ALERTS_DLQ.name).inc()
        log.error(
            "notification %s to %s/%s sent to the DLQ after %s attempt(s): %s",
            record["id"],
            record["receiver"],
            record["integration"],
            record["attempts"],
            record["error"],
        )

    http = httpx.AsyncClient(follow_redirects=False)
    dispatcher = Dispatcher(
        asettings,
        Integrations(config, http, kafka_send),
        cache.client,
        cache.key("", ""),
        flush=app.producer.flush,
        report=lambda partition, value: send_event(value, partition=partition),
        dead_letter=dead_letter,
    )

    async def send_ack(alert: dict[str, Any], value: dict[str, Any]) -> None:
        await send_event(value, partition=alert["partition"])

    async def send_silence(sid: str, silence: dict[str, Any] | None) -> None:
        fut = await silence_commands.send(key=sid.encode(), value=dumps(silence))
        await fut

    async def send_feedback(record: dict[str, Any]) -> None:
        fut = await feedback.send(key=record["fingerprint"].encode(), value=dumps(record))
        await fut
        EVENTS_OUT.labels("alerts", FEEDBACK.name).inc()

    mount(
        app,
        AlertsApi(
            config,
            tokens,
            mirror,
            silences_t,
            send_ack=send_ack,
            send_silence=send_silence,
            send_feedback=send_feedback,
            limits=Limits.of(asettings),
            max_silences=asettings.silence_max_count,
        ),
    )

    gate = FloodGate()
    intake = AnomalyIntake(app, settings, asettings, config, events.get_topic_name(), gate)
    intake.pump.install(state, "anomalies")

    async def dead_letter_inputs(batch: list[Any], rejected: list[tuple[int, str]]) -> None:
        """Input records that are not records of their topic: dead-lettered with why (all acknowledged first)."""
        futures = []
        for i, reason in rejected:
            event = batch[i]
            msg = event.message
            value = deadletter.dead_letter(
                event.value, [reason], "alerts", msg.topic, key=event.key, partition=msg.partition, offset=msg.offset
            )
            futures.append(await deadletters.send(key=event.key, value=value))
            DEAD_LETTERS.labels("alerts", by_topic[msg.topic]).inc()
        await asyncio.gather(*futures)
        log.warning(
            "dead-lettered %d input records that are not records of their topic; first: %s",
            len(rejected),
            rejected[0][1],
        )

    @app.agent(inputs)
    async def evaluate(stream: Any) -> None:
        async for batch in take_ready(stream, asettings.batch_size, asettings.batch_within_s):
            started = time.perf_counter()
            items = [(by_topic[e.message.topic], e.value) for e in batch]
            for name in {n for n, _ in items}:
                EVENTS_IN.labels("alerts", name).inc(sum(1 for n, _ in items if n == name))
            result = evaluate_batch(config, items, asettings.quarantine_window_s, gate=gate)
            if result.rejected:
                await dead_letter_inputs(batch, result.rejected)
            for name, n in result.evaluated.items():
                EVALUATED.labels(name).inc(n)
            for p, value in internal_messages(result, config, settings.partitions):
                await events.send(value=value, partition=p)
            OBSERVATIONS.labels("forwarded").inc(len(result.observations))
            BATCH_SIZE.labels("alerts", "evaluate").observe(len(batch))
            BATCH_SECONDS.labels("alerts", "evaluate").observe(time.perf_counter() - started)

    last_tick: dict[int, float] = {}
    images = {name: TableImage(t) for name, t in state_tables.items()}
    schedule = Schedule()
    pending_counts: dict[str, int] = {}

    @app.on_partitions_assigned.connect
    async def _forget_schedule(sender: Any, assigned: Any, **_: Any) -> None:
        # Another worker may have changed these partitions' tables meanwhile: look again.
        schedule.reset()
        for image in images.values():
            image.reset()

    # Mirror writes are batched: one Redis round trip per tick instead of one per event.
    pending_mirror: dict[str, dict[str, Any] | None] = {}

    async def flush_mirror() -> None:
        if not pending_mirror:
            return
        batch = dict(pending_mirror)
        pending_mirror.clear()
        await mirror.put_alerts({fp: a for fp, a in batch.items() if a is not None})
        await mirror.remove_alerts([fp for fp, a in batch.items() if a is None])

    @app.agent(events)
    async def alert_state(stream: Any) -> None:
        async for batch in take_ready(stream, asettings.batch_size, asettings.batch_within_s):
            by_partition: dict[int, list[Any]] = {}
            for event in batch:
                by_partition.setdefault(event.message.partition, []).append(event)
            for partition, evs in by_partition.items():
                started = time.perf_counter()
                overlays = {name: Overlay(image.view(partition)) for name, image in images.items()}
                proc = Processor(
                    config, asettings, **overlays, silences=silences_t, schedule=schedule, pending_counts=pending_counts
                )
                dispatch: dict[str, dict[str, Any]] = {}
                values = []
                for event in evs:
                    try:
                        value = decode_internal(event.value)
                    except ValueError as exc:
                        DECODE_ERRORS.labels("alerts", "events").inc()
                        log.warning("undecodable internal event skipped: %s", exc)
                        continue
                    if value["type"] == "tick":
                        # Ticks can queue up behind a backlog; one per interval is enough.
                        now = time.time()
                        if now - last_tick.get(partition, 0.0) < asettings.tick_interval_s * 0.5:
                            continue
                        last_tick[partition] = now
                    elif value["type"] == "obs":
                        OBSERVATIONS.labels("applied").inc(len(value.get("obs") or ()))
                    values.append(value)
                # the batch's rule hits merged per alert (a backlog of fetches holds a repeating sensor many times)
                for value in fuse(values):
                    changes = proc.handle(value, partition, time.time())
                    pending_mirror.update(changes.alerts)
                    pending_mirror.update(dict.fromkeys(changes.removed))
                    dispatch.update((e["id"], e) for e in changes.dispatch)
                # A group this batch made due (group_wait 0, or a timer that just expired) flushes now, not at
                # the next tick; so does a partition the schedule does not know yet (after a start or a
                # rebalance), which is scanned as a tick would (a scan of the partition's image in memory).
                now = time.time()
                if now >= schedule.next_flush.get(partition, 0.0):
                    last_tick[partition] = now
                    changes = proc.handle({"type": "tick"}, partition, now)
                    pending_mirror.update(changes.alerts)
                    pending_mirror.update(dict.fromkeys(changes.removed))
                    dispatch.update((e["id"], e) for e in changes.dispatch)
                # Each changed key is written once, in the context of an event of its partition (pitfall 10).
                with event_context(evs[-1]):
                    for overlay in overlays.values():
                        overlay.flush()
                for entry in dispatch.values():
                    if proc.outbox.get(entry["id"]) is not None:
                        dispatcher.submit(entry)
                BATCH_SIZE.labels("alerts", "state").observe(len(evs))
                BATCH_SECONDS.labels("alerts", "state").observe(time.perf_counter() - started)
            if len(pending_mirror) >= 1000:
                await flush_mirror()

    async def set_aside(event: Any, reason: str) -> None:
        """A silence command that is not a well-formed silence: dead-lettered with why, never stored."""
        msg = event.message
        value = deadletter.dead_letter(
            event.value, [reason], "alerts", msg.topic, key=event.key, partition=msg.partition, offset=msg.offset
        )
        fut = await deadletters.send(key=event.key, value=value)
        await fut
        DEAD_LETTERS.labels("alerts", "silence-commands").inc()
        log.warning("silence command at offset %s dead-lettered: %s", msg.offset, reason)

    @app.agent(silence_commands)
    async def silence_writer(stream: Any) -> None:
        async for event in stream.events():
            key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else None
            try:
                value = loads(event.value)
                if value is None and key:  # garbage collection: forget an expired silence
                    silences_t.pop(key, None)
                    await cache.delete("silence", key)
                    continue
                silence = stored(value, key)
            except (ValueError, TypeError, RecursionError) as exc:  # SilenceError is a ValueError
                await set_aside(event, f"silence: {exc}")
                continue
            silences_t[silence["id"]] = silence
            ttl = max(60, (silence["ends_at"] - int(time.time() * 1000)) // 1000 + 86400)
            await cache.set("silence", silence["id"], silence, ttl_s=ttl)

    @app.timer(asettings.silence_gc_interval_s)
    async def collect_silences() -> None:
        gone = collectable(
            list(silences_t.values()), int(time.time() * 1000), int(asettings.silence_retention_s * 1000)
        )
        for sid in gone:
            await send_silence(sid, None)

    @app.timer(asettings.tick_interval_s)
    async def tick() -> None:
        await flush_mirror()
        if not state.joined or app.rebalancing:
            return
        name = events.get_topic_name()
        for tp in app.assignor.assigned_actives():
            if tp.topic == name:
                await events.send(key=None, value=dumps({"type": "tick", "ts": time.time()}), partition=tp.partition)

    redis_ok = {"ok": True}

    @app.timer(5.0)
    async def check_redis() -> None:
        redis_ok["ok"] = await cache.ping()

    state.add_check(
        "config", lambda: (True, f"{config.path}: {len(config.rules)} rules, {len(config.receivers)} receivers")
    )
    # Without Redis the API cannot answer (503) and delivery idempotency is degraded: not ready, and why.
    state.add_check(
        "redis",
        lambda: (
            (True, "reachable")
            if redis_ok["ok"]
            else (False, "Redis unreachable: the API answers 503 and delivery dedup is degraded")
        ),
    )

    @app.on_before_shutdown.connect
    async def _stop_intake(sender: Any, **_: Any) -> None:
        await intake.pump.on_revoked()
        await intake.stop()

    async def _close() -> None:
        await dispatcher.close()
        await http.aclose()
        await cache.close()

    app.flowwatch_close = _close  # type: ignore[attr-defined]
    app.flowwatch_dispatcher = dispatcher  # type: ignore[attr-defined]
    return app


app = create_app()
