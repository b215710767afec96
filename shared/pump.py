"""Reading a hot topic in fetch-sized batches while Faust keeps the group, the tables and their recovery.

Why not a Faust agent: measured on the 2-core reference machine, Faust's consumer path costs
about 120-150 µs per message before an agent sees it (two ``wait_first`` task pairs, a queue,
sensors, an ack per event), so even an agent that does nothing tops out near 6,000-7,000
messages/s. A :class:`Pump` reads the topic with its own aiokafka consumer in ``getmany``
batches (one Python call per fetch, not per message) and hands each fetch to a
:class:`PumpJob` — the service's own work — as one micro-batch. A service writes its job on
:class:`BatchJob` (``worker.py``), which holds the plumbing every job shares, and its ``app.py``
builds the pump around it: ``Pump.around(app, job).install(state, name)``.

What stays Faust's, and how the pump follows it:

* Assignment. The pump creates a ``progress`` table with the topic's partition count. Faust's
  assignor co-partitions every table and topic of the group with the same number of
  partitions, so the worker that owns progress partition *p* (as an active) also owns
  partition *p* of every other table of the service: the pump reads exactly those partitions
  of the topic. Each partition is read by one worker, the one that holds its state.
* Offsets. Every ``checkpoint_s`` (and before a rebalance or a shutdown) the job's changed
  state and the last finished offset per partition are written to the tables together (one
  :class:`~shared.batching.Outbox`, durable together); a restarted worker resumes after its
  checkpoint with the checkpointed state, so replaying is deterministic. A periodic checkpoint is
  taken between two batches, with the batches in flight in it, and written beside the loop once the
  broker has acknowledged their outputs (never before: a checkpoint covers acknowledged work only;
  if one of them fails, the checkpoint is dropped and the rewind starts from the one before), while
  the loop reads on; anything that needs the tables to be the truth (a rewind, the next checkpoint,
  a rebalance) waits for it first. Kafka group offsets
  are not used; they are mirrored under ``mirror_group`` so standard lag tools see progress.
* Rebalances. Faust awaits :meth:`Pump.on_revoked` before it hands partitions over: the pump
  finishes the batches in flight, checkpoints and stops reading. It reads again only once the
  app is settled (not rebalancing, tables recovered).
* Failures. A batch is finished only once the broker acknowledged its outputs; when producing
  fails the job is rewound to the last checkpoint and the pump reads again from there
  (outputs are at-least-once; their consumers are idempotent). A failed checkpoint is kept
  for the next one. Neither stops the pump.
* Poison (the rule of :mod:`shared.poison`). A batch whose processing raises is retried once, after ``pump_retry_backoff_s``,
  from the last checkpoint (a job that declares itself ``stateless`` has nothing to undo: only
  that batch is read again, so the outputs of the batches before it are not written twice); if it fails again its messages are processed one at a time, each
  retried once, and a message that fails twice is set aside — quarantined (readings topics,
  :func:`shared.deadletter.quarantine`) or dead-lettered (other topics,
  :func:`shared.deadletter.dead_letter`) with the error — and the rest goes on. A hard crash
  (segfault, OOM kill) raises nothing, so with ``pump_crash_guard`` no batch is processed before
  its offsets are in the progress table (a *guard*). A guard is written ahead: it covers the
  batch's offsets and ``pump_guard_ahead`` more per partition, so the batches that follow within it
  start without a broker round trip of their own (a guard before every batch was one awaited
  round trip, queued behind the previous batch's outputs, added to every reading), and once half of
  that reach is used the next guards are written beside the batches, so while readings flow no batch
  waits for one (the old guard stands until the broker has the new one); a settle
  (rebalance, shutdown) cuts the guards back to what is finished. A restart that finds a guard
  beyond the checkpoint processes that range — cut at the log's end at the restart, so at most a
  batch (``batch_size``) and ``pump_guard_ahead`` offsets per partition — one message at a time,
  each under its own guard, and sets aside the message
  whose guard it finds after the next restart. A message is thus replayed into a crash at most
  once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Generic, Protocol, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from shared.batching import Outbox, PartitionEvents, PartitionMap, persisted, start_output_producer, write_many
from shared.deadletter import quarantined
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, CONSUMER_LAG, EVENTS_IN, LATENCY_BUCKETS, Counter, Histogram
from shared.poison import JOB_FAILURES, SetAside, failed_twice
from shared.service import tables_recovered
from shared.settings import Settings
from shared.streaming import event_context
from shared.topics import READINGS_QUARANTINE

log = logging.getLogger(__name__)

REWINDS = Counter(
    "flowwatch_pump_rewinds_total",
    "Times a pump went back to its last checkpoint because the broker did not take a batch's outputs",
    ["service"],
)
CHECKPOINTS = Counter("flowwatch_pump_checkpoints_total", "Checkpoints of state and offsets written", ["service"])
CHECKPOINT_ERRORS = Counter(
    "flowwatch_pump_checkpoint_errors_total", "Checkpoints that failed (retried at the next one)", ["service"]
)
BATCHES = Counter("flowwatch_pump_batches_total", "Fetched batches finished (outputs acknowledged)", ["service"])
CHECKPOINT_HOLDS = Histogram(
    "flowwatch_pump_checkpoint_hold_seconds",
    "How long a periodic checkpoint keeps the pump from reading (the changed state taken)",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
GC_PAUSES = Histogram(
    "flowwatch_gc_pause_seconds",
    "Garbage collections of the process (every task and thread stops meanwhile), by generation",
    ["service", "generation"],
    buckets=LATENCY_BUCKETS,
)
STEP_SECONDS = Histogram(
    "flowwatch_pump_step_seconds",
    "Where a pump's batch spends its time: the oldest message's age when fetched by its record timestamp (age), "
    "the wait in the fetch (fetch), the crash guard's round trip (guard), deciding and handing the outputs to the "
    "producer (submit), and from then until the broker acknowledged them (acked)",
    ["service", "step"],
    buckets=LATENCY_BUCKETS,
)
LOOP_LAG = Histogram(
    "flowwatch_event_loop_lag_seconds",
    "How late a timer of the process's event loop fired (a callback or CPU held the loop)",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
GUARD_KEY = b"guard:%d"

Undo = Callable[[], None]


class InFlight(Protocol):
    """What :meth:`PumpJob.submit` returns: a batch whose outputs are on their way."""

    acked: asyncio.Future[Any]


class PumpJob(Protocol):
    """The service's work on each fetched batch.

    ``producer`` is the job's output producer (started by :meth:`start`); the pump's guards and
    checkpoints go through a producer of the pump's own once it runs (through this one before).
    """

    producer: AIOKafkaProducer | None

    async def start(self) -> str:
        """Start the output producer; return why the job cannot run ('' when it can)."""

    async def submit(self, records: list[Any]) -> InFlight:
        """Decide a batch of aiokafka ``ConsumerRecord``s and start producing its outputs."""

    async def complete(self, batch: Any) -> None:
        """Wait for a submitted batch's acks (``await batch.acked``), then account for it."""

    def stage(self, checkpoint: Checkpoint) -> Undo | None:
        """Write the state changed since the last checkpoint into ``checkpoint`` (and into ``checkpoint.ahead`` any
        message that must be on the broker before the checkpoint's offsets are).

        Returns how to mark it changed again should the checkpoint fail.
        """

    def forget(self) -> None:
        """Drop in-memory state (partitions may change hands; the tables hold the truth)."""

    def rewind(self) -> None:
        """Drop everything since the last checkpoint; the pump then reads again from there."""

    async def stop(self) -> None:
        """Stop the output producer (after the pump's last checkpoint)."""


