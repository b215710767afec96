"""Attacker-chosen ids cannot grow state without bound; internal records are checked before they are used.

The detector engine runs here on Faust's memory store with a capturing producer (what goes to
the broker is inspected, as in tests/unit/test_foundation_pump.py); the budgets, label sets and
partial checks are pure.
"""

from __future__ import annotations

import copy

import faust
import orjson
import pytest

from services.detector import aggregates
from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE, DetectorSettings
from services.detector.state import Layout, pack
from services.detector.worker import DetectorEngine
from services.forecaster import partials as fpartials
from services.forecaster.retention import sweep_zones
from services.forecaster.zonestate import ZoneState
from shared.batching import PartitionMap
from shared.codec import dumps
from shared.limits import LabelSet, NewIdBudget
from shared.settings import Settings
from tests import fuzz
from tests.unit.test_foundation_pump import CapturingProducer
from tests.unit.test_foundation_pump_poison import messages


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_source_creates_at_most_its_budget_of_new_ids_a_minute() -> None:
    clock = Clock()
    budget = NewIdBudget(3, max_sources=2, clock=clock)
    assert [budget.allow("mqtt") for _ in range(4)] == [True, True, True, False]
    assert budget.allow("http")  # another source has its own budget
    assert [budget.allow(f"made-up-{i}") for i in range(4)] == [True, True, True, False]  # beyond 2: one shared
    assert len(budget.windows) == 3
    clock.now = 60.0
    assert budget.allow("mqtt")
    assert budget.reason("mqtt").startswith("limited: ")
    assert all(NewIdBudget(0).allow("x") for _ in range(10))


def test_metric_labels_take_plain_ids_only_and_a_bounded_number() -> None:
    labels = LabelSet(2)
    assert labels.admit("zone-1") and labels.admit("zone-1") and labels.admit("z.2")
    assert not labels.admit("zone-3")  # full
    assert not LabelSet(10).admit('z"}\nfake_metric 1')
    assert not LabelSet(10).admit("z" * 65)


@pytest.fixture
def engine() -> DetectorEngine:
    app = faust.App("bounded-test", store="memory://", autodiscover=False)
    settings = Settings(partitions=2)
    ds = DetectorSettings(new_sensors_per_minute=3, memory_sensors=2, compute_in_thread=False, cache_enabled=False)
    scorer = Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE)), packed=False)
    eng = DetectorEngine(app, settings, ds, scorer)
    eng.producer = CapturingProducer()  # type: ignore[assignment]
    eng.partition_maps = {name: PartitionMap(2) for name in eng.names.values()}
    eng.local = frozenset({0, 1})  # what the pump reads here (it tells its job)
    return eng


async def test_readings_of_new_sensors_beyond_the_budget_are_quarantined_with_the_reason(
    engine: DetectorEngine,
) -> None:
    values = [orjson.dumps(fuzz.reading(f"new-{i}", fuzz.T0 + j)) for j in range(2) for i in range(5)]
    sub = await engine.submit(messages(values))
    await engine.complete(sub)
    assert sub.work.readings == 6 and sub.work.quarantined == 4  # 3 new sensors (2 readings each); 2 refused
    quarantine = [orjson.loads(v) for _, _, v in engine.producer.messages(engine.names["quarantine"])]  # type: ignore[union-attr]
    assert sorted({q["sensor_id"] for q in quarantine}) == ["new-3", "new-4"]
    assert {q["reasons"][0] for q in quarantine} == {
        "limited: too many new ids from source 'kafka': more than 3 a minute"
    }
    assert quarantine[0]["payload"]["sensor_id"] in {"new-3", "new-4"}  # the reading, for a person to look at
    again = await engine.submit(messages([orjson.dumps(fuzz.reading("new-0", fuzz.T0 + 5))]))
    assert again.work.readings == 1  # a known sensor is never limited


