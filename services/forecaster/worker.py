"""Stage 1 of the forecaster: readings.clean fetches folded into zone partials and watermarks.

:class:`ReadingsFolder` is the :class:`~shared.pump.BatchJob` of the forecaster's
:class:`~shared.pump.Pump`, which reads readings.clean in ``getmany`` fetches outside Faust's
per-message consumer path (why and how: :mod:`shared.pump`). Each fetch is folded into one
partial per zone (:func:`services.forecaster.partials.fold`); the partials, then one
watermark message per partials partition, go out as one record batch per partition, so per
partials partition the watermark follows the partials it covers. Unusable readings go to
readings.quarantine with the reason.

Stage 1 keeps no state of its own: its checkpoint is the pump's readings.clean offsets in
the ``forecaster-progress`` table. After a crash the readings since the last checkpoint are
folded again; stage 2 skips a partial it has already applied (offsets per source partition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from services.forecaster.metrics import BAD_READINGS
from services.forecaster.partials import fold
from services.forecaster.settings import ForecasterSettings
from shared.batching import Outbox, PartitionMap
from shared.codec import dumps, loads
from shared.metrics import DECODE_ERRORS, EVENTS_OUT
from shared.pump import BatchJob, PumpConfig
from shared.settings import Settings
from shared.topics import READINGS_CLEAN, READINGS_QUARANTINE

log = logging.getLogger(__name__)
SERVICE = "forecaster"


@dataclass(slots=True)
class Folding:
    """What a folded fetch sent, for :meth:`ReadingsFolder.finish`."""

    partials: int
    bad: int
    reason: str  # of the first unusable reading, for the log


class ReadingsFolder(BatchJob[Folding]):
    # Stage 1 keeps nothing between fetches that its outputs depend on: a fetch that raised is read again
    # alone, without the pump rewinding (and repeating) the fetches before it.
    stateless = True
    batch_kind = "fold"

    def __init__(
        self,
        app: Any,
        settings: Settings,
        fs: ForecasterSettings,
        partials_topic: str,
        before_reading: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.readings_name = settings.topic(READINGS_CLEAN.name)
        self.partials_name = partials_topic
        config = PumpConfig(
            service=SERVICE,
            topic=self.readings_name,
            progress_table="forecaster-progress",
            batch_size=fs.batch_size,
            within_s=fs.batch_within_s,
            in_flight=fs.batches_in_flight,
            checkpoint_s=fs.checkpoint_s,
            mirror_group=f"{app.conf.id}-readings",
            # Steps are a minute long: waiting up to batch_within_s for a full fetch costs nothing that matters
            # and keeps the partials few at low rates (one per zone per fetch, not per reading).
            fill_bytes=512 * 1024,
        )
        self.quarantine_name = settings.topic(READINGS_QUARANTINE.name)
        outputs = (partials_topic, self.quarantine_name)
        super().__init__(settings, config, READINGS_CLEAN.partitions_for(settings), outputs)
        self.before_reading = before_reading
        self.fs = fs
        self.step_ms = fs.step_ms
        self.partials_of: PartitionMap | None = None
        self.last_wm: dict[str, int] = {}  # readings partition -> newest event time seen here
        self.last_event_at: dict[int, float] = {}  # readings partition -> monotonic time of its last reading

    async def prepare(self) -> None:
        if self.before_reading is not None:
            await self.before_reading()

    def started(self) -> None:
        self.partials_of = self.partition_maps[self.partials_name]

    async def decide(self, records: list[Any], box: Outbox) -> Folding:
        assert self.partials_of is not None
        now = time.monotonic()
        items: list[tuple[Any, int, int]] = []
        bad: list[tuple[Any, str, bytes | None, int | None]] = []
        seen: set[int] = set()
        for rec in records:
            seen.add(rec.partition)
            try:
                data = loads(rec.value or b"")
                if not isinstance(data, dict):
                    raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the batch
                bad.append(
                    (rec.value, f"forecaster: undecodable ({type(exc).__name__}: {exc})", rec.key, rec.partition)
                )
                continue
            items.append((data, rec.partition, rec.offset))
        for p in seen:
            self.last_event_at[p] = now
        folded = fold(items, self.step_ms)
        bad.extend((reading, why, None, None) for reading, why in folded.bad)
        partials_of = self.partials_of
        for zone, partial in folded.partials.items():
            key = zone.encode()
            box.add(self.partials_name, partials_of(key), key, dumps(partial))
        if folded.watermarks:
            last_wm = self.last_wm
            for p, ts in folded.watermarks.items():
                if ts > last_wm.get(p, -1):
                    last_wm[p] = ts
            self._broadcast(box, folded.watermarks)
        for payload, reason, key, partition in bad:
            self._quarantine(box, payload, reason, key, partition)
        return Folding(len(folded.partials), len(bad), bad[0][1] if bad else "")

    def _broadcast(self, box: Outbox, marks: dict[str, int]) -> None:
        """Watermarks to every partials partition, after the partials (per partition they follow them)."""
        assert self.partials_of is not None
        mark = dumps({"wm": marks})
        for q in range(self.partials_of.partitions):
            box.add(self.partials_name, q, None, mark)

    def _quarantine(self, box: Outbox, payload: Any, reason: str, key: bytes | None, partition: int | None) -> None:
        """One quarantine record: the raw message, or the decoded reading the fold could not use."""
        sensor = payload.get("sensor_id") if isinstance(payload, dict) else None
        if type(sensor) is not str:
            sensor = None
        where: dict[str, Any] = {"key": key, "sensor_id": sensor, "source_partition": partition}
        if isinstance(payload, (bytes, bytearray)) or payload is None:
            self.quarantine(box, payload, [reason], **where)
        else:
            self.quarantine(box, None, [reason], decoded=payload, decoded_ok=True, **where)

    async def broadcast(self, marks: dict[str, int]) -> None:
        """Send watermarks on their own (idle partitions); after any partials already sent."""
        if self.producer is None or not marks:
            return
        box = Outbox(self.producer)
        self._broadcast(box, marks)
        try:
            await box.flush()
        except KafkaError as exc:
            # The broker is away (a restart, a leader election): the idle-partition timer sends these
            # watermarks again on its next tick. Raised out of the timer it would stop the worker.
            log.warning("idle-partition watermarks not sent (again at the next tick): %s", exc)

    def finish(self, batch: Folding, elapsed: float) -> None:
        EVENTS_OUT.labels(SERVICE, self.partials_name).inc(batch.partials)
        if batch.bad:
            DECODE_ERRORS.labels(SERVICE, self.readings_name).inc(batch.bad)
            BAD_READINGS.inc(batch.bad)
            EVENTS_OUT.labels(SERVICE, self.quarantine_name).inc(batch.bad)
            log.warning("quarantined %d readings the forecaster cannot use: %s", batch.bad, batch.reason)

    def forget(self) -> None:
        # Nothing is ever dirty (stage 1 folds without state): a checkpoint holds only the pump's offsets.
        self.last_wm.clear()
        self.last_event_at.clear()
