"""The shared readings pump's bookkeeping, and the forecaster's stage 1 on it, without a broker.

What goes over the wire is captured by a stand-in producer (the pump's reading from Kafka,
rebalances and restarts are tested on the real stack through ingest, the detector and the
forecaster). Here: a failed checkpoint keeps the state and offsets for the next one, a failed
produce rewinds to the last checkpoint, and stage 1 sends each partials partition its partials
before the watermark that covers them, and quarantines what it cannot use with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.forecaster.settings import ForecasterSettings
from services.forecaster.worker import ReadingsFolder
from shared.batching import Outbox, PartitionEvent, PartitionMap, write_many
from shared.metrics import EVENTS_IN
from shared.pump import REWINDS, BatchJob, Checkpoint, Pump, PumpConfig, fetched_ranges, offset_ranges
from shared.settings import Settings
from shared.streaming import event_context


class Batch:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object:
        self.messages.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.messages)


class CapturingProducer:
    """create_batch/send_batch as aiokafka's producer; batches land in ``sent`` (or fail on demand)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.fail_next = 0

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        # A finished batch is handed over closed: aiokafka would otherwise hold it for linger_ms.
        assert batch.closed, "an open batch lingers in aiokafka's accumulator"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_next:
            self.fail_next -= 1
            future.set_exception(KafkaConnectionError("broker gone"))
            return future
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + batch.record_count()
        self.sent.append((topic, partition, batch.messages))
        future.set_result(SimpleNamespace(topic=topic, partition=partition, offset=base))
        return future

    def messages(self, topic: str) -> list[tuple[int, bytes | None, bytes]]:
        return [(p, k, v) for t, p, batch in self.sent if t == topic for k, v in batch]


class Job(BatchJob[Any]):
    """A job with one state table: ``dirty`` rows (key -> (partition, value)) are staged at the checkpoint."""

    def __init__(self, app: faust.App) -> None:
        config = PumpConfig(service="pumptest", topic="readings", progress_table="pumptest-progress")
        super().__init__(Settings(), config, 2, ())
        self.producer: Any = CapturingProducer()
        self.table = app.Table("job-state", key_type=bytes, value_type=bytes, default=None, partitions=2)
        self.rewound = 0
        self.forgotten = 0

    def write_state(self, checkpoint: Checkpoint, dirty: dict[Any, Any]) -> None:
        rows: dict[int, dict[bytes, bytes]] = {}
        for key, (partition, value) in dirty.items():
            rows.setdefault(partition, {})[key] = value
        checkpoint.write(self.table, rows)

    def forget(self) -> None:
        self.forgotten += 1

    def rewind(self) -> None:
        self.rewound += 1
        super().rewind()


@pytest.fixture
def app() -> faust.App:
    return faust.App("pump-test", store="memory://", autodiscover=False)


def make_pump(app: faust.App, job: Any) -> Pump:
    config = PumpConfig(service="pumptest", topic="readings", progress_table="pumptest-progress")
    return Pump(app, Settings(), job, config, partitions=2)


async def test_a_failed_checkpoint_keeps_state_and_offsets_for_the_next_one(app: faust.App) -> None:
    job = Job(app)
    pump = make_pump(app, job)
    job.dirty = {b"s1": (0, b"state-1"), b"s2": (1, b"state-2")}
    pump.finished = {0: 41, 1: 7}
    job.producer.fail_next = 1  # one record batch of four fails; the others land, which changes nothing
    with pytest.raises(KafkaConnectionError):
        await pump.checkpoint()
    assert job.dirty == {b"s1": (0, b"state-1"), b"s2": (1, b"state-2")}
    assert pump.finished == {0: 41, 1: 7}
    job.producer.sent.clear()

    assert await pump.checkpoint() == {0: 41, 1: 7}
    assert job.dirty == {} and pump.finished == {}
    assert pump.checkpointed_offsets([0, 1]) == {0: 41, 1: 7}
    state_log = job.producer.messages(job.table.changelog_topic.get_topic_name())
    progress_log = job.producer.messages(pump.progress.changelog_topic.get_topic_name())
    assert sorted(state_log) == [(0, b"s1", b"state-1"), (1, b"s2", b"state-2")]
    assert sorted(progress_log) == [(0, b"0", b"41"), (1, b"1", b"7")]
    assert await pump.checkpoint() == {}  # nothing new: nothing written
    assert len(job.producer.sent) == 4