def keeps_state(job: PumpJob) -> bool:
    """Whether a batch changes the job's state for the next ones (``stateless = True`` on the job says it does not).

    A job whose batch raised may have changed its state half way, so the pump must rewind it to the last
    checkpoint, and the batches since then are done again (their outputs written twice). A stateless job has
    nothing to undo: only the failed batch is read again, and the outputs of the ones before it stand.
    """
    return not getattr(job, "stateless", False)


W = TypeVar("W")


@dataclass(slots=True)
class Batch(Generic[W]):
    """A submitted batch: what the job decided (``work``), and its outputs on their way to the broker."""

    work: W
    size: int  # messages read
    acked: asyncio.Future[Any]
    started: float  # perf_counter() when the batch was handed over


class BatchJob(Generic[W]):
    """The :class:`PumpJob` plumbing every pump job shares; a service writes only what it decides per batch.

    A subclass hands ``__init__`` its :class:`PumpConfig`, the input topic's partition count and its output
    topics (readings.quarantine among them if it quarantines), and writes:

    * :meth:`decide` — a fetch's records into ``box`` (an :class:`Outbox` sent once :meth:`decide` returns);
      returns what :meth:`finish` needs;
    * :meth:`finish` — accounting once the broker acknowledged the batch (its own metrics, caches);
    * :meth:`write_state` — the entries of ``dirty`` (changed since the last checkpoint) into a checkpoint;
    * optionally :meth:`prepare` (before the producer starts), :meth:`started` (once it has),
      :meth:`forget` (in-memory state) and :meth:`close` (after the producer stopped).

    The base owns the output producer (one, started once, whoever asks first), the partition map of every
    output topic (``partition_maps[topic]``), the stand-in events for table access (``event(partition)``), the
    partitions the pump reads here now (``local``, kept current by the pump), checkpoint staging with its
    undo, the standard batch metrics (events in, batch size, batch seconds, by ``batch_kind``) and quarantine
    records (:meth:`quarantine`, :func:`shared.deadletter.quarantined`: one partition rule). ``app.py`` builds
    the pump around the job: ``Pump.around(app, job)``.
    """

    stateless = False  # True: a batch changes nothing the next batches depend on (see keeps_state)
    batch_kind = "batch"  # the ``kind`` label of the batch size and seconds histograms

    def __init__(self, settings: Settings, config: PumpConfig, partitions: int, outputs: Iterable[str]) -> None:
        self.settings = settings
        self.config = config
        self.service = config.service
        self.topic = config.topic
        self.topic_label = config.topic  # the ``topic`` label of flowwatch_events_in_total
        self.partitions = partitions  # of the input topic and the job's tables
        self.quarantine_name = settings.topic(READINGS_QUARANTINE.name)
        self.outputs = tuple(dict.fromkeys(outputs))
        self.producer: AIOKafkaProducer | None = None
        self.partition_maps: dict[str, PartitionMap] = {}
        self.dirty: dict[Any, Any] = {}  # changed since the last checkpoint; see write_state
        self.unwritten: dict[Any, Any] = {}  # staged into the checkpoint being written; see unsaved
        self.local: frozenset[int] = frozenset()  # partitions the pump reads here now (set by the pump)
        # A stand-in event per partition of the input topic: table reads and writes in ``event_context(event(p))``
        # go to partition p.
        self.event = PartitionEvents(self.topic)
        self._start_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        """Start the output producer and learn the output topics' partition counts (the first caller does)."""
        if self.producer is not None:
            return ""
        async with self._start_lock:
            if self.producer is None:
                await self.prepare()
                producer, maps = await start_output_producer(self.settings, self.service, self.outputs)
                self.partition_maps = maps
                self.started()
                self.producer = producer  # last: a job with a producer is ready for batches
        return ""

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.close()

    def ready_check(self) -> tuple[bool, str]:
        if self.producer is None:
            return False, "output producer not started yet"
        return True, "producer up"

    async def prepare(self) -> None:
        """Before the output producer starts (a slow warm-up that must precede the first batch)."""

    def started(self) -> None:
        """Once the output producer is up and ``partition_maps`` is known."""

    async def close(self) -> None:
        """After the output producer stopped."""

    # --- partitions ---------------------------------------------------------------------------

    def local_partitions(self) -> set[int]:
        """Partitions of the input topic being read here now."""
        return set(self.local)

    # --- batches ------------------------------------------------------------------------------

    async def submit(
        self, records: list[Any], decide: Callable[[list[Any], Outbox], Awaitable[W]] | None = None
    ) -> Batch[W]:
        """Decide a batch and start producing its outputs; :meth:`complete` waits for the acks.

        ``decide``: another input's decision in place of :meth:`decide` (work handed over by :meth:`Pump.beside`).
        """
        if self.producer is None:
            await self.start()
        assert self.producer is not None
        started = time.perf_counter()
        box = Outbox(self.producer)
        work = await (decide or self.decide)(records, box)
        return Batch(work, len(records), await box.send(), started)

    async def complete(self, batch: Batch[W]) -> W:
        """Wait for a batch's acks, then count it: the standard metrics, then the job's :meth:`finish`."""
        await batch.acked
        elapsed = time.perf_counter() - batch.started
        service, kind = self.service, self.batch_kind
        EVENTS_IN.labels(service, self.topic_label).inc(batch.size)
        BATCH_SIZE.labels(service, kind).observe(batch.size)
        BATCH_SECONDS.labels(service, kind).observe(elapsed)
        self.finish(batch.work, elapsed)
        return batch.work

    async def decide(self, records: list[Any], box: Outbox) -> W:
        """Decide a fetch of aiokafka ``ConsumerRecord``s: outputs into ``box``; what :meth:`finish` needs."""
        raise NotImplementedError

    def finish(self, work: W, elapsed: float) -> None:
        """Account for a batch whose outputs the broker acknowledged (``elapsed``: seconds since submit)."""

    def quarantine(
        self,
        box: Outbox,
        raw: Any,
        reasons: list[str],
        *,
        source: str | None = None,
        key: bytes | None = None,
        sensor_id: str | None = None,
        source_partition: int | None = None,
        decoded: Any = None,
        decoded_ok: bool = False,
    ) -> None:
        """One readings.quarantine record into ``box`` (:func:`shared.deadletter.quarantined`)."""
        pmap = self.partition_maps[self.quarantine_name]
        partition, key, value = quarantined(
            raw,
            reasons,
            source or self.service,
            pmap,
            pmap.partitions,
            key=key,
            sensor_id=sensor_id,
            source_partition=source_partition,
            decoded=decoded,
            decoded_ok=decoded_ok,
        )
        box.add(self.quarantine_name, partition, key, value)

    # --- checkpoints and rewinds --------------------------------------------------------------

    def stage(self, checkpoint: Checkpoint) -> Undo | None:
        """Write ``dirty`` into ``checkpoint`` (:meth:`write_state`); the undo marks it dirty again."""
        if not self.dirty:
            return None
        dirty, self.dirty = self.dirty, {}
        # Until the pump has written the checkpoint (beside its loop, see Checkpoint.commit) the table still
        # holds the older rows of these entries: what reads state on a miss asks unsaved() first.
        self.unwritten = dirty
        self.write_state(checkpoint, dirty)

        def undo() -> None:
            for key, value in dirty.items():
                self.dirty.setdefault(key, value)
            self.unwritten = {}

        return undo

    def written(self) -> None:
        """The last staged checkpoint is durable: the tables hold every entry it took."""
        self.unwritten = {}

    def unsaved(self, key: Any) -> Any:
        """The entry of ``key`` changed since the tables last took it (dirty, or staged and being written), or None.

        A job that drops entries from memory (eviction, a bounded cache) and reads the table on a miss must ask
        this first: the table is behind for these entries.
        """
        value = self.dirty.get(key)
        return value if value is not None else self.unwritten.get(key)

    def write_state(self, checkpoint: Checkpoint, dirty: dict[Any, Any]) -> None:
        """Stage the state of ``dirty``'s entries into ``checkpoint`` (:meth:`Checkpoint.write`)."""
        raise NotImplementedError(f"{type(self).__name__} marks state dirty but does not write it")

    def forget(self) -> None:
        """Drop in-memory state (partitions may change hands; the tables hold the truth)."""

    def rewind(self) -> None:
        """Drop everything since the last checkpoint; the pump then reads again from there."""
        self.dirty.clear()
        self.forget()


