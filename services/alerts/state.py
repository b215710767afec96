"""Stage 2 on the internal events topic: alert lifecycle, groups and the outbox, read by a pump.

:class:`StateJob` is the :class:`~shared.pump.BatchJob` of the :class:`~shared.pump.Pump` on
``<app id>-events`` (``app.py`` builds the pump around it). It was a Faust agent, and Faust's
per-message consumer path (~120-150 µs a message before an agent sees it, shared/pump.py) held the
whole worker near 8,700 anomalies/s with the evaluate stage beside it (bench/bench_alerts.py): the
pump hands each ``getmany`` fetch over as one batch, and at a trickle each fetch as soon as it arrives.

The events topic is keyed by the shard labels (``global.shard_by``), the anomalies topic by sensor, so
the two stages cannot be one step: a zone's alerts gather from every anomalies partition. The events
topic and the state tables have the same partition count, so the pump's progress table puts events
partition *p* on the worker that owns partition *p* of every state table (exactly one per group key).

Each fetch, per partition (:class:`StateStage`): the pure :func:`~services.alerts.pipeline.apply_events`
over write-back overlays of the decoded table images; each changed key written once to its table's local
store and, in the batch's own :class:`~shared.batching.Outbox`, to its changelog (one record batch per
changelog partition, :class:`~services.alerts.image.ChangelogWriter`, in place of Faust's per-key path) in
the partition's stand-in event context. A batch counts as done once the broker has acknowledged that box;
only then do its deliveries start (the outbox intent is in the changelog before anything leaves the
process) and only then can its offsets be checkpointed (``events-progress``). After a
crash the events since the checkpoint are applied again over tables that may already hold them: a hit
counts once more, a result or a tick repeats harmlessly (at-least-once, as the agent's uncommitted offsets
were). An upgraded worker starts where the app's consumer group left the topic (``inherit_group``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.alerts.config import Config
from services.alerts.dispatcher import Dispatcher
from services.alerts.image import TableImage
from services.alerts.mirror import MirrorWriter
from services.alerts.overlay import DELETED, Overlay
from services.alerts.pipeline import Processor, Schedule, TickGate, apply_events
from services.alerts.settings import AlertsSettings
from shared.batching import Outbox
from shared.pump import Batch, BatchJob, PumpConfig
from shared.settings import Settings
from shared.streaming import event_context

log = logging.getLogger(__name__)

SERVICE = "alerts"


class StateStage:
    """A partition's events through the pure core, over the decoded table images; writes once per key."""

    def __init__(
        self,
        config: Config,
        asettings: AlertsSettings,
        tables: dict[str, Any],
        silences: Any,
        mirror: MirrorWriter,
    ) -> None:
        self.config = config
        self.asettings = asettings
        self.silences = silences
        self.mirror = mirror
        self.images = {name: TableImage(table) for name, table in tables.items()}
        self.schedule = Schedule()
        self.ticks = TickGate(asettings.tick_interval_s)
        # Hits not yet written to a coalesced alert (Processor._coalesce); kept across batches.
        self.pending_counts: dict[str, int] = {}

    def persisted(self, last_offsets: dict[tuple[str, int], int]) -> None:
        """A batch's box is on the broker: its changelog records need not be replayed into the stores."""
        for image in self.images.values():
            image.persisted(last_offsets)

    def forget(self) -> None:
        """After a rebalance or a rewind: the tables are the truth, read them again."""
        self.schedule.reset()
        for image in self.images.values():
            image.reset()

    def needs_look(self, partition: int, now_s: float) -> bool:
        """Whether a tick would find anything due on ``partition`` (a partition not scheduled yet always does)."""
        return self.schedule.due(partition, now_s)

    def apply(
        self, partition: int, values: list[bytes], event: Any, box: Outbox | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """One partition's events; returns the deliveries it made due and how many table keys it wrote.

        ``event`` stands in for an event of the partition: the writes go to its changelog partition
        (pitfall 10), each changed key once, by reassigning the whole value (pitfall 4); with ``box``, the
        changelog records go into it (:meth:`TableImage.commit`) and are durable once it is acknowledged.
        """
        overlays = {name: Overlay(image.view(partition)) for name, image in self.images.items()}
        proc = Processor(
            self.config,
            self.asettings,
            **overlays,
            silences=self.silences,
            schedule=self.schedule,
            pending_counts=self.pending_counts,
        )
        outcome = apply_events(proc, values, partition, self.ticks)
        written = 0
        with event_context(event):
            for name, overlay in overlays.items():
                written += self.images[name].commit(partition, overlay.take(), box, DELETED)
        self.mirror.add(outcome.mirror)
        dispatch = [entry for entry in outcome.dispatch.values() if proc.outbox.get(entry["id"]) is not None]
        return dispatch, written


@dataclass(slots=True)
class Applied:
    """What a fetch of events made: deliveries to start once its table writes are durable."""

    dispatch: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0


class StateJob(BatchJob[Applied]):
    batch_kind = "state"

    def __init__(
        self,
        settings: Settings,
        asettings: AlertsSettings,
        events: Any,
        declare: Callable[[], Awaitable[None]],
        group_id: str,
        stage: StateStage,
        dispatcher: Dispatcher,
    ) -> None:
        self.declare = declare
        pump_config = PumpConfig(
            service=SERVICE,
            topic=events.get_topic_name(),
            progress_table="events-progress",
            batch_size=asettings.batch_size,
            within_s=asettings.batch_within_s,
            mirror_group=f"{group_id}-events",
            # Before the pump, the app's own group read the events topic (the alert_state agent): a worker
            # upgraded in place goes on from there instead of applying its whole retention again.
            inherit_group=group_id,
            # The alerts worker writes this topic itself (rule hits, ticks, results): a guard's round trip before
            # each batch would only add itself to every first notification (the agent had none either).
            crash_guard=False,
        )
        super().__init__(settings, pump_config, settings.partitions, ())
        self.topic_label = "events"
        self.core = stage
        self.dispatcher = dispatcher

    async def prepare(self) -> None:
        await self.declare()  # before anyone asks for its partitions (a missing topic would be auto-created)

    async def decide(self, records: list[Any], box: Outbox) -> Applied:
        by_partition: dict[int, list[bytes]] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r.value or b"")
        applied = Applied()
        for partition, values in by_partition.items():
            # The table writes go into the batch's box: the batch is done (and its deliveries may start) only
            # once the broker has them.
            dispatch, written = self.core.apply(partition, values, self.event(partition), box)
            applied.dispatch += dispatch
            applied.written += written
        if self.core.mirror.full:
            await self.core.mirror.flush()
        return applied

    async def complete(self, batch: Batch[Applied]) -> Applied:
        last = await batch.acked  # a broker error raises here: the pump rewinds
        try:
            self.core.persisted(last)  # what Faust's own ack callback records for a table write
        except Exception:  # recovery then replays more of the changelog; the deliveries must go out all the same
            log.exception("alerts: the table stores' changelog offsets could not be recorded")
        return await super().complete(batch)

    def finish(self, work: Applied, elapsed: float) -> None:
        for entry in work.dispatch:
            self.dispatcher.submit(entry)

    def forget(self) -> None:
        self.core.forget()