async def test_a_failed_produce_rewinds_the_job_to_the_last_checkpoint(app: faust.App) -> None:
    job = Job(app)
    pump = make_pump(app, job)
    completed: list[Any] = []

    async def complete(batch: Any) -> None:
        await batch.acked
        completed.append(batch)

    job.complete = complete  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    ok, failed = SimpleNamespace(acked=loop.create_future()), SimpleNamespace(acked=loop.create_future())
    ok.acked.set_result(None)
    failed.acked.set_exception(KafkaConnectionError("broker gone"))
    pump.inflight.extend([({0: 10}, ok), ({0: 20, 1: 5}, failed)])
    job.dirty = {b"s1": (0, b"changed after the checkpoint")}
    before = REWINDS.labels("pumptest")._value.get()

    assert await pump.drain() is False
    assert completed == [ok]
    assert job.rewound == 1 and job.dirty == {}
    assert pump.finished == {} and not pump.inflight  # the first batch's offset is not checkpointed either
    assert REWINDS.labels("pumptest")._value.get() == before + 1


class HeldProducer(CapturingProducer):
    """Acknowledges nothing until ``release()``: a broker slow to take a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[asyncio.Future[Any], Any]] = []

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        acked = await super().send_batch(batch, topic, partition=partition)
        held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.held.append((held, acked.result()))
        return held

    def release(self) -> None:
        for future, meta in self.held:
            future.set_result(meta)
        self.held.clear()


def writing_beside(app: faust.App) -> tuple[Job, Pump]:
    """A pump whose periodic checkpoint (s1 = state-1, partition 0 up to offset 41) is being written beside its
    loop, by a producer that holds every send until released."""
    job = Job(app)
    job.producer = HeldProducer()
    pump = make_pump(app, job)
    job.dirty = {b"s1": (0, b"state-1")}
    pump.finished = {0: 41}
    pump.writing = asyncio.ensure_future(pump._periodic_checkpoint(pump._stage()))
    return job, pump


async def test_a_periodic_checkpoint_is_taken_at_once_and_the_next_waits_until_it_is_written(app: faust.App) -> None:
    # Taken now (what was done so far), written beside the pump's loop: what is done next is not in it.
    job, pump = writing_beside(app)
    job.dirty = {b"s1": (0, b"state-2")}
    pump.finished = {0: 50}
    second = asyncio.ensure_future(pump.checkpoint())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done()  # the tables must hold the first before the second is taken
    assert [k for _, k, _ in job.producer.messages(pump.progress.changelog_topic.get_topic_name())] == [b"0"]
    job.producer.release()
    for _ in range(20):
        await asyncio.sleep(0)
        job.producer.release()
    assert await second == {0: 50}
    assert pump.writing is None
    state_log = job.producer.messages(job.table.changelog_topic.get_topic_name())
    progress_log = job.producer.messages(pump.progress.changelog_topic.get_topic_name())
    assert state_log == [(0, b"s1", b"state-1"), (0, b"s1", b"state-2")]
    assert progress_log == [(0, b"0", b"41"), (0, b"0", b"50")]
    assert pump.checkpointed_offsets([0]) == {0: 50}


async def test_state_being_written_beside_the_loop_is_read_from_the_job_not_from_the_table(app: faust.App) -> None:
    # While a checkpoint is written beside the loop the table still holds the older row: a job that dropped the
    # entry from memory and reads it again on a miss must get what it staged (unsaved), never the table's row.
    job, pump = writing_beside(app)
    assert job.dirty == {} and job.unsaved(b"s1") == (0, b"state-1")
    job.dirty = {b"s1": (0, b"state-2")}  # changed again meanwhile: the newer entry wins
    assert job.unsaved(b"s1") == (0, b"state-2")
    job.dirty = {}
    for _ in range(20):
        await asyncio.sleep(0)
        job.producer.release()
    await pump._written()
    assert job.unsaved(b"s1") is None  # durable: the table is the truth again
    with event_context(pump.event(0)):
        assert job.table[b"s1"] == b"state-1"


async def test_a_failed_checkpoint_puts_what_it_took_back_into_dirty(app: faust.App) -> None:
    job = Job(app)
    pump = make_pump(app, job)
    job.dirty = {b"s1": (0, b"state-1")}
    job.producer.fail_next = 1
    with pytest.raises(KafkaConnectionError):
        await pump.checkpoint()
    assert job.dirty == {b"s1": (0, b"state-1")} and job.unwritten == {}
    assert job.unsaved(b"s1") == (0, b"state-1")


async def test_a_large_checkpoint_lets_other_work_run_while_it_is_written(app: faust.App) -> None:
    job = Job(app)
    pump = make_pump(app, job)
    rows = 3 * Checkpoint.CHUNK
    job.dirty = {b"s%d" % i: (i % 2, b"state") for i in range(rows)}
    written_at_turn: list[int] = []

    async def other_work() -> None:  # a batch of the pump's loop, say
        written_at_turn.append(len(job.table.data))

    staged = pump._stage()
    commit = asyncio.ensure_future(pump._commit(staged))
    await asyncio.sleep(0)  # the commit starts writing
    await other_work()
    await commit
    assert 0 < written_at_turn[0] < rows  # it ran between two chunks
    assert (
        len(job.table.data) == rows and len(job.producer.messages(job.table.changelog_topic.get_topic_name())) == rows
    )


async def test_what_a_job_sends_ahead_of_a_checkpoint_is_on_the_broker_before_the_checkpoints_rows(
    app: faust.App,
) -> None:
    # A job that holds outputs across batches (the detector's zone partials) hands them to the checkpoint: its
    # offsets must not become durable before they are out, and a checkpoint with nothing else is still written.
    job = Job(app)
    pump = make_pump(app, job)

    def stage(checkpoint: Checkpoint) -> None:
        checkpoint.ahead.add("partials", 0, b"zone", b"held")

    job.stage = stage  # type: ignore[method-assign]
    staged = pump._stage()
    assert staged is not None  # only the held outputs: written all the same
    pump.finished = {0: 7}
    staged = pump._stage()
    assert staged is not None
    await pump._commit(staged)
    topics = [t for t, _, _ in job.producer.sent]
    assert topics.index("partials") < topics.index(pump.progress.changelog_topic.get_topic_name())
    assert staged.checkpoint.ahead_sent


def in_flight(pump: Pump, *offsets: dict[int, int]) -> list[asyncio.Future[Any]]:
    """Batches in flight on ``pump`` (one per ``offsets``), unacknowledged; returns their acks, oldest first."""
    loop = asyncio.get_running_loop()
    for o in offsets:
        pump.inflight.append((o, SimpleNamespace(acked=loop.create_future())))
    return [batch.acked for _, batch in pump.inflight]


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_periodic_checkpoint_holds_the_batches_in_flight_and_is_written_once_the_broker_has_them(
    app: faust.App,
) -> None:
    # Taken without waiting for the batches in flight (the pump reads on), it takes the state they changed and
    # their offsets, so it must not reach the tables before the broker has their outputs.
    job = Job(app)
    pump = make_pump(app, job)
    pump.finished = {0: 9}
    first, second = in_flight(pump, {0: 10}, {0: 20, 1: 5})
    job.dirty = {b"s1": (0, b"state after both batches")}
    pump.writing = asyncio.ensure_future(pump._periodic_checkpoint(pump._stage(in_flight=True), [first, second]))
    await turns()
    first.set_result(None)
    await turns()
    assert job.producer.sent == [] and not pump.writing.done()
    second.set_result(None)
    await pump._written()
    assert pump.checkpointed_offsets([0, 1]) == {0: 20, 1: 5}
    assert job.producer.messages(job.table.changelog_topic.get_topic_name()) == [
        (0, b"s1", b"state after both batches")
    ]


async def test_a_periodic_checkpoint_holding_a_batch_the_broker_refused_is_dropped(app: faust.App) -> None:
    # The loop rewinds on that batch to the checkpoint before: nothing of this one may be in the tables.
    job = Job(app)
    pump = make_pump(app, job)
    pump.finished = {1: 4}  # acknowledged before the checkpoint was taken
    first, second = in_flight(pump, {0: 10}, {0: 20})
    job.dirty = {b"s1": (0, b"state after both batches")}
    pump.writing = asyncio.ensure_future(pump._periodic_checkpoint(pump._stage(in_flight=True), [first, second]))
    await turns()
    first.set_exception(KafkaConnectionError("broker gone"))
    await pump._written()  # at once: the second batch's ack is not waited for
    assert job.producer.sent == [] and pump.checkpointed_offsets([0, 1]) == {}
    assert job.dirty == {b"s1": (0, b"state after both batches")} and job.unwritten == {}
    assert pump.finished == {1: 4}  # back for the next one; the offsets in flight are not taken for finished ones
    assert await pump.drain() is False and job.rewound == 1


async def test_a_rewind_for_a_batch_that_raised_lets_the_checkpoint_waiting_for_the_ones_before_land_first(
    app: faust.App,
) -> None:
    # The batches it holds were fine (a later one raised in the job): once acknowledged, it is the rewind's start.
    job = Job(app)
    pump = make_pump(app, job)
    (ack,) = in_flight(pump, {0: 10})
    job.dirty = {b"s1": (0, b"state after the batch")}
    pump.writing = asyncio.ensure_future(pump._periodic_checkpoint(pump._stage(in_flight=True), [ack]))
    rewind = asyncio.ensure_future(pump._rewind(ValueError("cannot score"), "a batch raised"))
    await turns()
    assert not rewind.done() and job.rewound == 0
    ack.set_result(None)
    await rewind
    assert pump.checkpointed_offsets([0]) == {0: 10} and job.rewound == 1 and not pump.inflight


class Consumer:
    """``getmany`` as aiokafka's: what has arrived, else wait up to ``timeout_ms`` for something to arrive."""

    def __init__(self) -> None:
        self.records: dict[Any, list[Any]] = {}
        self.arrived = asyncio.Event()
        self.waits: list[int] = []

    def deliver(self, partition: int, *offsets: int) -> None:
        self.records.setdefault(partition, []).extend(SimpleNamespace(partition=partition, offset=o) for o in offsets)
        self.arrived.set()

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        if not self.records and timeout_ms:
            self.waits.append(timeout_ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
        records, self.records = self.records, {}
        self.arrived.clear()
        return records


async def test_with_batches_in_flight_a_fetch_returns_what_comes_first_data_or_the_oldest_acknowledgement(
    app: faust.App,
) -> None:
    pump = make_pump(app, Job(app))
    consumer = Consumer()
    pump.consumer = consumer  # type: ignore[assignment]
    long = 60_000  # ms: a test that waited for it would time out
    oldest, _ = in_flight(pump, {0: 10}, {0: 20})

    fetch = asyncio.ensure_future(pump._fetch(long))
    await turns()
    assert not fetch.done()  # nothing fetched, nothing acknowledged: it waits for either
    consumer.deliver(0, 21, 22)
    assert [r.offset for rs in (await fetch).values() for r in rs] == [21, 22]  # data first: not held for the ack

    fetch = asyncio.ensure_future(pump._fetch(long))
    await turns()
    oldest.set_result(None)
    assert await fetch == {}  # the ack first: the loop finishes that batch without waiting for data
    consumer.deliver(0, 23)  # arrived after the waiting fetch was given up: taken by the next one
    assert [r.offset for rs in (await pump._fetch(long)).values() for r in rs] == [23]

    pump.inflight.clear()
    consumer.deliver(1, 5)
    assert list(await pump._fetch(long)) == [1]  # nothing in flight: an ordinary fetch


def reading(sensor: str, zone: str, ts: int) -> bytes:
    return orjson.dumps(
        {"sensor_id": sensor, "zone": zone, "site": "s1", "utility": "water", "ts": ts, "values": {"flow": 1.5}}
    )


async def test_stage_one_sends_partials_before_their_watermark_and_quarantines_the_unusable(app: faust.App) -> None:
    fs = ForecasterSettings()
    folder = ReadingsFolder(app, Settings(), fs, "partials")
    producer = folder.producer = CapturingProducer()  # type: ignore[assignment]
    folder.partition_maps = {"partials": PartitionMap(3), folder.quarantine_name: PartitionMap(2)}
    folder.started()
    t = 1_700_000_000_000
    records = [
        SimpleNamespace(partition=0, offset=100, key=b"a", value=reading("a", "z1", t)),
        SimpleNamespace(partition=1, offset=7, key=b"b", value=reading("b", "z2", t + 5_000)),
        SimpleNamespace(partition=1, offset=8, key=b"c", value=b"{not json"),
        SimpleNamespace(partition=0, offset=101, key=b"d", value=orjson.dumps({"sensor_id": "d", "ts": t})),
        SimpleNamespace(partition=0, offset=102, key=b"a", value=reading("a", "z1", t + 60_000)),
    ]
    read = EVENTS_IN.labels("forecaster", "readings.clean")._value.get()
    batch = await folder.submit(records)
    await folder.complete(batch)
    assert batch.size == 5 and batch.work.partials == 2 and batch.work.bad == 2
    assert EVENTS_IN.labels("forecaster", "readings.clean")._value.get() == read + 5  # its label has no prefix

    per_partition: dict[int, list[dict[str, Any]]] = {}
    for partition, _key, value in producer.messages("partials"):
        per_partition.setdefault(partition, []).append(orjson.loads(value))
    assert sorted(per_partition) == [0, 1, 2]  # every partials partition hears the watermark
    zones = {}
    for partition, messages in per_partition.items():
        assert messages[-1] == {"wm": {"0": t + 60_000, "1": t + 5_000}}
        assert all("zone" in m for m in messages[:-1])
        zones.update({m["zone"]: (partition, m) for m in messages[:-1]})
    assert set(zones) == {"z1", "z2"}
    assert zones["z1"][0] == PartitionMap(3)("z1") and zones["z2"][0] == PartitionMap(3)("z2")
    z1 = zones["z1"][1]
    assert z1["off"] == {"0": 102} and sum(b["n"] for b in z1["b"].values()) == 2

    quarantined = [orjson.loads(v) for _, _, v in producer.messages(folder.quarantine_name)]
    reasons = sorted(q["reasons"][0].split(" (")[0] for q in quarantined)
    assert reasons == ["forecaster: undecodable", "forecaster: unusable reading"]
    assert {q["source"] for q in quarantined} == {"forecaster"}
    assert folder.last_wm == {"0": t + 60_000, "1": t + 5_000}


async def test_a_topic_that_is_not_copartitioned_with_the_tables_stops_the_pump_with_the_reason(
    app: faust.App,
) -> None:
    job = Job(app)
    counts = {"readings": 2, "readings.out": 3}

    async def partitions_for(topic: str) -> set[int]:
        return set(range(counts[topic]))

    async def start() -> str:
        return ""

    job.producer.partitions_for = partitions_for
    job.start = start  # type: ignore[attr-defined]
    config = PumpConfig(
        service="pumptest", topic="readings", progress_table="pumptest-progress", copartitioned=("readings.out",)
    )
    pump = Pump(app, Settings(), job, config, partitions=2)
    await pump.run()  # returns at once: reading would put a key's state on another worker
    assert pump.consumer is None
    assert pump.check(120) == (False, "readings.out has 3 partitions, the tables 2")


class _ValueTable(dict):  # compares by value, as a Faust table (a Mapping) does
    def __init__(self, name: str) -> None:
        super().__init__()
        self.compared = 0
        self.data = {}
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: name)

    def __eq__(self, other: object) -> bool:
        self.compared += 1
        return super().__eq__(other)

    __hash__ = object.__hash__


