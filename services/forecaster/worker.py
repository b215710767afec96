"""Stage 1 of the forecaster: readings.clean fetches folded into zone partials and watermarks.

:class:`ReadingsFolder` is the :class:`~shared.pump.PumpJob` of the forecaster's
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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.forecaster.metrics import BAD_READINGS
from services.forecaster.partials import fold
from services.forecaster.settings import ForecasterSettings
from shared.batching import Outbox, PartitionMap, start_output_producer
from shared.codec import dumps, loads
from shared.deadletter import quarantine, target_partition
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, DECODE_ERRORS, EVENTS_IN, EVENTS_OUT
from shared.pump import Checkpoint, Pump, PumpConfig, Undo
from shared.settings import Settings
from shared.topics import READINGS_CLEAN, READINGS_QUARANTINE

log = logging.getLogger(__name__)
SERVICE = "forecaster"


@dataclass(slots=True)
class Folding:
    """A folded fetch whose partials are on their way to the broker."""

    readings: int
    partials: int
    bad: int
    reason: str  # of the first unusable reading, for the log
    acked: asyncio.Future[Any]
    started: float


class ReadingsFolder:
    # Stage 1 keeps nothing between fetches that its outputs depend on: a fetch that raised is read again
    # alone, without the pump rewinding (and repeating) the fetches before it.
    stateless = True

    def __init__(
        self,
        app: Any,
        settings: Settings,
        fs: ForecasterSettings,
        partials_topic: str,
        before_reading: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.before_reading = before_reading
        self.fs = fs
        self.step_ms = fs.step_ms
        self.readings_name = settings.topic(READINGS_CLEAN.name)
        self.quarantine_name = settings.topic(READINGS_QUARANTINE.name)
        self.partials_name = partials_topic
        self.producer: AIOKafkaProducer | None = None
        self.partials_of: PartitionMap | None = None
        self.quarantine_of: PartitionMap | None = None
        self.last_wm: dict[str, int] = {}  # readings partition -> newest event time seen here
        self.last_event_at: dict[int, float] = {}  # readings partition -> monotonic time of its last reading
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
        self.pump = Pump(app, settings, self, config, READINGS_CLEAN.partitions_for(settings))

    async def start(self) -> str:
        if self.producer is not None:
            return ""
        if self.before_reading is not None:
            await self.before_reading()
        producer, maps = await start_output_producer(self.settings, SERVICE, [self.partials_name, self.quarantine_name])
        self.partials_of, self.quarantine_of = maps[self.partials_name], maps[self.quarantine_name]
        self.producer = producer
        return ""

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def submit(self, records: list[Any]) -> Folding:
        assert self.producer is not None and self.partials_of is not None and self.quarantine_of is not None
        started = time.perf_counter()
        now = time.monotonic()
        box = Outbox(self.producer)
        items: list[tuple[Any, int, int]] = []
        bad: list[tuple[Any, str, bytes | None, int]] = []
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
        bad.extend((reading, why, None, 0) for reading, why in folded.bad)
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
        return Folding(
            len(records), len(folded.partials), len(bad), bad[0][1] if bad else "", await box.send(), started
        )

    def _broadcast(self, box: Outbox, marks: dict[str, int]) -> None:
        """Watermarks to every partials partition, after the partials (per partition they follow them)."""
        assert self.partials_of is not None
        mark = dumps({"wm": marks})
        for q in range(self.partials_of.partitions):
            box.add(self.partials_name, q, None, mark)

    def _quarantine(self, box: Outbox, payload: Any, reason: str, key: bytes | None, partition: int) -> None:
        """One quarantine record (shared.deadletter: bounded, always encodable, one partition rule)."""
        assert self.quarantine_of is not None
        sensor = payload.get("sensor_id") if isinstance(payload, dict) else None
        if type(sensor) is not str:
            sensor = None
        key = key or (sensor.encode() if sensor else None)
        if isinstance(payload, (bytes, bytearray)) or payload is None:
            value = quarantine(payload, [reason], SERVICE, sensor_id=sensor)
        else:
            value = quarantine(None, [reason], SERVICE, decoded=payload, decoded_ok=True, sensor_id=sensor)
        pmap = self.quarantine_of
        box.add(self.quarantine_name, target_partition(key, pmap, pmap.partitions, partition), key, value)

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

    async def complete(self, batch: Folding) -> None:
        await batch.acked
        EVENTS_IN.labels(SERVICE, READINGS_CLEAN.name).inc(batch.readings)
        EVENTS_OUT.labels(SERVICE, "zone-partials").inc(batch.partials)
        BATCH_SIZE.labels(SERVICE, "fold").observe(batch.readings)
        BATCH_SECONDS.labels(SERVICE, "fold").observe(time.perf_counter() - batch.started)
        if batch.bad:
            DECODE_ERRORS.labels(SERVICE, READINGS_CLEAN.name).inc(batch.bad)
            BAD_READINGS.inc(batch.bad)
            EVENTS_OUT.labels(SERVICE, READINGS_QUARANTINE.name).inc(batch.bad)
            log.warning("quarantined %d readings the forecaster cannot use: %s", batch.bad, batch.reason)

    def stage(self, checkpoint: Checkpoint) -> Undo | None:
        return None  # nothing but the pump's offsets: stage 1 folds without state

    def forget(self) -> None:
        self.last_wm.clear()
        self.last_event_at.clear()

    def rewind(self) -> None:
        self.forget()
