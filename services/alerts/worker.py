"""The Faust side of alerts: tables, the two stages' stream loops, silences, timers and shutdown.

:class:`AlertsWorker` holds everything a worker owns, built once by ``create_app``:

* stage 1 on the inputs other than anomalies (:class:`InputStage`, an agent) and on anomalies
  (:class:`~services.alerts.intake.AnomalyIntake`, a pump): records → rule hits → the internal
  events topic, keyed by the shard labels, through the pure :mod:`services.alerts.evaluate`;
* stage 2 (:class:`~services.alerts.state.StateJob`, a pump on the events topic): each partition's
  share of a fetch through :class:`~services.alerts.state.StateStage` (the pure
  :func:`services.alerts.pipeline.apply_events` over write-back overlays of decoded in-memory images
  of the tables); each changed key is written once per batch inside an event context of its partition
  (pitfall 10). The tick timer sends a ``tick`` to each partition read here that has a timer due:
  timers run as events of the partition, so their writes are recovered too;
* the silences (:class:`SilenceKeeper`): one writer of the global silences table;
* the resources (producer of the intake, Redis, the HTTP client, the dispatcher), released in order
  by :meth:`AlertsWorker.close` when the worker stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable
from typing import Any

import faust

from services.alerts.config import Config
from services.alerts.delivery import WebhookClient
from services.alerts.dispatcher import Dispatcher, Integrations
from services.alerts.evaluate import INPUTS, FloodGate, Shards, evaluate_batch, internal_messages
from services.alerts.intake import AnomalyIntake
from services.alerts.metrics import EVALUATED, OBSERVATIONS
from services.alerts.mirror import Mirror, MirrorWriter
from services.alerts.outputs import RAW, Outputs
from services.alerts.settings import AlertsSettings
from services.alerts.silences import collectable, stored
from services.alerts.state import StateJob, StateStage
from shared.cache import Cache
from shared.codec import dumps, loads
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, EVENTS_IN
from shared.service import ServiceState
from shared.settings import Settings
from shared.streaming import take_ready
from shared.topics import ANOMALIES

log = logging.getLogger(__name__)

STATE_TABLES = ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")
# How long a stop waits for deliveries in flight before it cancels them (their outbox entries stay, and
# the partition's next owner sends them again).
DELIVERY_GRACE_S = 5.0


class InputStage:
    """Stage 1 for risk, sensor events, quarantined readings, reports and drift (anomalies have the intake)."""

    def __init__(self, settings: Settings, asettings: AlertsSettings, config: Config, gate: FloodGate, out: Outputs):
        self.asettings = asettings
        self.config = config
        self.gate = gate
        self.out = out
        self.partitions = settings.partitions
        self.shards = Shards(config.shard_by, settings.partitions)
        self.by_topic = {settings.topic(name): name for name in INPUTS if name != ANOMALIES.name}

    async def run(self, stream: AsyncIterable[Any]) -> None:
        async for batch in take_ready(stream, self.asettings.batch_size, self.asettings.batch_within_s):
            started = time.perf_counter()
            items = [(self.by_topic[e.message.topic], e.value) for e in batch]
            for name in {n for n, _ in items}:
                EVENTS_IN.labels("alerts", name).inc(sum(1 for n, _ in items if n == name))
            result = evaluate_batch(self.config, items, self.asettings.quarantine_window_s, gate=self.gate)
            if result.rejected:
                await self.out.dead_letter_events([(batch[i], items[i][0], why) for i, why in result.rejected])
                log.warning(
                    "dead-lettered %d input records that are not records of their topic; first: %s",
                    len(result.rejected),
                    result.rejected[0][1],
                )
            for name, n in result.evaluated.items():
                EVALUATED.labels(name).inc(n)
            for p, value in internal_messages(result, self.config, self.partitions, self.shards):
                await self.out.events.send(value=value, partition=p)
            OBSERVATIONS.labels("forwarded").inc(len(result.observations))
            BATCH_SIZE.labels("alerts", "evaluate").observe(len(batch))
            BATCH_SECONDS.labels("alerts", "evaluate").observe(time.perf_counter() - started)


class SilenceKeeper:
    """The one writer of the global silences table (and their Redis mirror), and their garbage collector."""

    def __init__(self, table: Any, cache: Cache, out: Outputs, asettings: AlertsSettings) -> None:
        self.table = table
        self.cache = cache
        self.out = out
        self.retention_ms = int(asettings.silence_retention_s * 1000)

    async def run(self, stream: Any) -> None:
        async for event in stream.events():
            key = event.key.decode(errors="replace") if isinstance(event.key, bytes) else None
            try:
                value = loads(event.value)
                if value is None and key:  # garbage collection: forget an expired silence
                    self.table.pop(key, None)
                    await self.cache.delete("silence", key)
                    continue
                silence = stored(value, key)
            except (ValueError, TypeError, RecursionError) as exc:  # SilenceError is a ValueError
                # Not a well-formed silence: dead-lettered with why, never stored.
                await self.out.dead_letter_events([(event, "silence-commands", f"silence: {exc}")])
                log.warning("silence command at offset %s dead-lettered: silence: %s", event.message.offset, exc)
                continue
            self.table[silence["id"]] = silence
            ttl = max(60, (silence["ends_at"] - int(time.time() * 1000)) // 1000 + 86400)
            await self.cache.set("silence", silence["id"], silence, ttl_s=ttl)

    async def collect(self) -> None:
        for sid in collectable(list(self.table.values()), int(time.time() * 1000), self.retention_ms):
            await self.out.silence(sid, None)


class RedisHealth:
    """Whether Redis answered the last ping: without it the API answers 503 and delivery dedup is degraded."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.ok = True

    async def probe(self) -> None:
        self.ok = await self.cache.ping()

    def check(self) -> tuple[bool, str]:
        if self.ok:
            return True, "reachable"
        return False, "Redis unreachable: the API answers 503 and delivery dedup is degraded"