def test_a_checkpoint_tells_its_tables_apart_by_identity_not_by_their_rows() -> None:
    # Faust tables compare their contents: `table in list` read every row of both tables at each checkpoint, and
    # a table equal to one already staged (two empty tables at start) was never marked persisted
    sensors, progress = _ValueTable("sensors-changelog"), _ValueTable("progress-changelog")
    cp = Checkpoint(None, lambda p: SimpleNamespace(message=SimpleNamespace(partition=p)))  # type: ignore[arg-type]
    for table in (sensors, progress, sensors, progress):
        cp.write(table, {})
    assert len(cp.tables) == 2 and cp.tables[0] is sensors and cp.tables[1] is progress
    assert sensors.compared == 0 and progress.compared == 0


async def test_the_pump_tells_its_job_which_partitions_it_reads(app: faust.App) -> None:
    job = Job(app)
    pump = Pump.around(app, job)
    assert pump.topic == "readings" and pump.progress.partitions == 2
    pump.assigned = {0, 1}
    assert job.local_partitions() == set()  # assigned, but not reading until the tables are recovered
    pump.paused = False
    assert job.local_partitions() == {0, 1} == pump.local_partitions()
    await pump.on_revoked()
    assert job.local_partitions() == set() and job.forgotten == 1


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**12)), max_size=60))
def test_offset_ranges_are_the_first_and_last_offset_of_each_partition(pairs: list[tuple[int, int]]) -> None:
    records = [SimpleNamespace(partition=p, offset=o) for p, o in pairs]
    expected: dict[int, tuple[int, int]] = {}
    for p in {p for p, _ in pairs}:
        offsets = [o for p2, o in pairs if p2 == p]
        expected[p] = (min(offsets), max(offsets))
    assert offset_ranges(records) == expected


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 5), st.lists(st.integers(0, 10**12), max_size=20), max_size=6))
def test_a_fetchs_ranges_are_offset_ranges_of_its_records(offsets: dict[int, list[int]]) -> None:
    # A fetch as aiokafka gives it: per partition, its records in offset order (some partitions with none).
    fetched = {
        TopicPartition("readings", p): [SimpleNamespace(partition=p, offset=o) for o in sorted(set(found))]
        for p, found in offsets.items()
    }
    records = [r for batch in fetched.values() for r in batch]
    assert fetched_ranges(fetched) == offset_ranges(records)


