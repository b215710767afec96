"""The pump sets a poison message aside and goes on; a restart never replays it into the same crash.

The job here raises on one message (a Python exception), or "dies" on it (a BaseException that
nothing in the pump catches, as a segfault or an OOM kill would end the process mid-batch). The
pump's reading from Kafka is tested on the real stack (tests/integration/test_pump_poison.py);
here the broker is a capturing stand-in and the consumer only records where it is told to seek.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from shared.batching import PartitionMap
from shared.pump import GUARD_KEY, JOB_FAILURES, Pump, PumpConfig, Suspect
from shared.settings import Settings
from tests.unit.test_foundation_pump import Job


class WorkerDied(BaseException):
    """Stands in for a hard crash: escapes every ``except Exception``."""


class PoisonJob(Job):
    """Processes messages; raises on ``b"poison"``, dies on ``b"kill"``."""

    def __init__(self, app: faust.App) -> None:
        super().__init__(app)
        self.done: list[int] = []  # offsets whose batch completed
        self.submitted: list[list[int]] = []

    async def submit(self, records: list[Any]) -> Any:
        self.submitted.append([r.offset for r in records])
        if any(r.value == b"kill" for r in records):
            raise WorkerDied()
        if any(r.value == b"poison" for r in records):
            raise ValueError("cannot score this")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return SimpleNamespace(acked=fut, offsets=[r.offset for r in records])

    async def complete(self, batch: Any) -> None:
        await batch.acked
        self.done.extend(batch.offsets)


class Consumer:
    def __init__(self) -> None:
        self.position: dict[int, int | None] = {}
        self.end: dict[int, int] = {}  # partition -> its log end offset (the next offset to be written)

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.position[tp.partition] = offset

    async def seek_to_beginning(self, tp: Any) -> None:
        self.position[tp.partition] = None

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.end.get(tp.partition, 1 << 40) for tp in tps}


def messages(values: list[bytes], partition: int = 0, start: int = 0) -> list[Any]:
    return [
        SimpleNamespace(partition=partition, offset=start + i, key=b"s%d" % i, value=v) for i, v in enumerate(values)
    ]


def make(app: faust.App, job: Any, guard: bool = True, ahead: int = 1000) -> Pump:
    settings = Settings(pump_retry_backoff_s=0.0, pump_crash_guard=guard, pump_guard_ahead=ahead)
    config = PumpConfig(service="pumptest", topic=settings.topic("readings.clean"), progress_table="poison-progress")
    pump = Pump(app, settings, job, config, partitions=2)
    pump.consumer = Consumer()  # type: ignore[assignment]
    pump.assigned = {0}
    pump.aside.partitions = PartitionMap(2)
    return pump


def restart(pump: Pump, job: Any) -> None:
    """What a new process starts with: the tables (the progress table's guards among them), nothing in memory."""
    pump.inflight.clear()
    pump.finished.clear()
    pump.suspects = {}
    pump.guarded = {}
    pump.ahead = set()
    if pump.renewing is not None:  # died with it: landed or not (the caller lets it land first when it should)
        pump.renewing.cancel()
        pump.renewing = None
    job.rewind()


@pytest.fixture
def app() -> faust.App:
    return faust.App("pump-poison-test", store="memory://", autodiscover=False)


async def test_a_message_that_raises_is_quarantined_and_the_rest_of_its_batch_is_processed(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job)
    batch = messages([b"a", b"b", b"poison", b"d"])
    failures = JOB_FAILURES.labels("pumptest")._value.get()

    assert await pump._process(batch) is False  # raised: rewound to the checkpoint, read again
    assert pump.consumer.position == {0: None}  # type: ignore[union-attr]
    assert pump.suspects == {0: Suspect(0, 3)}
    assert await pump._process(batch) is True  # once more as a batch, then one by one

    assert sorted(job.done) == [0, 1, 3]
    assert job.submitted == [[0, 1, 2, 3], [0, 1, 2, 3], [0], [1], [2], [2], [3]]
    assert pump.suspects == {}
    assert pump.checkpointed_offsets([0]) == {0: 3}
    aside = [orjson.loads(v) for _, _, v in job.producer.messages(pump.aside_topic)]
    assert pump.aside_topic == "readings.quarantine"
    assert len(aside) == 1
    assert aside[0]["payload"] == "poison" and aside[0]["source"] == "pumptest"  # not JSON: kept as text
    assert aside[0]["reasons"] == ["processing failed twice: ValueError: cannot score this"]
    assert aside[0]["sensor_id"] == "s2"
    assert JOB_FAILURES.labels("pumptest")._value.get() == failures + 4


async def test_a_batch_that_fails_once_is_retried_whole(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job)
    flaky = iter([True])
    submit = job.submit

    async def once(records: list[Any]) -> Any:
        if next(flaky, False):
            raise OSError("transient")
        return await submit(records)

    job.submit = once  # type: ignore[method-assign]
    batch = messages([b"a", b"b"])
    assert await pump._process(batch) is False
    assert await pump._process(batch) is True
    assert job.submitted == [[0, 1]] and sorted(job.done) == [0, 1]
    assert job.producer.messages(pump.aside_topic) == []


async def test_after_a_hard_crash_the_guarded_range_goes_alone_and_its_killer_is_set_aside(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job)
    ok = messages([b"a", b"b"])
    assert await pump._process(ok) and await pump.drain()
    await pump.checkpoint()
    batch = messages([b"c", b"kill", b"e"], start=2)

    with pytest.raises(WorkerDied):  # the process dies mid-batch: nothing of it is checkpointed
        await pump._process(batch)
    guard = Suspect.decode(app.tables["poison-progress"].data[GUARD_KEY % 0])
    assert guard == Suspect(0, 1 + 1000, alone=True)  # written ahead for offsets 0-1: it covers this batch too
    pump.consumer.end[0] = 5  # type: ignore[union-attr]  # the log: offsets 0-4

    restart(pump, job)
    await pump._reassign({0})
    assert pump.suspects == {0: Suspect(0, 4, alone=True)}  # read back from the progress table, cut at the log's end
    with pytest.raises(WorkerDied):  # alone, under its own guard: it kills the worker once more
        await pump._process(batch)
    assert job.submitted[-2:] == [[2], [3]]

    restart(pump, job)
    await pump._reassign({0})
    assert pump.suspects[0].died_at == 3
    assert await pump._process(batch[1:]) is True  # the checkpoint was after offset 2
    assert job.submitted[-1] == [4]  # offset 3 is not processed again
    assert sorted(job.done) == [0, 1, 2, 4]
    aside = [orjson.loads(v) for _, _, v in job.producer.messages(pump.aside_topic)]
    assert [a["payload"] for a in aside] == ["kill"]
    assert aside[0]["reasons"] == ["the worker died while processing this message alone"]
    assert pump.checkpointed_offsets([0]) == {0: 4} and pump.suspects == {}

    restart(pump, job)
    await pump._reassign({0})
    assert pump.suspects == {}  # the guard is behind the checkpoint: nothing suspect any more


def guards_written(pump: Pump, job: Any, partition: int = 0) -> list[Suspect | None]:
    changelog = pump.progress.changelog_topic.get_topic_name()
    return [Suspect.decode(v) for p, k, v in job.producer.messages(changelog) if k == GUARD_KEY % partition]


async def test_a_guard_covers_the_batches_within_its_reach_is_renewed_before_it_runs_out_and_a_settle_cuts_it_back(
    app: faust.App,
) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a"] * 3)) is True  # offsets 0-2: guarded through 12
    assert await pump._process(messages([b"a"] * 3, start=3)) is True
    assert guards_written(pump, job) == [Suspect(0, 12, alone=True)]
    # 9-12: within, but less than half of the 10 ahead left: the next guard is written beside this batch
    assert await pump._process(messages([b"a"] * 4, start=9)) is True
    await pump._renewed()
    assert guards_written(pump, job) == [Suspect(0, 12, alone=True), Suspect(9, 22, alone=True)]
    assert pump.guarded == {0: (9, 22)}
    assert await pump._process(messages([b"a"] * 2, start=13)) is True  # beyond the first: within the renewed one
    assert len(guards_written(pump, job)) == 2 and pump.renewing is None
    assert await pump.drain()
    assert sorted(job.done) == [0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14]

    await pump._settle()  # a rebalance or a shutdown: finished, checkpointed, the guard cut back
    assert pump.checkpointed_offsets([0]) == {0: 14}
    assert guards_written(pump, job)[-1] == Suspect(15, 14, alone=True)
    pump.consumer.end[0] = 30  # type: ignore[union-attr]  # more was written meanwhile
    await pump._reassign({0})
    assert pump.suspects == {}  # nothing taken for a crash: the next batch goes as a batch
    assert await pump._process(messages([b"a"] * 2, start=15)) is True
    assert job.submitted[-1] == [15, 16]


async def test_while_batches_flow_only_the_first_waits_for_a_guard(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    waited: list[int] = []
    guard_ahead = pump._guard_ahead

    async def counted(ranges: Any) -> None:
        waited.append(min(first for first, _ in ranges.values()))
        await guard_ahead(ranges)

    pump._guard_ahead = counted  # type: ignore[method-assign]
    for start in range(0, 60, 3):
        assert await pump._process(messages([b"a"] * 3, start=start)) is True
        for _ in range(20):  # the broker's acknowledgements arrive between two fetches
            await asyncio.sleep(0)
    assert waited == [0]
    assert len(guards_written(pump, job)) > 5 and pump.guarded[0][1] >= 59 + 5
    assert await pump.drain() and sorted(job.done) == list(range(60))


async def test_a_renewal_of_the_guards_that_fails_leaves_the_current_ones_and_the_next_batch_guards_anew(
    app: faust.App,
) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a"] * 3)) is True  # guarded 0-12
    job.producer.fail_next = 1  # the renewal's write
    assert await pump._process(messages([b"a"] * 4, start=9)) is True
    await pump._renewed()
    assert pump.guarded == {0: (0, 12)} and pump.ahead == {0}
    assert await pump._process(messages([b"a"] * 2, start=13)) is True  # beyond: a guard of its own, as before
    assert guards_written(pump, job)[-1] == Suspect(13, 24, alone=True) and pump.guarded == {0: (13, 24)}


async def test_a_renewal_covers_every_partition_running_out_not_only_those_of_the_batch_at_hand(
    app: faust.App,
) -> None:
    # A fetch often holds one partition: a guard renewed only with its partition's batches would run out whenever
    # that partition's turn came while another renewal was in flight.
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    pump.assigned = {0, 1}
    assert await pump._process(messages([b"a"] * 3) + messages([b"a"] * 3, partition=1)) is True  # both to 12
    assert await pump._process(messages([b"a"] * 6, start=3)) is True  # partition 0 renews (3-18), not landed yet
    assert await pump._process(messages([b"a"] * 6, partition=1, start=3)) is True  # 1 runs short meanwhile
    await pump._renewed()
    assert guards_written(pump, job, 1) == [Suspect(0, 12, alone=True)]
    assert await pump._process(messages([b"a"], start=9)) is True  # partition 0 only: 1 is renewed beside it
    await pump._renewed()
    assert guards_written(pump, job, 1) == [Suspect(0, 12, alone=True), Suspect(9, 18, alone=True)]
    assert await pump._process(messages([b"a"] * 6, partition=1, start=9)) is True  # 9-14: beyond 12, within 18
    assert len(guards_written(pump, job, 1)) == 2 and len(guards_written(pump, job, 0)) == 2


@pytest.mark.parametrize("renewal_landed", [False, True])
async def test_a_worker_that_dies_while_its_guards_are_renewed_is_found_under_either_guard(
    app: faust.App, renewal_landed: bool
) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a"] * 3)) is True and await pump.drain()  # guarded 0-12
    await pump.checkpoint()
    with pytest.raises(WorkerDied):  # offsets 9-12 start the renewal (9-22), then offset 10 kills the worker
        await pump._process(messages([b"a", b"kill", b"a", b"a"], start=9))
    if renewal_landed:
        await pump._renewed()
    pump.consumer.end[0] = 13  # type: ignore[union-attr]
    restart(pump, job)
    await pump._reassign({0})
    first = 9 if renewal_landed else 0
    assert pump.suspects == {0: Suspect(first, 12, alone=True)}
    with pytest.raises(WorkerDied):  # alone, under its own guard: offset 10 kills it once more
        await pump._process(messages([b"a", b"kill", b"a", b"a"], start=9))
    restart(pump, job)
    await pump._reassign({0})
    assert await pump._process(messages([b"kill", b"a", b"a"], start=10)) is True
    aside = [orjson.loads(v) for _, _, v in job.producer.messages(pump.aside_topic)]
    assert [a["payload"] for a in aside] == ["kill"]
    assert sorted(job.done) == [0, 1, 2, 9, 11, 12]


async def test_a_hard_crash_in_a_batch_under_an_earlier_guard_is_found_and_its_killer_set_aside(
    app: faust.App,
) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a", b"b"])) and await pump.drain()  # guarded 0-11, not checkpointed
    with pytest.raises(WorkerDied):  # no guard of its own: the one written for 0-1 covers it
        await pump._process(messages([b"c", b"kill"], start=2))
    assert len(guards_written(pump, job)) == 1
    pump.consumer.end[0] = 6  # type: ignore[union-attr]  # offsets 0-5 in the log at the restart

    log = messages([b"a", b"b", b"c", b"kill", b"e", b"f"])
    restart(pump, job)
    await pump._reassign({0})
    assert pump.suspects == {0: Suspect(0, 5, alone=True)}  # the whole guard, as far as the log reached
    with pytest.raises(WorkerDied):  # alone: the killer kills once more, under its own guard
        await pump._process(log)
    restart(pump, job)
    await pump._reassign({0})
    assert pump.suspects[0].died_at == 3
    assert await pump._process(log[3:]) is True
    assert [a["payload"] for a in map(orjson.loads, (v for _, _, v in job.producer.messages(pump.aside_topic)))] == [
        "kill"
    ]
    assert pump.checkpointed_offsets([0]) == {0: 5} and pump.suspects == {}
    assert await pump._process(messages([b"g"], start=6)) is True  # a batch again, under a guard of its own
    assert job.submitted[-1] == [6] and guards_written(pump, job)[-1] == Suspect(6, 16, alone=True)


async def test_a_rewind_reads_the_range_of_its_own_guard_again_as_batches(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a"] * 3)) is True  # guarded 0-12
    await pump._rewind(KafkaConnectionError("broker gone"))  # no crash: the outputs did not reach the broker
    assert pump.suspects == {} and pump.consumer.position == {0: None}  # type: ignore[union-attr]
    assert await pump._process(messages([b"a"] * 3)) is True
    assert job.submitted == [[0, 1, 2], [0, 1, 2]]  # a batch again, under a guard written afresh
    assert len(guards_written(pump, job)) == 2


async def test_a_guard_whose_write_failed_covers_nothing(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    job.producer.fail_next = 1  # the guard of the first batch does not reach the broker
    assert await pump._process(messages([b"a"])) is False  # rewound, nothing processed
    assert job.submitted == [] and pump.guarded == {}
    # The failed guard is in the table's local store all the same, but this process wrote it: no crash behind it.
    assert pump.suspects == {}
    assert await pump._process(messages([b"a"])) is True  # guarded again before it is processed, as a batch
    assert job.submitted == [[0]]
    assert guards_written(pump, job) == [Suspect(0, 10, alone=True)]  # written ahead again (`at` is None)


async def test_a_settle_cuts_back_a_guard_written_before_partitions_were_added(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job, ahead=10)
    assert await pump._process(messages([b"a", b"b"])) and await pump.drain()  # partition 0 guarded through 11
    await pump._reassign({0, 1})  # one partition more: nothing is rewound, nothing taken for a crash
    assert pump.suspects == {}
    await pump._settle()  # a shutdown before partition 0 had another batch
    assert guards_written(pump, job)[-1] == Suspect(2, 1, alone=True)  # cut back to what is finished
    pump.ahead.clear()  # a new process: it wrote nothing
    pump.guarded.clear()
    pump.consumer.end[0] = 50  # type: ignore[union-attr]
    await pump._reassign({0})
    assert pump.suspects == {}  # a clean restart takes nothing for a crash


async def test_other_topics_dead_letter_with_origin(app: faust.App) -> None:
    job = PoisonJob(app)
    settings = Settings(pump_retry_backoff_s=0.0)
    config = PumpConfig(service="pumptest", topic="zone-partials", progress_table="poison-progress")
    pump = Pump(app, settings, job, config, partitions=2)
    pump.consumer, pump.assigned, pump.aside.partitions = Consumer(), {1}, PartitionMap(1)  # type: ignore[assignment]
    batch = messages([b"poison"], partition=1, start=7)
    assert await pump._process(batch) is False
    assert await pump._process(batch) is True
    (letter,) = [orjson.loads(v) for _, _, v in job.producer.messages("deadletter")]
    assert letter["topic"] == "zone-partials" and (letter["partition"], letter["offset"]) == (1, 7)
    assert letter["key"] == "s0" and letter["payload"] == "poison"


async def test_a_broker_failure_while_isolating_never_sets_a_good_message_aside(app: faust.App) -> None:
    job = PoisonJob(app)
    pump = make(app, job)
    batch = messages([b"a", b"poison", b"c"])
    assert await pump._process(batch) is False
    pump.suspects[0].alone = True  # straight to one message at a time
    job.producer.fail_next = 1  # the guard (and checkpoint) before the first message does not reach the broker
    assert await pump._process(batch) is False  # rewound; read again
    assert await pump._process(batch) is True
    assert sorted(job.done) == [0, 2]
    aside = [orjson.loads(v) for _, _, v in job.producer.messages(pump.aside_topic)]
    assert [a["payload"] for a in aside] == ["poison"]


def test_a_record_the_broker_would_always_refuse_is_a_job_error_not_broker_trouble() -> None:
    # The pump rewinds and retries on KafkaError (a broker that is away); a record over max.message.bytes would
    # be refused on every attempt, so the Outbox raises an error of the job instead: retried, isolated, set aside.
    from aiokafka.errors import KafkaError

    from shared.batching import MAX_RECORD_BYTES, Outbox, RecordTooLarge

    box = Outbox(producer=None)  # type: ignore[arg-type]
    box.add("t", 0, b"k", b"x" * (MAX_RECORD_BYTES - 1))
    with pytest.raises(RecordTooLarge) as refused:
        box.add("t", 0, b"k", b"x" * MAX_RECORD_BYTES)
    assert not isinstance(refused.value, KafkaError)
    assert box.count == 1