async def test_memory_keeps_at_most_its_bound_after_a_checkpoint(engine: DetectorEngine) -> None:
    from shared.pump import Checkpoint

    values = [orjson.dumps(fuzz.reading(f"m-{i}", fuzz.T0)) for i in range(3)]

    async def checkpoint() -> None:
        cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
        engine.stage(cp)
        await cp.commit()

    await engine.complete(await engine.submit(messages(values)))
    await checkpoint()
    assert len(engine.memory) == 3  # all three were staged: kept until the checkpoint is durable
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("m-0", fuzz.T0 + 1))])))
    await checkpoint()
    assert list(engine.memory) == ["m-0"]  # all staged states are in the checkpoint; the others are in the table
    assert engine.load_state("m-1", PartitionMap(2)("m-1")) is not None  # read back from the table


async def test_a_checkpoint_taken_with_a_batch_in_flight_holds_the_states_that_batch_changed(
    engine: DetectorEngine,
) -> None:
    # The pump takes a periodic checkpoint with the batches in flight in it (their offsets, written once the broker
    # has them): a sensor only they changed must be in it too, or a restart would go on past its readings with its
    # older state.
    from shared.pump import Checkpoint

    in_flight = await engine.submit(messages([orjson.dumps(fuzz.reading("f-1", fuzz.T0))]))  # not completed
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    engine.stage(cp)
    await cp.commit()
    assert b"f-1" in engine.states.data
    await engine.complete(in_flight)


def partials_sent(engine: DetectorEngine) -> list[tuple[bytes | None, dict]]:
    return [(k, orjson.loads(v)) for _, k, v in engine.producer.messages(engine.names["partials"])]  # type: ignore[union-attr]


async def test_zone_partials_of_batches_close_together_go_out_merged_and_with_every_checkpoint(
    engine: DetectorEngine,
) -> None:
    # Each batch's partials, one message per zone, cost the aggregator (a Faust agent) ~120 µs a message: at small
    # batches as much as the scoring. Held and merged they go out every partials_every_s, and with each checkpoint
    # (whose offsets must not pass readings whose partials are not out).
    from shared.pump import Checkpoint

    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 3600.0})  # however slow the machine
    for j in range(3):
        batch = [orjson.dumps(fuzz.reading(f"p-{i}", fuzz.T0 + j * 1000)) for i in range(2)]
        await engine.complete(await engine.submit(messages(batch, start=2 * j)))
    assert partials_sent(engine) == []  # within partials_every_s: held
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    undo = engine.stage(cp)
    assert undo is not None
    await cp.commit()
    sent = partials_sent(engine)
    assert len({k for k, _ in sent}) == len(sent) >= 1  # one message per zone
    assert sum(p["n"] for _, windows in sent for p in windows.values()) == 6  # every reading, once
    assert engine.held == {}
    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 0.0})
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("p-0", fuzz.T0 + 9000))], start=6)))
    assert len(partials_sent(engine)) == len(sent) + 1  # 0: each batch sends its own, as before


async def test_held_partials_are_held_again_when_their_checkpoint_fails_and_dropped_by_a_rewind(
    engine: DetectorEngine,
) -> None:
    from shared.pump import Checkpoint

    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 3600.0})
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("q-0", fuzz.T0))])))
    held = copy.deepcopy(engine.held)
    dirty = dict(engine.dirty)
    assert held and dirty
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    undo = engine.stage(cp)
    assert engine.held == {} and engine.dirty == {} and undo is not None
    undo()  # the checkpoint did not reach the broker, its partials neither
    assert engine.held == held and engine.dirty == dirty
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    undo = engine.stage(cp)
    assert undo is not None
    cp.ahead_sent = True  # its partials went out, then its rows failed
    undo()
    assert engine.held == {} and engine.dirty == dirty  # held again they would count twice
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("q-0", fuzz.T0 + 1))], start=1)))
    engine.rewind()  # the readings are read again from the checkpoint: their partials are made again
    assert engine.held == {}
    # A settle: its checkpoint fails (held again), then the pump forgets and every partition, kept or handed over,
    # is read again from the last durable checkpoint; kept, the partials would count twice.
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("q-0", fuzz.T0 + 2))], start=2)))
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    undo = engine.stage(cp)
    assert undo is not None
    undo()
    assert engine.held
    engine.forget()
    assert engine.held == {} and engine.memory == {}


