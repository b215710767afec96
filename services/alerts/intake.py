"""Stage 1 on the anomalies topic: fetches evaluated by the rules, outside Faust's per-message path.

:class:`AnomalyIntake` is the :class:`~shared.pump.BatchJob` of the :class:`~shared.pump.Pump` on
``anomalies`` (``app.py`` builds the pump around it), the one input of the alerts service that comes in floods (every flagged reading of
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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.alerts.config import Config
from services.alerts.evaluate import FloodGate, Shards, evaluate_batch, internal_messages
from services.alerts.metrics import EVALUATED, OBSERVATIONS
from services.alerts.settings import AlertsSettings
from shared import deadletter
from shared.batching import Outbox
from shared.metrics import DEAD_LETTERS
from shared.pump import BatchJob, PumpConfig
from shared.settings import Settings
from shared.topics import ANOMALIES, DEADLETTER

SERVICE = "alerts"


@dataclass(slots=True)
class Intake:
    """What an evaluated fetch sent: counted once the broker acknowledged it."""

    observations: int
    evaluated: dict[str, int]
    rejected: int


class AnomalyIntake(BatchJob[Intake]):
    # Nothing kept between fetches that outputs depend on: a fetch that raised is read again alone.
    stateless = True
    batch_kind = "evaluate"

    def __init__(
        self,
        settings: Settings,
        asettings: AlertsSettings,
        config: Config,
        events_topic: str,
        gate: FloodGate,
        group_id: str,
        declare: Callable[[], Awaitable[None]],
    ) -> None:
        self.declare = declare
        self.events_name = events_topic
        self.deadletter_name = settings.topic(DEADLETTER.name)
        pump_config = PumpConfig(
            service=SERVICE,
            topic=settings.topic(ANOMALIES.name),
            progress_table="anomalies-progress",
            batch_size=asettings.batch_size,
            within_s=asettings.batch_within_s,
            mirror_group=f"{group_id}-anomalies",
            # Before the pump, the app's own group read anomalies: a worker upgraded in place goes on
            # from there instead of replaying (and notifying again) the topic's whole retention.
            inherit_group=group_id,
        )
        super().__init__(
            settings, pump_config, ANOMALIES.partitions_for(settings), (self.events_name, self.deadletter_name)
        )
        self.topic_label = ANOMALIES.name  # alerts' metrics name topics without the prefix
        self.asettings = asettings
        self.rules = config
        self.gate = gate
        self.shards: Shards | None = None  # made once the events topic's partition count is known

    async def prepare(self) -> None:
        await self.declare()  # the events topic, before its partition count is asked (a missing one is auto-created)

    async def decide(self, records: list[Any], box: Outbox) -> Intake:
        result = evaluate_batch(
            self.rules,
            [(ANOMALIES.name, r.value or b"") for r in records],
            self.asettings.quarantine_window_s,
            gate=self.gate,
        )
        events = self.partition_maps[self.events_name]
        if self.shards is None or self.shards.partitions != events.partitions:
            self.shards = Shards(self.rules.shard_by, events.partitions)
        for partition, value in internal_messages(result, self.rules, events.partitions, self.shards):
            box.add(self.events_name, partition, None, value)
        dl = self.partition_maps[self.deadletter_name]
        for i, reason in result.rejected:
            rec = records[i]
            value = deadletter.dead_letter(
                rec.value, [reason], SERVICE, rec.topic, key=rec.key, partition=rec.partition, offset=rec.offset
            )
            box.add(self.deadletter_name, deadletter.target_partition(rec.key, dl, dl.partitions, rec.partition),
                    rec.key, value)  # fmt: skip
        return Intake(len(result.observations), dict(result.evaluated), len(result.rejected))

    def finish(self, work: Intake, elapsed: float) -> None:
        OBSERVATIONS.labels("forwarded").inc(work.observations)
        for topic, n in work.evaluated.items():
            EVALUATED.labels(topic).inc(n)
        if work.rejected:
            DEAD_LETTERS.labels(SERVICE, ANOMALIES.name).inc(work.rejected)