class AlertsWorker:
    """Everything one alerts worker owns; ``create_app`` wires its parts to agents, timers and views."""

    def __init__(
        self, app: faust.App, settings: Settings, asettings: AlertsSettings, config: Config, state: ServiceState
    ) -> None:
        self.app = app
        self.config = config
        self.service_state = state
        self.out = Outputs(app, settings)
        schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="orjson")
        self.tables = {name: app.Table(name, partitions=settings.partitions, schema=schema) for name in STATE_TABLES}
        # Every worker needs every silence; faust's advice for GlobalTable: one partition, recovery buffer 1.
        self.silences = app.GlobalTable("silences", partitions=1, recovery_buffer_size=1, schema=schema)
        self.cache = Cache(
            settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service="alerts"
        )
        self.mirror = Mirror(self.cache)
        self.redis = RedisHealth(self.cache)
        self.http = WebhookClient()
        self.dispatcher = Dispatcher(
            asettings,
            Integrations(config, self.http, self.out.kafka_send),
            self.cache.client,
            self.cache.key("", ""),
            report=self.out.report,
            dead_letter=self.out.dead_letter_notification,
        )
        gate = FloodGate()
        self.inputs = InputStage(settings, asettings, config, gate, self.out)
        self.input_topic = app.topic(*self.inputs.by_topic, internal=False, **RAW)
        self.intake = AnomalyIntake(
            settings, asettings, config, self.out.events.get_topic_name(), gate, app.conf.id, self.out.declare_events
        )
        self.mirror_writer = MirrorWriter(self.mirror)
        self.state = StateStage(config, asettings, self.tables, self.silences, self.mirror_writer)
        self.state_job = StateJob(
            settings,
            asettings,
            self.out.events,
            self.out.declare_events,
            app.conf.id,
            self.state,
            self.dispatcher,
        )
        self.silence_keeper = SilenceKeeper(self.silences, self.cache, self.out, asettings)
        self.closed = False

    def config_check(self) -> tuple[bool, str]:
        return True, f"{self.config.path}: {len(self.config.rules)} rules, {len(self.config.receivers)} receivers"

    async def tick(self) -> None:
        """Mirror what changed, then a ``tick`` to each events partition read here that has a timer due.

        The tick goes through the events topic so its writes are applied and changelogged like any event's; a
        partition with nothing due (the in-memory schedule says when it next is) costs no message.
        """
        if self.closed:
            return
        await self.mirror_writer.flush()
        if not self.service_state.joined or self.app.rebalancing:
            return
        now = time.time()
        for partition in sorted(self.state_job.local):
            if self.state.needs_look(partition, now):
                await self.out.events.send(key=None, value=dumps({"type": "tick", "ts": now}), partition=partition)

    async def probe_redis(self) -> None:
        if not self.closed:
            await self.redis.probe()

    async def close(self) -> None:
        """The stop: Faust has stopped consuming; release what this worker holds, in order, once.

        The anomaly intake's pump (and its producer) has stopped before (``app.py``); deliveries in flight get
        :data:`DELIVERY_GRACE_S` to finish (their results still reach the events topic: the app's
        producer is flushed after this), then the last mirror writes go to Redis, and only then the
        HTTP client and the Redis connections close. Timers and agents that run on until Faust
        stops them find the worker closed and touch none of these.
        """
        if self.closed:
            return
        self.closed = True
        finished, cancelled = await self.dispatcher.close(grace_s=DELIVERY_GRACE_S)
        mirrored = await self.mirror_writer.close()
        await self.http.aclose()
        await self.cache.close()
        log.info(
            "alerts worker closed: anomaly intake stopped; deliveries in flight %d finished, %d cancelled (left in "
            "the outbox); %d last alert changes mirrored; HTTP client and Redis closed",
            finished,
            cancelled,
            mirrored,
        )