async def test_partials_go_out_in_a_batch_then_with_the_checkpoint_each_once_and_as_the_aggregator_takes_them(
    engine: DetectorEngine,
) -> None:
    from shared.pump import Checkpoint

    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 0.0})
    batch = [orjson.dumps(fuzz.reading(f"r-{i}", fuzz.T0)) for i in range(2)]
    await engine.complete(await engine.submit(messages(batch)))  # due at once: in the batch's box
    assert partials_sent(engine) and engine.held == {}
    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 3600.0})
    for j in range(1, 3):
        batch = [orjson.dumps(fuzz.reading(f"r-{i}", fuzz.T0 + j * 1000)) for i in range(2)]
        await engine.complete(await engine.submit(messages(batch, start=2 * j)))
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    engine.stage(cp)
    await cp.commit()
    sent = partials_sent(engine)
    assert sum(p["n"] for _, windows in sent for p in windows.values()) == 6
    assert all(aggregates.problem(windows, key) == "" for key, windows in sent)


async def test_held_partials_go_out_from_the_timer_when_no_batch_comes(engine: DetectorEngine) -> None:
    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 3600.0})
    await engine.complete(await engine.submit(messages([orjson.dumps(fuzz.reading("t-0", fuzz.T0))])))
    assert await engine.send_due_partials() is False and partials_sent(engine) == []  # not due yet
    engine.ds = DetectorSettings(**{**engine.ds.__dict__, "partials_every_s": 0.0})
    assert await engine.send_due_partials() is True
    assert sum(p["n"] for _, windows in partials_sent(engine) for p in windows.values()) == 1
    assert engine.held == {} and await engine.send_due_partials() is False


async def test_states_of_sensors_silent_beyond_the_ttl_are_deleted_from_the_table(engine: DetectorEngine) -> None:
    lay = Layout(2)
    for sid, ts in (("old", fuzz.T0), ("fresh", fuzz.T0 + 10 * 86_400_000)):
        vec = lay.empty(1)[0]
        vec[lay.TS] = ts
        engine.states.data[sid.encode()] = pack(("flow", "pressure"), vec)

    class Producer:  # Faust's producer: the tombstone of a deleted key goes through send_soon
        def __init__(self) -> None:
            self.sent: list[object] = []
            self.flushed = 0

        def send_soon(self, fut: object) -> None:
            self.sent.append(fut)

        async def flush(self) -> None:
            self.flushed += 1

    engine.app.producer = producer = Producer()  # type: ignore[misc]
    now = fuzz.T0 + 10 * 86_400_000
    assert await engine.sweep(now_ms=now) == 1
    assert list(engine.states.data.keys()) == [b"fresh"]
    assert len(producer.sent) == 1 and producer.flushed == 1  # one tombstone, on the broker before the next batch


def zone(name: str, newest: int) -> bytes:
    st = ZoneState(name, 60_000)
    st.watermarks = {"0": newest}
    return dumps(st.to_dict())


def test_silent_zones_expire_from_the_zones_table() -> None:
    app = faust.App("zones-test", store="memory://", autodiscover=False)
    zones = app.Table("zones", default=None, key_type=bytes, value_type=bytes, partitions=2)
    from shared.batching import PartitionEvent
    from shared.streaming import event_context

    for name, newest in (("old", 1_000), ("live", 9_000)):
        with event_context(PartitionEvent("partials", PartitionMap(2)(name))):
            zones[name.encode()] = zone(name, newest)
    zones.data[b"broken"] = b"not a state"
    assert sorted(sweep_zones(zones, "partials", 2, cutoff_ms=5_000)) == ["broken", "old"]
    assert list(zones.data.keys()) == [b"live"]