@pytest.mark.parametrize("store", ["rocksdb://", "memory://"])
def test_write_many_stores_what_the_tables_codec_would_and_the_same_bytes_go_to_the_changelog(
    tmp_path: Any, store: str
) -> None:
    # A rocksdb store is handed the changelog's bytes (encoded once); they must be what the table's own codec
    # writes, so that reads and recovery decode the same values. A memory store keeps the values themselves.
    rocks = faust.App("write-many-test", store=store, datadir=str(tmp_path), autodiscover=False)
    table = rocks.Table("sensors", key_type=bytes, default=None, partitions=4)
    rows = {
        2: {b"s-1": {"sensor_id": "s-1", "last_values": {"p": 431.25}, "recent_back": [0, 1000], "q": None}},
        3: {b"s-2": {"sensor_id": "s-2", "last_values": {}, "recent_back": [], "q": 0.97}},
    }
    box = Outbox(None)  # type: ignore[arg-type]
    events = {p: PartitionEvent(table.changelog_topic.get_topic_name(), p) for p in rows}
    assert write_many(table, box, rows, events.__getitem__, orjson.dumps) == 2
    sent = {(topic, p): records for (topic, p), records in box._pending.items()}
    for p, items in rows.items():
        with event_context(events[p]):
            for key, value in items.items():
                assert table.data[key] == value
                if store == "rocksdb://":
                    assert table.data._get(key) == table.data._encode_value(value)
        assert sent[(table.changelog_topic.get_topic_name(), p)] == [
            (key, orjson.dumps(value), ()) for key, value in items.items()
        ]


async def test_done_through_is_what_is_finished_else_what_is_checkpointed(app: faust.App) -> None:
    job = Job(app)
    job.producer = HeldProducer()
    pump = make_pump(app, job)
    assert pump.done_through(0) == -1
    pump.finished = {0: 41}
    assert pump.done_through(0) == 41
    pump.writing = asyncio.ensure_future(pump._periodic_checkpoint(pump._stage()))
    assert pump.finished == {}  # taken into the checkpoint being written
    for _ in range(20):
        await asyncio.sleep(0)
        job.producer.release()
    await pump._written()
    assert pump.done_through(0) == 41  # now from the progress table