class Checkpoint:
    """Table rows staged into one :class:`Outbox`; :meth:`commit` makes them durable together.

    :meth:`write` only takes the rows (values the job will not change any more: a snapshot); encoding them and
    writing the local stores happens in :meth:`commit`, a chunk of rows at a time with the event loop let go
    between chunks, so a pump goes on reading while a checkpoint of many sensors is written (a checkpoint of
    1,000 sensor states held the pump's loop 100-350 ms every ``checkpoint_s`` at once: the stall behind the
    end-to-end p99, docs/performance.md).
    """

    #: Rows written between two turns of the event loop.
    CHUNK = 256

    def __init__(self, producer: AIOKafkaProducer, event_for: Callable[[int], Any]) -> None:
        self.box = Outbox(producer)
        # Messages a job sends with the checkpoint that must be on the broker before its rows are (a job's outputs
        # held across batches: the offsets must not pass readings whose outputs are not out). Flushed first.
        self.ahead = Outbox(producer)
        self.ahead_sent = False  # the broker has ``ahead``: whatever befalls the rows, those are out
        self.event_for = event_for
        self.tables: list[Any] = []
        self.staged: list[tuple[Any, Mapping[int, Mapping[bytes, Any]], Callable[[Any], bytes] | None]] = []
        self.rows = 0

    def write(
        self, table: Any, by_partition: Mapping[int, Mapping[bytes, Any]], encode: Callable[[Any], bytes] | None = None
    ) -> int:
        """Stage ``{partition: {key: value}}`` for ``table`` (written by :meth:`commit`, see
        :func:`shared.batching.write_many`)."""
        # By identity: a Faust table is a Mapping, and `in` would compare contents — every row of every table read
        # from rocksdb at each checkpoint, and a second table equal to the first (both empty at start) never added.
        if all(t is not table for t in self.tables):
            self.tables.append(table)
        self.staged.append((table, by_partition, encode))
        staged = sum(len(items) for items in by_partition.values())
        self.rows += staged
        return staged

    async def commit(self) -> None:
        if self.ahead.count:
            await self.ahead.flush()
            self.ahead_sent = True
        staged, self.staged = self.staged, []
        for table, by_partition, encode in staged:
            for partition, items in by_partition.items():
                rows = list(items.items())
                for start in range(0, len(rows), self.CHUNK):
                    chunk = dict(rows[start : start + self.CHUNK])
                    write_many(table, self.box, {partition: chunk}, self.event_for, encode)
                    if len(rows) > self.CHUNK:
                        await asyncio.sleep(0)
        last = await self.box.flush()
        for table in self.tables:
            persisted(table, last)


@dataclass(frozen=True, slots=True)
class PumpConfig:
    service: str
    topic: str  # the full topic name (with the settings' prefix)
    progress_table: str
    batch_size: int = 2000
    within_s: float = 0.05
    in_flight: int = 2
    checkpoint_s: float = 2.0
    mirror_group: str | None = None  # consumer group the checkpointed offsets are mirrored to
    # The broker holds a fetch until this many bytes are there or ``within_s`` passed: 1 hands over whatever
    # arrived (lowest latency); more makes fuller batches at low rates (fewer outputs per reading).
    fill_bytes: int = 1
    copartitioned: tuple[str, ...] = ()  # other topics that must have the tables' partition count
    # Where a message whose processing fails twice goes: None picks readings.quarantine for the readings
    # topics and the deadletter topic for any other.
    set_aside_topic: str | None = None
    # The consumer group that read the topic before a pump did (a Faust agent's): a partition without a
    # checkpoint starts at that group's committed offset, not at the beginning (an upgrade does not replay
    # the topic's whole retention). None, or no offset committed there: the beginning.
    inherit_group: str | None = None
    # False: no guard before each batch whatever ``pump_crash_guard`` says (one broker round trip a batch less),
    # for a topic only the service itself writes, whose messages cannot kill the worker outright.
    crash_guard: bool = True


@dataclass(slots=True)
class Suspect:
    """Offsets of one partition whose batch raised, or was being processed when a worker died."""

    first: int
    last: int
    alone: bool = False  # process one message at a time (the batch already failed twice, or killed a worker)
    at: int | None = None  # the message being processed alone (written in its guard)
    died_at: int | None = None  # read back from a guard after a restart: the message a worker died on, alone

    def encode(self) -> bytes:
        return orjson.dumps({"first": self.first, "last": self.last, "at": self.at})

    @classmethod
    def decode(cls, raw: bytes) -> Suspect | None:
        try:
            data = orjson.loads(raw)
            at = None if data["at"] is None else int(data["at"])
            return cls(int(data["first"]), int(data["last"]), alone=True, died_at=at)
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(slots=True)
class Staged:
    """A checkpoint taken but not yet written: its rows, the offsets they cover, and how to undo the taking."""

    checkpoint: Checkpoint
    finished: dict[int, int]
    undo: Undo | None
    acked: dict[int, int]  # of ``finished``, the offsets whose outputs were acknowledged when it was taken


_gc_timed: set[str] = set()