def test_zone_partials_are_checked_before_they_are_merged() -> None:
    good = fuzz.forecaster_partial()
    assert fpartials.problem(good) == ""
    assert fpartials.problem({"wm": {"0": 5}}) == ""
    for field, value in fuzz.FORECASTER_BREAKS:
        assert fpartials.problem({**good, field: value}) != "", (field, value)
    assert fpartials.problem({"wm": {"²": 1}}) != ""
    assert aggregates.problem({"0": {"n": 1, "anomalies": 0, "ts": 5, "m": {"flow": [1, 2.0, 2.0, 2.0]}}}, b"z") == ""
    for bad in fuzz.DETECTOR_BREAKS:
        assert aggregates.problem(bad, b"z") != "", bad
    assert aggregates.problem({}, b"\xff") != "" and aggregates.problem({}, None) != ""


def merged(messages: list[bytes]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for value in messages:
        for ws, p in orjson.loads(value).items():
            out[ws] = aggregates.merge(out[ws], p) if ws in out else p
    return out


def test_a_zones_partials_too_big_for_one_message_go_in_several_of_whole_windows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Many windows held: whole windows, oldest first, each message under the limit and as the aggregator takes it
    # (a window split in two could be closed between the halves). One window with thousands of metric names, over
    # the limit alone, keeps its counts and the metrics that fit, in name order, and says so.
    windows = {
        str(60_000 * w): {"n": 3, "anomalies": 1, "ts": 60_000 * w + 5, "m": {"flow": [3, 7.5, 2.0, 3.0]}}
        for w in reversed(range(400))
    }
    whole = dumps(windows)
    assert len(whole) > 20_000
    pieces = aggregates.messages(windows, limit=2_000)
    assert len(pieces) > 10 and all(len(v) <= 2_000 for v in pieces)
    assert all(aggregates.problem(orjson.loads(v), b"site/zone/water") == "" for v in pieces)
    starts = [int(ws) for v in pieces for ws in orjson.loads(v)]
    assert starts == sorted(starts) and len(starts) == 400  # each window once, whole, oldest first
    assert merged(pieces) == orjson.loads(whole)
    assert aggregates.messages(windows) == [whole]  # under the real limit: one message, as before
    wide = {"n": 7, "anomalies": 2, "ts": 5, "m": {f"m-{i:05d}-{'x' * 40}": [1, 1.0, 1.0, 1.0] for i in range(3_000)}}
    out = aggregates.messages({"60000": windows["60000"], "0": wide}, limit=20_000)
    assert all(len(v) <= 20_000 for v in out)
    got = merged(out)
    kept = got["0"]
    assert (kept["n"], kept["anomalies"], kept["ts"]) == (7, 2, 5)
    assert 100 < len(kept["m"]) < 3_000 and list(kept["m"]) == sorted(wide["m"])[: len(kept["m"])]
    assert got["60000"] == windows["60000"]
    assert "sent with the first" in caplog.text


async def test_held_partials_over_the_record_limit_go_out_in_pieces_the_broker_takes(engine: DetectorEngine) -> None:
    # Held for a checkpoint, a zone's partials could pass the broker's record limit; one message would be refused on
    # every retry (and the checkpoint with it).
    from shared.batching import MAX_RECORD_BYTES
    from shared.pump import Checkpoint

    engine.held = {
        "s/z/water": {
            str(60_000 * w): {
                "n": 1,
                "anomalies": 0,
                "ts": 60_000 * w,
                "m": {f"m{i}": [1, 1.5, 1.5, 1.5] for i in range(40)},
            }
            for w in range(1_500)
        }
    }
    assert len(dumps(engine.held["s/z/water"])) > MAX_RECORD_BYTES
    cp = Checkpoint(engine.producer, engine.event)  # type: ignore[arg-type]
    engine.stage(cp)
    await cp.commit()
    sent = engine.producer.messages(engine.names["partials"])  # type: ignore[union-attr]
    assert len(sent) >= 3 and all(len(v) <= aggregates.MESSAGE_BYTES for _, _, v in sent)
    assert {k for _, k, _ in sent} == {b"s/z/water"} and len({p for p, _, _ in sent}) == 1  # one zone, one partition
    assert sum(p["n"] for p in merged([v for _, _, v in sent]).values()) == 1_500
    assert engine.held == {}
