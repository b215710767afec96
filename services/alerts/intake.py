"""Stage 1 on the anomalies topic: fetches evaluated by the rules, outside Faust's per-message path.

:class:`AnomalyIntake` is the :class:`~shared.pump.PumpJob` of a :class:`~shared.pump.Pump` on
``anomalies``, the one input of the alerts service that comes in floods (every flagged reading of
every sensor). Faust's consumer path costs more per message than evaluating it (the agent topped
out near 2,000 anomalies/s with the state stage beside it, bench/bench_alerts.py); the pump hands
over each ``getmany`` fetch as one batch, and at a trickle each fetch as soon as it arrives. The
batch goes through :func:`~services.alerts.evaluate.evaluate_batch` exactly as the agent's batches
of the other inputs do, and its observations to the internal events topic (one message per
destination partition), with input records that are not anomalies dead-lettered with the reason.

Stateless (the flood gate is only a pre-filter, see :class:`~services.alerts.evaluate.FloodGate`):
its checkpoint is the pump's offsets in the ``alerts-progress`` table. After a crash the anomalies
since the last checkpoint are evaluated again; the state stage takes a repeated observation as one
more hit of a firing alert (at-least-once, as with the agent's uncommitted offsets before).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from services.alerts.config import Config
from services.alerts.evaluate import FloodGate, evaluate_batch, internal_messages
from services.alerts.metrics import EVALUATED, OBSERVATIONS
from services.alerts.settings import AlertsSettings
from shared import deadletter
from shared.batching import Outbox, PartitionMap, start_output_producer
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DEAD_LETTERS, EVENTS_IN
from shared.pump import Checkpoint, Pump, PumpConfig, Undo
from shared.settings import Settings
from shared.topics import ANOMALIES, DEADLETTER

SERVICE = "alerts"


@dataclass(slots=True)
class Intake:
    """An evaluated fetch whose observations are on their way to the events topic."""

    records: int
    observations: int
    evaluated: dict[str, int]
    rejected: int
    acked: asyncio.Future[Any]
    started: float


class AnomalyIntake:
    # Nothing kept between fetches that outputs depend on: a fetch that raised is read again alone.
    stateless = True

    def __init__(
        self,
        app: Any,
        settings: Settings,
        asettings: AlertsSettings,
        config: Config,
        events_topic: str,
        gate: FloodGate,
    ) -> None:
        self.settings = settings
        self.asettings = asettings
        self.config = config
        self.gate = gate
        self.events_name = events_topic
        self.deadletter_name = settings.topic(DEADLETTER.name)
        self.producer: AIOKafkaProducer | None = None
        self.events_of: PartitionMap | None = None
        self.deadletter_of: PartitionMap | None = None
        self.pump = Pump(
            app,
            settings,
            self,
            PumpConfig(
                service=SERVICE,
                topic=settings.topic(ANOMALIES.name),
                progress_table="anomalies-progress",
                batch_size=asettings.batch_size,
                within_s=asettings.batch_within_s,
                mirror_group=f"{app.conf.id}-anomalies",
                # Before the pump, the app's own group read anomalies: a worker upgraded in place goes on
                # from there instead of replaying (and notifying again) the topic's whole retention.
                inherit_group=app.conf.id,
            ),
            ANOMALIES.partitions_for(settings),
        )

    async def start(self) -> str:
        if self.producer is not None:
            return ""
        producer, maps = await start_output_producer(
            self.settings, f"{SERVICE}-intake", [self.events_name, self.deadletter_name]
        )
        self.events_of, self.deadletter_of = maps[self.events_name], maps[self.deadletter_name]
        self.producer = producer
        return ""

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def submit(self, records: list[Any]) -> Intake:
        assert self.producer is not None and self.events_of is not None and self.deadletter_of is not None
        started = time.perf_counter()
        result = evaluate_batch(
            self.config,
            [(ANOMALIES.name, r.value or b"") for r in records],
            self.asettings.quarantine_window_s,
            gate=self.gate,
        )
        box = Outbox(self.producer)
        for partition, value in internal_messages(result, self.config, self.events_of.partitions):
            box.add(self.events_name, partition, None, value)
        dl = self.deadletter_of
        for i, reason in result.rejected:
            rec = records[i]
            value = deadletter.dead_letter(
                rec.value, [reason], SERVICE, rec.topic, key=rec.key, partition=rec.partition, offset=rec.offset
            )
            box.add(self.deadletter_name, deadletter.target_partition(rec.key, dl, dl.partitions, rec.partition),
                    rec.key, value)  # fmt: skip
        acked = await box.send()
        return Intake(
            len(records), len(result.observations), dict(result.evaluated), len(result.rejected), acked, started
        )

    async def complete(self, batch: Intake) -> None:
        await batch.acked
        EVENTS_IN.labels(SERVICE, ANOMALIES.name).inc(batch.records)
        OBSERVATIONS.labels("forwarded").inc(batch.observations)
        for topic, n in batch.evaluated.items():
            EVALUATED.labels(topic).inc(n)
        if batch.rejected:
            DEAD_LETTERS.labels(SERVICE, ANOMALIES.name).inc(batch.rejected)
        BATCH_SIZE.labels(SERVICE, "evaluate").observe(batch.records)
        BATCH_SECONDS.labels(SERVICE, "evaluate").observe(time.perf_counter() - batch.started)

    def stage(self, checkpoint: Checkpoint) -> Undo | None:
        return None  # nothing but the pump's offsets

    def forget(self) -> None:
        pass

    def rewind(self) -> None:
        pass