def _time_collections(service: str) -> None:
    """Time every garbage collection of the process into :data:`GC_PAUSES` (once per process and service)."""
    if service in _gc_timed:
        return
    _gc_timed.add(service)
    started = [0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSES.labels(service, str(info.get("generation", ""))).observe(time.perf_counter() - started[0])

    gc.callbacks.append(collected)


_loop_watched: set[str] = set()

#: How often the loop watcher's timer is due (seconds): a hold shorter than this may go unseen.
LOOP_TICK_S = 0.02


def _watch_loop(service: str) -> None:
    """Time how late a timer of the event loop fires into :data:`LOOP_LAG` (once per process and service)."""
    if service in _loop_watched:
        return
    _loop_watched.add(service)
    loop = asyncio.get_running_loop()
    observe = LOOP_LAG.labels(service).observe

    def tick(due: float) -> None:
        now = loop.time()
        observe(max(0.0, now - due))
        loop.call_at(now + LOOP_TICK_S, tick, now + LOOP_TICK_S)

    first = loop.time() + LOOP_TICK_S
    loop.call_at(first, tick, first)


def _oldest_age(fetched: Mapping[Any, list[Any]]) -> float:
    """Seconds since the first record of the fetch's partitions was written (its record timestamp, epoch ms)."""
    oldest = min(records[0].timestamp for records in fetched.values())
    return max(0.0, time.time() - oldest / 1000)


def offset_ranges(records: list[Any]) -> dict[int, tuple[int, int]]:
    """partition -> (first, last) offset of ``records``."""
    # Per message of the batches the poison path splits off (a whole fetch's come from fetched_ranges): no tuple,
    # min() or max() per message (a fifth of the cost).
    ranges: dict[int, list[int]] = {}
    for r in records:
        partition, offset = r.partition, r.offset
        seen = ranges.get(partition)
        if seen is None:
            ranges[partition] = [offset, offset]
        elif offset > seen[1]:
            seen[1] = offset
        elif offset < seen[0]:
            seen[0] = offset
    return {p: (first, last) for p, (first, last) in ranges.items()}


def fetched_ranges(fetched: Mapping[Any, list[Any]]) -> dict[int, tuple[int, int]]:
    """:func:`offset_ranges` of one fetch of one topic, from each partition's first and last record: a fetch holds a
    partition's records in offset order (Kafka's order), so no loop over the messages (~0.5 % of ingest's CPU)."""
    return {tp.partition: (records[0].offset, records[-1].offset) for tp, records in fetched.items() if records}


class Pump:
    def __init__(self, app: Any, settings: Settings, job: PumpJob, config: PumpConfig, partitions: int) -> None:
        self.app = app
        self.settings = settings
        self.job = job
        self.config = config
        self.topic = config.topic
        self.progress = app.Table(
            config.progress_table,
            key_type=bytes,
            value_type=bytes,
            default=None,
            partitions=partitions,
            help=f"Last checkpointed offset per partition of {config.topic}",
        )
        self.consumer: AIOKafkaConsumer | None = None
        # Guards and checkpoints go through a producer of their own (the job's until it is started): aiokafka sends
        # one request at a time per broker and producer, so through the job's they would queue behind a batch's
        # outputs, and a batch's outputs behind a checkpoint of every changed state.
        self.progress_producer: AIOKafkaProducer | None = None
        self._assigned: set[int] = set()
        self._paused = True
        self.assigned = set()
        self.lock = asyncio.Lock()  # held while a batch is in flight; rebalances wait for it
        self.paused = True
        self.error = ""
        self.started = False
        self.crashed = False
        self.stopping = False  # stop() was called: the run loop ends instead of reading again
        self.failed: Exception | None = None  # a job error met beside the loop (beside()), raised in the loop
        self.crash_guard = settings.pump_crash_guard and config.crash_guard
        self.inflight: deque[tuple[dict[int, int], InFlight]] = deque()
        self.writing: asyncio.Future[None] | None = None  # the periodic checkpoint being written beside the loop
        self.finished: dict[int, int] = {}  # partition -> last offset whose outputs were acknowledged
        self.lags: dict[int, int] = {}
        self.lag = 0
        self.last_batch_at = time.monotonic()
        self.event = PartitionEvents(self.topic)  # stand-in events for the progress table's partitions
        self.suspects: dict[int, Suspect] = {}
        # partition -> (first, last) of its guard as durable in the progress table, written by this pump;
        # a batch within it needs no guard of its own
        self.guarded: dict[int, tuple[int, int]] = {}
        # Partitions whose guard in the progress table may be one this process wrote ahead (acknowledged or not:
        # the table's local store holds it either way) and has not cut back yet. A live process has no crash
        # behind them: a rewind reads them again as batches, and a settle cuts them back.
        self.ahead: set[int] = set()
        # The next guards, written while the batches within the current ones go on (see _submit); None when idle.
        self.renewing: asyncio.Future[None] | None = None
        self.reached: dict[int, int] = {}  # partition -> the last offset handed to the job (since the assignment)
        self.aside = SetAside(settings, config.service, config.topic, config.set_aside_topic)
        self.aside_topic = self.aside.topic

    @classmethod
    def around(cls, app: Any, job: BatchJob[Any]) -> Pump:
        """The pump that reads ``job.config.topic`` for ``job`` (its tables have ``job.partitions`` partitions)."""
        return cls(app, job.settings, job, job.config, job.partitions)

    # --- partitions and offsets ---------------------------------------------------------------

    # What the pump reads is told to its job as it changes (BatchJob.local), so the job never asks the pump.
    @property
    def assigned(self) -> set[int]:
        return self._assigned

    @assigned.setter
    def assigned(self, partitions: set[int]) -> None:
        self._assigned = partitions
        self._tell_job()

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        self._paused = paused
        self._tell_job()

    def _tell_job(self) -> None:
        if isinstance(self.job, BatchJob):
            self.job.local = frozenset() if self._paused else frozenset(self._assigned)

    def owned_partitions(self) -> set[int]:
        """Partitions of the topic this worker owns: those of its active progress table partitions."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return set()
        changelog = self.progress.changelog_topic.get_topic_name()
        return {tp.partition for tp in actives if tp.topic == changelog}

    def local_partitions(self) -> set[int]:
        """Partitions being read here now."""
        return set(self.assigned) if not self.paused else set()

    def checkpointed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for p in partitions:
            with event_context(self.event(p)):
                value = self.progress.get(b"%d" % p)
            if value is not None:
                out[p] = int(value)
        return out

    def done_through(self, partition: int) -> int:
        """The last offset of ``partition`` whose batch is finished (outputs acknowledged), -1 when none is known.

        Finished since the last checkpoint, else checkpointed (while a checkpoint is being written beside the
        loop this may be older than the truth: never newer).
        """
        if partition in self.finished:
            return self.finished[partition]
        return self.checkpointed_offsets([partition]).get(partition, -1)

    def _settled(self) -> bool:
        return not self.app.rebalancing and tables_recovered(self.app)

    # --- start-up -----------------------------------------------------------------------------

    async def _start(self) -> bool:
        self.error = await self.job.start()
        producer = self.job.producer
        if not self.error and producer is not None:
            # The pump's partitions follow the tables' (co-partitioning), and so must those of the topics
            # the job writes by the same key: a different count would put a key's state on another worker.
            for topic in (self.topic, *self.config.copartitioned):
                found = len(await producer.partitions_for(topic))
                if found != self.progress.partitions:
                    self.error = f"{topic} has {found} partitions, the tables {self.progress.partitions}"
                    break
        if self.error:
            log.error("%s cannot read %s: %s", self.config.service, self.topic, self.error)
            return False
        cfg = self.config
        # Before the consumer: a start that fails here (as the job's producer's would) leaves nothing running.
        self.progress_producer, _ = await start_output_producer(self.settings, f"{cfg.service}-progress", ())
        self.consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(),
            client_id=f"{self.settings.topic_prefix}flowwatch-{cfg.service}-pump",
            # Never joins this group (partitions are assigned by hand): only the mirror of the checkpoints.
            group_id=cfg.mirror_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.batch_size,
            fetch_max_wait_ms=max(1, int(cfg.within_s * 1000)),
            fetch_min_bytes=max(1, cfg.fill_bytes),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        await self.consumer.start()
        self.started = True
        return True

    def _progress_producer(self) -> AIOKafkaProducer | None:
        return self.progress_producer or self.job.producer

    async def _reassign(self, wanted: set[int]) -> None:
        """Follow Faust's assignment: start each partition where its last checkpoint ended."""
        assert self.consumer is not None
        await self._renewed()
        tps = [TopicPartition(self.topic, p) for p in sorted(wanted)]
        self.consumer.assign(tps)
        offsets = self.checkpointed_offsets(wanted)
        inherited = await self._inherited_offsets([tp for tp in tps if tp.partition not in offsets])
        for tp in tps:
            done = offsets.get(tp.partition)
            if done is not None:
                self.consumer.seek(tp, done + 1)
            elif tp in inherited:
                self.consumer.seek(tp, inherited[tp])
            else:
                await self.consumer.seek_to_beginning(tp)
        self.assigned = set(wanted)
        # The guards this process wrote ahead have no crash behind them (a rewind, more partitions), whether their
        # write was acknowledged or failed: their ranges are read again as batches. Any other guard is read back
        # below; either way the next batch writes a guard of its own.
        self.ahead &= wanted  # one given up meanwhile was cut back by the settle (or is the next owner's to find)
        own = set(self.ahead)  # every partition in ``guarded`` is in ``ahead`` too (added before the write)
        self.guarded = {}
        self.reached = {}
        # A guard beyond the checkpoint: the worker died (or the batch raised) while processing that range.
        suspects = {p: s for p, s in self.suspects.items() if p in wanted}
        for p in wanted:
            if p not in suspects and p not in own:
                done = offsets.get(p, -1)
                guard = self.guard_of(p)
                if guard is not None and guard.last > done:
                    guard = await self._clipped(p, guard)
                if guard is not None and guard.last > done:
                    log.warning(
                        "%s: %s partition %d offsets %d..%d were being processed when a worker stopped; "
                        "processing them one at a time",
                        self.config.service,
                        self.topic,
                        p,
                        guard.first,
                        guard.last,
                    )
                    suspects[p] = guard
        self.suspects = suspects
        log.info("%s consuming %s partitions %s from %s", self.config.service, self.topic, sorted(wanted), offsets)

    async def _inherited_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offsets ``config.inherit_group`` committed for ``tps`` (those it committed)."""
        group = self.config.inherit_group
        if not tps or not group:
            return {}
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**self.settings.kafka_client_options())
        try:
            await admin.start()
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        except KafkaError as exc:
            # Reading from the beginning repeats outputs (consumers are idempotent); it never loses input.
            log.warning("%s: offsets of group %s not readable, %s starts at the beginning: %s",
                        self.config.service, group, self.topic, exc)  # fmt: skip
            return {}
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        found = {tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}
        if found:
            log.info("%s: %s partitions without a checkpoint start where group %s left them: %s",
                     self.config.service, self.topic, group, {tp.partition: o for tp, o in found.items()})  # fmt: skip
        return found

    async def _clipped(self, partition: int, guard: Suspect | None) -> Suspect | None:
        """``guard`` cut at the end of the log: a guard written ahead also covers offsets that did not exist yet, and
        a worker that died never processed a message appended after that (None: nothing it covers exists)."""
        if guard is None or self.consumer is None:
            return guard
        tp = TopicPartition(self.topic, partition)
        try:
            end = (await self.consumer.end_offsets([tp]))[tp] - 1
        except KafkaError as exc:
            log.warning("%s: end of %s unknown, its guard is taken whole: %s", self.config.service, tp, exc)
            return guard
        if end < guard.first:
            return None
        guard.last = min(guard.last, end)
        return guard

    def guard_of(self, partition: int) -> Suspect | None:
        with event_context(self.event(partition)):
            raw = self.progress.get(GUARD_KEY % partition)
        return Suspect.decode(raw) if raw else None

    # --- batches ------------------------------------------------------------------------------

    async def _complete_oldest(self) -> None:
        offsets, batch = self.inflight[0]
        try:
            await self.job.complete(batch)
        except KafkaError:
            raise
        except Exception:
            # The outputs are on the broker: the batch is done; only its accounting failed.
            JOB_FAILURES.labels(self.config.service).inc()
            log.exception("%s: accounting for a finished batch failed", self.config.service)
        self.inflight.popleft()
        self.finished.update(offsets)
        BATCHES.labels(self.config.service).inc()
        self.last_batch_at = time.monotonic()

    async def drain(self) -> bool:
        """Finish every batch in flight; on a failed produce rewind to the last checkpoint (False)."""
        try:
            while self.inflight:
                await self._complete_oldest()
        except KafkaError as exc:
            await self._rewind(exc)
            return False
        return True

    async def _rewind(self, exc: BaseException, what: str = "producing a batch failed") -> None:
        # The outputs of some batch did not reach the broker (or it raised): nothing after the last
        # checkpoint counts. Drop the in-memory state and read again from the checkpointed offsets.
        log.error("%s: %s; rewinding to the last checkpoint: %s", self.config.service, what, exc)
        REWINDS.labels(self.config.service).inc()
        # A checkpoint being written covers acknowledged work only: let it land, the rewind starts from it.
        await self._written()
        await self._renewed()  # its partitions are in ``ahead``: read again as batches below
        for _, batch in self.inflight:
            batch.acked.cancel()
        self.inflight.clear()
        self.finished.clear()
        self.job.rewind()
        if self.assigned:
            await self._reassign(set(self.assigned))

    async def beside(self, submit: Callable[[frozenset[int]], Awaitable[InFlight | None]]) -> bool:
        """Work from another input of the job, in the pump's turn, made durable before this returns.

        ``submit(partitions)`` gets the partitions read here now (whose state this worker owns) and is called
        under the pump's lock, so no batch, rebalance, rewind or checkpoint taking runs meanwhile; it hands the
        job what belongs to those partitions (changing its state, as a batch of the topic would) and returns
        the submitted batch, or None. The pump then finishes everything in flight and checkpoints: True means
        the state that work changed is in the tables, so the caller may commit its own input's offsets (they
        are not in the checkpoint: a crash before that commit replays the input, which the state then
        recognises). False: nothing is read here now (``submit`` not called), or the work was lost to a rewind;
        the caller must get it done another way (through the pump's topic).
        """
        async with self.lock:
            if self.stopping or self.paused or self.crashed or not self.assigned or not self._settled():
                return False
            try:
                batch = await submit(frozenset(self.assigned))
            except KafkaError as exc:
                await self._rewind(exc)
                return False
            except Exception as exc:  # noqa: BLE001 - the job may have changed state half way: undo, never stop
                JOB_FAILURES.labels(self.config.service).inc()
                await self._rewind(exc, "work handed to the pump beside its topic raised")
                return False
            if batch is None:
                return True  # nothing of this worker's: no state changed, no checkpoint to wait for
            self.inflight.append(({}, batch))  # no offset of the pump's topic: the caller commits its own
            try:
                return await self._durable()
            except Exception as exc:  # noqa: BLE001 - a job error in the checkpoint: the pump's loop stops on it
                self.failed = exc
                return False

    # --- poison: failed batches, isolated messages, guards against hard crashes ------------------

    async def _process(self, records: list[Any], ranges: dict[int, tuple[int, int]] | None = None) -> bool:
        """Submit a fetch (``ranges``: its :func:`offset_ranges`, when known); ranges under suspicion go one step
        more carefully. False after a rewind."""
        if not self.suspects:
            return await self._submit(records, ranges)
        suspects = self.suspects
        before, after = [], []
        careful: dict[int, list[Any]] = {}
        for r in records:
            s = suspects.get(r.partition)
            if s is None or r.offset < s.first:
                before.append(r)
            elif r.offset <= s.last:
                careful.setdefault(r.partition, []).append(r)
            else:
                after.append(r)
        if before and not await self._submit(before):
            return False
        for p, recs in careful.items():
            if not await self._isolate(p, recs):
                return False
        return not after or await self._submit(after)

    async def _submit(self, records: list[Any], ranges: dict[int, tuple[int, int]] | None = None) -> bool:
        if ranges is None:
            ranges = offset_ranges(records)
        offsets = {p: last for p, (_, last) in ranges.items()}
        service = self.config.service
        try:
            if self.crash_guard:
                renewing = self.renewing
                if renewing is not None and (renewing.done() or not self._covered(ranges)):
                    await self._renewed()  # landed (or failed): it counts from here; in flight: it may cover this batch
                if not self._covered(ranges):
                    guarding = time.perf_counter()
                    await self._guard_ahead(ranges)
                    STEP_SECONDS.labels(service, "guard").observe(time.perf_counter() - guarding)
                elif self.renewing is None:
                    due = self._running_out(ranges)
                    if due:
                        self.renewing = asyncio.ensure_future(self._renew(due))
                self.reached.update(offsets)
            submitting = time.perf_counter()
            batch = await self.job.submit(records)
            sent = time.perf_counter()
            STEP_SECONDS.labels(service, "submit").observe(sent - submitting)
            acked = STEP_SECONDS.labels(service, "acked")
            batch.acked.add_done_callback(lambda f: f.cancelled() or acked.observe(time.perf_counter() - sent))
            self.inflight.append((offsets, batch))
        except KafkaError as exc:
            await self._rewind(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - any job error: retry, then isolate; never stop the pump
            JOB_FAILURES.labels(self.config.service).inc()
            for p, (first, last) in ranges.items():
                self.suspects[p] = Suspect(first, last)
            what = f"a batch of {len(records)} messages raised (retried once, then one message at a time)"
            if keeps_state(self.job):
                # The job may have changed its in-memory state half way: start again from the checkpoint.
                await self._rewind(exc, what)
            else:
                # Nothing to undo: the batches before this one stand (rewinding would write their outputs
                # again, a duplicate of each for every poison message); read just this one again.
                log.error("%s: %s: %s: %s", self.config.service, what, type(exc).__name__, exc)
                assert self.consumer is not None
                for p, (first, _) in ranges.items():
                    self.consumer.seek(TopicPartition(self.topic, p), first)
            await asyncio.sleep(self.settings.pump_retry_backoff_s)
            return False
        return True

    def _covered(self, ranges: Mapping[int, tuple[int, int]]) -> bool:
        """Whether a durable guard of this pump covers every offset of ``ranges``."""
        guarded = self.guarded
        for p, (first, last) in ranges.items():
            g = guarded.get(p)
            if g is None or first < g[0] or last > g[1]:
                return False
        return True

    def _running_out(self, ranges: Mapping[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        """The guarded partitions with less than half of ``pump_guard_ahead`` left beyond where they are.

        Where they are: the batch about to be decided (``ranges``) for its partitions, else just past the last
        offset decided (``(next, next - 1)``). Every such partition is renewed, not only the batch's: a fetch often
        holds one partition, and a guard left to run out meanwhile would hold its next batch behind a round trip.
        """
        half = self.settings.pump_guard_ahead // 2
        due: dict[int, tuple[int, int]] = {}
        for p, (_, end) in self.guarded.items():
            at = ranges.get(p)
            if at is None:
                last = self.reached.get(p)
                if last is None:
                    continue
                at = (last + 1, last)
            if at[1] + half > end:
                due[p] = at
        return due

    async def _renew(self, ranges: Mapping[int, tuple[int, int]]) -> None:
        """Write the guards that follow the current ones while the batches within those go on.

        Started before the batch at hand is decided, each new guard from where its partition is (``ranges``: that
        batch's first offset, or the next to be read): it and the guard it replaces both cover that batch and every
        one after it up to the old guard's end, so whichever is in the table when a worker dies covers what it was
        deciding. Until the broker acknowledges them the old ones stand (``guarded``); a batch beyond those waits
        for this first (:meth:`_submit`). Waiting for a guard once the old one had run out held every reading of
        that moment behind a broker round trip.
        """
        try:
            await self._write_guards(self._reaching_ahead(ranges))
        except Exception as exc:  # noqa: BLE001 - beside the loop: the old guards stand, the next batch guards anew
            log.warning("%s: renewing the crash guards failed (the current ones stand): %s", self.config.service, exc)

    async def _renewed(self) -> None:
        """Wait for the guards being renewed, if any (before anything else writes guards or reads ``guarded``)."""
        task, self.renewing = self.renewing, None
        if task is not None:
            await task

    async def _guard_ahead(self, ranges: Mapping[int, tuple[int, int]]) -> None:
        """Guard a batch's ranges and ``pump_guard_ahead`` offsets beyond each, so the next batches need none.

        Every partition the batch holds is guarded afresh (not only the one that ran out), so their guards run
        out together: one round trip rather than one per partition.
        """
        await self._guard(self._reaching_ahead(ranges))

    def _reaching_ahead(self, ranges: Mapping[int, tuple[int, int]]) -> dict[int, Suspect]:
        """Guards of ``ranges`` reaching ``pump_guard_ahead`` offsets beyond each."""
        ahead = max(0, self.settings.pump_guard_ahead)
        return {p: Suspect(first, last + ahead) for p, (first, last) in ranges.items()}

    async def _guard(self, guards: Mapping[int, Suspect]) -> None:
        """Durably record what is about to be processed (read back after a hard crash)."""
        await self._renewed()  # written after it: the table ends with these
        for p in guards:
            self.guarded.pop(p, None)  # unknown until acknowledged (a failed write may or may not have landed)
        await self._write_guards(guards)

    async def _write_guards(self, guards: Mapping[int, Suspect]) -> None:
        """Write ``guards`` to the progress table; once acknowledged, those of ranges (not of one message) cover
        batches (``guarded``). A failed write raises, leaving ``guarded`` as it was."""
        producer = self._progress_producer()
        assert producer is not None
        self.ahead.update(guards)  # in the local store from here on, landed or not
        cp = Checkpoint(producer, self.event)
        cp.write(self.progress, {p: {GUARD_KEY % p: g.encode()} for p, g in guards.items()})
        await cp.commit()
        for p, g in guards.items():
            if g.at is None:
                self.guarded[p] = (g.first, g.last)

    async def _durable(self, guards: Mapping[int, Suspect] | None = None) -> bool:
        """Finish what is in flight and checkpoint (with ``guards``); False after a rewind."""
        if not await self.drain():
            return False
        try:
            await self.checkpoint(guards)
        except KafkaError as exc:
            CHECKPOINT_ERRORS.labels(self.config.service).inc()
            await self._rewind(exc, "a checkpoint before isolating messages failed")
            return False
        return True

    async def _isolate(self, partition: int, records: list[Any]) -> bool:
        """The suspect range of one partition: once more as a batch, then message by message."""
        suspect = self.suspects[partition]
        # Everything before the range is made durable first, so a failure rolls back only what follows; with
        # the range's guard, so a hard crash in the retry below is known after the restart.
        guard = Suspect(suspect.first, suspect.last)
        if not await self._durable({partition: guard} if self.crash_guard else None):
            return False
        if not suspect.alone:
            try:
                self.inflight.append(({partition: records[-1].offset}, await self.job.submit(records)))
                if not await self.drain():
                    return False
            except KafkaError as exc:
                await self._rewind(exc)
                return False
            except Exception as exc:  # noqa: BLE001 - any job error: isolate its messages, never stop
                JOB_FAILURES.labels(self.config.service).inc()
                log.error(
                    "%s: a batch failed twice (%s: %s); processing its %d messages one at a time",
                    self.config.service,
                    type(exc).__name__,
                    exc,
                    len(records),
                )
                self.inflight.clear()
                self.job.rewind()
                suspect.alone = True
                await asyncio.sleep(self.settings.pump_retry_backoff_s)
        if suspect.alone:
            for r in records:
                if not await self._alone(suspect, r):
                    return False
            if not await self._durable():
                return False
        if records[-1].offset >= suspect.last:
            self.suspects.pop(partition, None)
        return True

    async def _alone(self, suspect: Suspect, record: Any) -> bool:
        """One message, under its own guard; retried once, then set aside. False after a rewind."""
        p = record.partition
        try:
            if suspect.died_at == record.offset:
                await self._set_aside(record, ["the worker died while processing this message alone"])
                self.finished[p] = record.offset
                return True
            suspect.at = record.offset
            error: Exception | None = None
            for attempt in range(2):
                if not await self._durable({p: suspect} if self.crash_guard else None):
                    return False
                try:
                    self.inflight.append(({p: record.offset}, await self.job.submit([record])))
                except KafkaError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any job error: retry once, then set the message aside
                    JOB_FAILURES.labels(self.config.service).inc()
                    error = exc
                    self.job.rewind()
                    if attempt == 0:
                        await asyncio.sleep(self.settings.pump_retry_backoff_s)
                    continue
                return await self.drain()
            assert error is not None
            log.error(
                "%s: %s partition %d offset %d failed twice; setting it aside: %s: %s",
                self.config.service,
                self.topic,
                p,
                record.offset,
                type(error).__name__,
                error,
            )
            await self._set_aside(record, [failed_twice(error)])
            self.finished[p] = record.offset
            return True
        except KafkaError as exc:
            await self._rewind(exc)
            return False

    async def _set_aside(self, record: Any, reasons: list[str]) -> None:
        """Quarantine (readings) or dead-letter (other topics) one message, with why; waits for the broker."""
        producer = self.job.producer
        assert producer is not None
        await self.aside.put(producer, record, reasons, self.topic)

    async def checkpoint(self, guards: Mapping[int, Suspect] | None = None) -> dict[int, int]:
        """Write the job's changed state and the finished offsets (and ``guards``), durable together.

        Call with no batch in flight (after :meth:`drain`). Returns the offsets checkpointed.
        """
        await self._renewed()  # its guards land before these rows (and a guard among them)
        await self._written()
        return await self._commit(self._stage(guards))

    def _stage(self, guards: Mapping[int, Suspect] | None = None, in_flight: bool = False) -> Staged | None:
        """Take the job's changed state and the finished offsets (and ``guards``) as they are now.

        Synchronous, so nothing is processed between the state and the offsets it belongs to. ``in_flight``: the
        state includes what the batches in flight changed, so their offsets are in it too; such a checkpoint may
        be written only once the broker has acknowledged them (:meth:`_periodic_checkpoint`).
        """
        producer = self._progress_producer()
        if producer is None:
            return None
        finished, self.finished = self.finished, {}
        acked = dict(finished)
        if in_flight:
            for offsets, _ in self.inflight:
                finished.update(offsets)  # oldest first: the newest batch's last offset wins
        cp = Checkpoint(producer, self.event)
        undo = self.job.stage(cp)
        if not cp.rows and not cp.ahead.count and not finished and not guards:
            return None
        rows: dict[int, dict[bytes, bytes]] = {p: {b"%d" % p: b"%d" % offset} for p, offset in finished.items()}
        for p, guard in (guards or {}).items():
            rows.setdefault(p, {})[GUARD_KEY % p] = guard.encode()
            self.guarded.pop(p, None)
            self.ahead.discard(p)  # replaced in the table by this guard
        cp.write(self.progress, rows)
        return Staged(cp, finished, undo, acked)

    async def _commit(self, staged: Staged | None) -> dict[int, int]:
        if staged is None:
            return {}
        try:
            await staged.checkpoint.commit()
        except BaseException:
            # Not durable: keep both for the next checkpoint.
            if staged.undo is not None:
                staged.undo()
            for p, offset in staged.finished.items():
                self.finished.setdefault(p, offset)
            raise
        written = getattr(self.job, "written", None)
        if written is not None:
            written()
        CHECKPOINTS.labels(self.config.service).inc()
        return staged.finished

    async def _written(self) -> None:
        """Wait for the periodic checkpoint being written beside the loop, if any (its job errors raise here)."""
        task, self.writing = self.writing, None
        if task is not None:
            await task

    async def _settle(self) -> None:
        """Finish, checkpoint and stop reading (before partitions change hands or at shutdown)."""
        if await self.drain():
            try:
                await self.checkpoint(self._trimmed_guards())
            except KafkaError as exc:
                CHECKPOINT_ERRORS.labels(self.config.service).inc()
                log.error("checkpoint before a rebalance failed; the next owner replays from the last one: %s", exc)
        self.job.forget()

    def _trimmed_guards(self) -> dict[int, Suspect]:
        """This pump's guards cut back to what is finished (an empty range), for the checkpoint of a settle.

        A guard written ahead covers offsets not processed yet: left as it is, the next owner of the partition (or
        this worker after a clean restart) would take them for a crash and process them one at a time.
        """
        return {p: Suspect(done + 1, done) for p in self.ahead & self.assigned for done in (self.done_through(p),)}

    async def on_revoked(self) -> None:
        """Awaited by Faust before it takes partitions away (and at shutdown): finish, checkpoint, stop."""
        self.paused = True
        async with self.lock:
            await self._settle()
            if self.consumer is not None and self.assigned:
                self.consumer.assign([])
            self.assigned = set()

    async def stop(self) -> None:
        """At shutdown: finish, checkpoint, stop reading for good, then stop the job (its output producer)."""
        self.stopping = True  # the loop must not take the partitions (still Faust's until it stops) up again
        await self.on_revoked()
        await self.job.stop()
        await self._stop_progress_producer()

    async def _stop_progress_producer(self) -> None:
        """Guards and checkpoints go through the job's producer from now on (a settle may still come)."""
        with contextlib.suppress(Exception):
            await self._renewed()
        producer, self.progress_producer = self.progress_producer, None
        if producer is not None:
            await producer.stop()

    async def run(self) -> None:
        if not await self._start():
            return  # not ready, with the reason on /ready: reading would break co-partitioning
        assert self.consumer is not None
        # Everything alive now (Faust, the app, models, rules) lives as long as the process: keep it
        # out of the collector's scans, and collect young objects less often; the hot path allocates
        # a few objects per message and frees them within the batch (halved the p99 in the benches).
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        _time_collections(self.config.service)
        _watch_loop(self.config.service)
        cfg = self.config
        fetch_wait = STEP_SECONDS.labels(cfg.service, "fetch").observe
        age = STEP_SECONDS.labels(cfg.service, "age").observe
        within_ms = max(1, int(cfg.within_s * 1000))
        window = max(1, cfg.in_flight)
        last_checkpoint = time.monotonic()
        try:
            while not self.stopping:
                if not self._settled():
                    self.paused = True
                    await asyncio.sleep(0.1)
                    continue
                wanted = self.owned_partitions()
                if self.paused or wanted != self.assigned:
                    async with self.lock:
                        if self.stopping:  # stop() revoked everything while this waited for the lock
                            break
                        if self.assigned - wanted:
                            await self._settle()
                        else:
                            await self.drain()
                        await self._reassign(wanted)
                        self.paused = False
                if not self.assigned:
                    await asyncio.sleep(0.2)
                    continue
                fetching = time.perf_counter()
                fetched = await self._fetch(within_ms)
                if fetched:
                    fetch_wait(time.perf_counter() - fetching)
                    age(_oldest_age(fetched))
                async with self.lock:
                    if self.failed is not None:
                        raise self.failed
                    if self.paused:
                        continue  # a revoke came in while fetching: these are read again after reassignment
                    records = list(chain.from_iterable(fetched.values()))
                    if records and not await self._process(records, fetched_ranges(fetched)):
                        continue
                    # Finish the oldest batches: those acknowledged, and those beyond the window.
                    try:
                        while self.inflight and (self.inflight[0][1].acked.done() or len(self.inflight) > window):
                            await self._complete_oldest()
                    except KafkaError as exc:
                        await self._rewind(exc)
                        continue
                    if self.writing is not None and self.writing.done():
                        await self._written()  # a job error in the checkpoint stops the pump, as it would inline
                    now = time.monotonic()
                    if now - last_checkpoint >= cfg.checkpoint_s and self.writing is None:
                        last_checkpoint = now
                        # Taken here, between two batches, with those in flight: written beside the loop once the
                        # broker has their outputs. Waiting for them here held every reading behind a round trip.
                        acks = [batch.acked for _, batch in self.inflight]
                        staged = self._stage(in_flight=True)
                        self.writing = asyncio.ensure_future(self._periodic_checkpoint(staged, acks))
                        CHECKPOINT_HOLDS.labels(cfg.service).observe(time.monotonic() - now)
        except Exception as exc:
            # A job bug: say so on /ready and /health (a restart replays from the last checkpoint).
            self.crashed = True
            self.error = f"the {self.topic} pump stopped: {type(exc).__name__}: {exc}"
            log.exception("%s", self.error)
            raise
        finally:
            with contextlib.suppress(Exception):
                await self._written()
            await self.consumer.stop()
            await self._stop_progress_producer()

    async def _fetch(self, within_ms: int) -> dict[TopicPartition, list[Any]]:
        """The next fetch: what is fetched already, else whatever comes first — data (within ``within_ms``) or the
        acknowledgement of the oldest batch in flight (``{}``: finish it).

        Waiting for every batch in flight whenever nothing was fetched yet made a reading that arrived meanwhile
        wait out a broker round trip as well.
        """
        assert self.consumer is not None
        consumer, most = self.consumer, self.config.batch_size
        if not self.inflight:
            return await consumer.getmany(timeout_ms=within_ms, max_records=most)
        fetched = await consumer.getmany(timeout_ms=0, max_records=most)
        oldest = self.inflight[0][1].acked
        if fetched or oldest.done():
            return fetched
        fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=within_ms, max_records=most))
        try:
            await asyncio.wait((fetch, oldest), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not fetch.done():
                # Cancelled while it waits for data, it has taken nothing (aiokafka's fetched_records drains only
                # without waiting): what arrives is there for the next fetch. Its fetch_context is left counted,
                # which only a subscribe()d consumer's idle check reads; the pump assigns.
                fetch.cancel()
                await asyncio.wait((fetch,))  # unlike awaiting it, lets a cancel of this task itself through
        return fetch.result() if not fetch.cancelled() else {}

    async def _periodic_checkpoint(self, staged: Staged | None, acks: Iterable[asyncio.Future[Any]] = ()) -> None:
        acks = list(acks)
        if staged is not None and acks:
            await asyncio.wait(acks, return_when=asyncio.FIRST_EXCEPTION)
            if not all(f.done() and not f.cancelled() and f.exception() is None for f in acks):
                # A batch it covers did not reach the broker: the loop rewinds to the checkpoint before this one.
                # Should it not (an error aiokafka does not raise), what was acknowledged goes to the next one.
                if staged.undo is not None:
                    staged.undo()
                for p, offset in staged.acked.items():
                    self.finished.setdefault(p, offset)
                log.info("%s: a checkpoint was dropped: a batch it covers was not acknowledged", self.config.service)
                return
        try:
            done = await self._commit(staged)
        except KafkaError as exc:
            CHECKPOINT_ERRORS.labels(self.config.service).inc()
            log.error("%s: checkpoint failed; retrying at the next one: %s", self.config.service, exc)
            return
        try:
            await self._publish_progress(done)
        except KafkaError as exc:  # best effort, beside the loop: the assignment may have changed meanwhile
            log.debug("%s: progress not published: %s", self.config.service, exc)

    async def _publish_progress(self, done: dict[int, int]) -> None:
        """Consumer lag for /metrics, and the checkpointed offsets for external lag tools (best effort)."""
        if self.consumer is None:
            return
        if self.config.mirror_group:
            offsets = {TopicPartition(self.topic, p): o + 1 for p, o in done.items() if p in self.assigned}
            if offsets:
                try:
                    await self.consumer.commit(offsets)
                except KafkaError as exc:
                    log.debug("could not mirror offsets to the consumer group: %s", exc)
        lags: dict[int, int] = {}
        for p in self.assigned:
            tp = TopicPartition(self.topic, p)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lags[p] = max(0, highwater - await self.consumer.position(tp))
        self.lags = lags
        self.lag = sum(lags.values())
        CONSUMER_LAG.labels(self.config.service, self.topic).set(self.lag)

    # --- health -------------------------------------------------------------------------------

    def check(self, stall_seconds: float) -> tuple[bool, str]:
        """Readiness: reading, idle with nothing assigned, or why not."""
        if self.error:
            return False, self.error
        if not self.started:
            return False, "starting: output producer and consumer not started yet"
        stalled = self.stalled_for()
        if stalled > stall_seconds:
            return False, f"no batch for {stalled:.0f}s with {self.lag} messages waiting"
        if self.paused:
            if self.owned_partitions():
                return False, f"starting: waiting for table recovery before reading {self.topic}"
            return True, "no partitions assigned to this worker"
        return True, f"partitions {sorted(self.assigned)}, lag {self.lag}"

    def stalled_for(self) -> float:
        """Seconds without a batch while messages wait in the topic (0 when idle or caught up)."""
        if self.paused or not self.assigned or self.lag <= 0:
            return 0.0
        return time.monotonic() - self.last_batch_at

    def install(self, state: Any, name: str) -> None:
        """Run the pump as a task of the app, follow revocations, and report on /ready and /health."""
        app = self.app

        app.task(self.run)

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
            await self.on_revoked()

        state.add_check(name, lambda: self.check(state.stall_seconds))
        state.add_liveness_check(name, lambda: self.alive(state.stall_seconds))

    def alive(self, stall_seconds: float) -> tuple[bool, str]:
        """Liveness: a pump that died or stopped taking batches needs a restart."""
        if self.crashed:
            return False, self.error
        stalled = self.stalled_for()
        return stalled <= stall_seconds, f"{stalled:.0f}s without a batch"
