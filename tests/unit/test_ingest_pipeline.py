"""Per-sensor state (duplicates, lateness, intervals, silence) and the batch pipeline's accounting."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from services.ingest.payloads import PayloadError, TooManyItems, split_items
from services.ingest.pipeline import CLEAN, QUARANTINED, BatchProcessor, Inbound, Quarantined
from services.ingest.rules import Rules
from services.ingest.sensors import ACCEPTED, DUPLICATE, LATE, SensorState, silence_transitions
from services.ingest.validation import decode, reason_code
from services.ingest.verdicts import VerdictBoard
from services.ingest.wire import reading_dict
from shared.batching import PartitionMap, kafka_partition
from shared.codec import dumps_record
from shared.records import Reading

NOW = 1_709_510_400_000
LATENESS = 60_000
RULES = Rules.load()


def mk(ts: int, sensor: str = "s1", received: int = NOW) -> Reading:
    return Reading(sensor, ts, "north", "z1", "water", "pipe", {"pressure": 400.0}, received_ms=received)


# --- SensorState.admit -----------------------------------------------------------------------


def test_duplicates_late_and_out_of_order() -> None:
    state = SensorState("s1")
    assert state.admit(mk(NOW), LATENESS, 8) == ACCEPTED
    assert state.admit(mk(NOW), LATENESS, 8) == DUPLICATE
    assert state.admit(mk(NOW + 10_000), LATENESS, 8) == ACCEPTED
    assert state.admit(mk(NOW + 5_000), LATENESS, 8) == ACCEPTED  # out of order, within lateness
    assert state.admit(mk(NOW + 5_000), LATENESS, 8) == DUPLICATE  # ... and remembered
    assert state.admit(mk(NOW + 10_000 - LATENESS - 1), LATENESS, 8) == LATE
    assert (state.count, state.duplicates, state.late) == (3, 2, 1)
    assert state.newest_ts == NOW + 10_000
    assert state.recent == [NOW, NOW + 5_000, NOW + 10_000]


def test_older_than_memory_is_accepted_unverified() -> None:
    state = SensorState("s1")
    for i in range(5):
        state.admit(mk(NOW + i * 1000), LATENESS, 3)
    assert state.recent == [NOW + 2000, NOW + 3000, NOW + 4000]
    assert state.admit(mk(NOW + 500), LATENESS, 3) == ACCEPTED
    assert state.unverified == 1
    assert state.admit(mk(NOW + 3000), LATENESS, 3) == DUPLICATE


def test_interval_is_learned_and_ignores_outages() -> None:
    state = SensorState("s1")
    for i in range(20):
        state.admit(mk(NOW + i * 10_000), LATENESS * 100, 8)
    assert state.interval_ms == pytest.approx(10_000)
    state.admit(mk(NOW + 19 * 10_000 + 3_600_000), LATENESS * 100, 8)  # one hour gap
    assert state.interval_ms == pytest.approx(10_000)


def test_state_round_trips_through_the_table_format() -> None:
    state = SensorState("s1")
    for ts in (NOW, NOW + 2000, NOW + 1000):
        state.admit(mk(ts), LATENESS, 8)
    data = orjson.loads(orjson.dumps(state.to_dict()))
    again = SensorState.from_dict(data)
    assert again == state
    assert again.admit(mk(NOW + 1000), LATENESS, 8) == DUPLICATE


def test_silence_transitions() -> None:
    quiet = SensorState("quiet", count=3, last_seen_ms=NOW - 100_000, interval_ms=10_000)
    busy = SensorState("busy", count=3, last_seen_ms=NOW - 1_000, interval_ms=10_000)
    back = SensorState("back", count=3, last_seen_ms=NOW - 1_000, interval_ms=10_000)
    states = {s.sensor_id: s for s in (quiet, busy, back)}
    went, came = silence_transitions(states, {"back"}, NOW, factor=5, min_ms=30_000)
    assert [s.sensor_id for s in went] == ["quiet"] and [s.sensor_id for s in came] == ["back"]
    # Already announced: nothing new to say.
    assert silence_transitions(states, {"quiet"}, NOW, factor=5, min_ms=30_000) == ([], [])
    # The floor: a sensor reporting every second is not silent after 10 s.
    fast = SensorState("fast", count=3, last_seen_ms=NOW - 10_000, interval_ms=1_000)
    assert not fast.is_silent(NOW, 5, 30_000) and fast.is_silent(NOW + 25_000, 5, 30_000)


# --- the batch ---------------------------------------------------------------------------------

PM = PartitionMap(4)


def raw(payload, partition: int | None = None, offset: int = 0, request: bytes | None = None, **kw) -> Inbound:
    value = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    if partition is None:
        partition = PM(payload["sensor_id"]) if isinstance(payload, dict) and "sensor_id" in payload else 0
    return Inbound(value=value, key=None, partition=partition, offset=offset, received_ms=NOW, request=request, **kw)


def good(sensor: str, ts: int, **changes) -> dict:
    d = {
        "sensor_id": sensor,
        "ts": ts,
        "site": "north",
        "zone": "z1",
        "utility": "water",
        "asset": "pipe",
        "values": {"pressure": 420.0, "flow": 90.0},
    }
    d.update(changes)
    return d


def quarantined_record(q: Quarantined) -> dict:
    return orjson.loads(q.value)


def processor() -> BatchProcessor:
    return BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: None)


def test_a_mixed_batch_is_split_exactly() -> None:
    batch = [
        raw(good("a", NOW - 3000)),
        raw(good("a", NOW - 2000)),
        raw(good("a", NOW - 2000)),  # duplicate
        raw(good("b", NOW - 1000)),
        raw(good("b", NOW - 1000 - 2 * 3_600_000)),  # late against b's newest (lateness 1 h)
        raw(b'{"sensor_id": "c", "ts": '),  # truncated
        raw(good("c", NOW, values={"pressure": 99_999.0})),  # out of range
        raw(
            b'{"sensor_id":"d","ts":1709510399000,"site":"s","zone":"z","utility":"water","asset":"pipe","values":{"pressure":NaN}}'
        ),
        raw(good("e", NOW, values={"pressure": "high"})),
    ]
    out = processor().process(batch)
    assert [r.sensor_id for _, r, _ in out.clean] == ["a", "a", "b"]
    assert out.duplicates == 1
    assert len(out.quarantined) == 5
    assert len(out.clean) + len(out.quarantined) + out.duplicates + len(out.forward) == len(batch)
    assert set(out.reasons) == {"late", "malformed_json", "out_of_range", "non_finite", "not_a_number"}
    truncated = next(
        q for q in map(quarantined_record, out.quarantined) if q["reasons"][0].startswith("malformed_json")
    )
    assert truncated["payload"] == '{"sensor_id": "c", "ts": '  # as received, as text
    assert all(p == PM(r.sensor_id) for p, r, _ in out.clean)  # co-partitioned with the sensor
    assert set(out.states) == {"a", "b"}


def test_unknown_metrics_are_counted_for_the_batch_whether_the_reading_is_written_or_refused() -> None:
    # what feeds the worker's unknown-metrics counter: a clean reading's and a refused one's (strict mode refuses
    # the metric itself, with its own reason, and counts it there instead)
    def counted(proc: BatchProcessor, values: dict) -> tuple[int, int, int]:
        out = proc.process([raw(good("a", NOW, values=values))])
        return len(out.clean), len(out.quarantined), out.unknown_metrics

    assert counted(processor(), {"pressure": 420.0, "flow": 90.0, "gizmo_level": 1.0}) == (1, 0, 1)
    assert counted(processor(), {"pressure": 99_999.0, "gizmo_level": 1.0}) == (0, 1, 1)
    assert counted(processor(), {"pressure": 420.0, "flow": 90.0}) == (1, 0, 0)
    strict = BatchProcessor(
        dataclasses.replace(RULES, strict_unknown=True), partition_of=PM, load_state=lambda sid, msg: None
    )
    assert counted(strict, {"pressure": 420.0, "flow": 90.0, "gizmo_level": 1.0}) == (0, 1, 0)


def test_readings_in_a_foreign_partition_are_forwarded_once() -> None:
    p = PM("a")
    wrong = (p + 1) % 4
    proc = processor()
    out = proc.process([raw(good("a", NOW), partition=wrong)])
    assert out.clean == [] and [(t, s) for t, s, _ in out.forward] == [(p, "a")]
    # Invalid input is quarantined where it arrives: it needs no state.
    assert len(proc.process([raw(good("a", NOW, utility="x"), partition=wrong)]).quarantined) == 1
    # A forwarded copy is admitted wherever it lands (no forwarding loops).
    again = proc.process([raw(good("a", NOW), partition=wrong, forwarded=True)])
    assert len(again.clean) == 1 and again.forward == []


def test_verdicts_for_waiting_requests() -> None:
    proc = processor()
    out = proc.process(
        [
            raw(good("a", NOW), request=b"w:1:0"),
            raw(good("a", NOW), request=b"w:1:1"),
            raw(b"nope", request=b"w:1:2"),
            raw(good("b", NOW)),
        ]
    )
    assert [(item, status) for item, status, _ in out.verdicts] == [
        (b"w:1:0", CLEAN),
        (b"w:1:1", DUPLICATE),
        (b"w:1:2", QUARANTINED),
    ]


def test_state_survives_between_batches_and_reload_from_the_table() -> None:
    proc = processor()
    out = proc.process([raw(good("a", NOW))])
    table = {"a": SensorState.from_dict(out.states["a"].to_dict())}
    fresh = BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: table.get(sid))
    assert fresh.process([raw(good("a", NOW))]).duplicates == 1


# --- partitioning, wire format, payload splitting, verdict board -------------------------------


def test_partitioning_matches_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for sid in ("a", "north-dma1-pipe03", "ü-sensor", "x" * 100):
        key = sid.encode()
        assert kafka_partition(key, 12) == DefaultPartitioner()(key, list(range(12)), list(range(12)))
        assert PartitionMap(12)(sid) == kafka_partition(key, 12)


def test_a_clean_readings_bytes_and_dict_are_the_records() -> None:
    r = Reading("a", NOW, "s", "z", "gas", "pipe", {"pressure": 1.5}, {"pressure": "kPa"}, 0.9, {"k": [1]}, NOW, "mqtt")
    assert orjson.loads(dumps_record(r)) == dataclasses.asdict(r) == reading_dict(r)
    # byte for byte, the fields in the record's order (what readings.clean has always carried)
    assert dumps_record(r) == orjson.dumps(dataclasses.asdict(r)) == orjson.dumps(reading_dict(r))


def test_split_items_object_array_ndjson() -> None:
    assert [i.sensor_id for i in split_items(orjson.dumps(good("a", 1)), 10)] == ["a"]
    items = split_items(orjson.dumps([good("a", 1), 5, {"x": 1}]), 10)
    assert [i.sensor_id for i in items] == ["a", None, None]
    assert orjson.loads(items[1].value) == 5
    nd = b'{"sensor_id":"a"}\n\n{broken\n{"sensor_id":"b"}\n'
    items = split_items(nd, 10)
    assert [i.value for i in items] == [b'{"sensor_id":"a"}', b"{broken", b'{"sensor_id":"b"}']
    assert [i.sensor_id for i in items] == ["a", None, "b"]


def test_split_items_keeps_nan_so_it_is_refused_not_dropped() -> None:
    items = split_items(b'[{"sensor_id":"a","values":{"pressure":NaN}}]', 10)
    assert b"NaN" in items[0].value


@pytest.mark.parametrize("body", [b"", b"   ", b"{bad", b"not json at all", b"{\n  bad\n}"])
def test_split_items_refuses_unreadable_bodies(body) -> None:
    with pytest.raises(PayloadError):
        split_items(body, 10)


def test_split_items_limits_the_count() -> None:
    with pytest.raises(TooManyItems):
        split_items(orjson.dumps([{}] * 11), 10)
    with pytest.raises(TooManyItems):
        split_items(b"{}\n" * 11, 10)


async def test_verdict_board_collects_and_ignores_other_workers() -> None:
    board = VerdictBoard()
    request_id, pending = board.open(2)
    board.resolve(board.item_id(request_id, 0), CLEAN, [])
    board.resolve(b"someoneelse:1:1", QUARANTINED, ["x"])
    board.resolve(b"garbage", QUARANTINED, ["x"])
    assert not pending.done.is_set()
    board.resolve(board.item_id(request_id, 1), QUARANTINED, ["out_of_range: ..."])
    assert pending.done.is_set()
    assert pending.summary() == {
        "accepted": 1,
        "quarantined": 1,
        "duplicates": 0,
        "pending": 0,
        "errors": [{"index": 1, "status": QUARANTINED, "reasons": ["out_of_range: ..."]}],
    }


def test_a_permissive_payload_with_a_huge_integer_is_judged_and_encodable() -> None:
    # NaN sends the payload through the permissive decoder; a 77-bit integer beside it must then not
    # reach the encoders as a Python int (orjson cannot write it), or one message would stop the worker.
    accepted = (
        b'{"sensor_id":"h","ts":%d,"site":"s","zone":"z","utility":"water","asset":"pipe",'
        b'"values":{"pressure":420.0},"note":NaN,"serial":100000000000000000000000}' % (NOW - 1000)
    )
    refused = b'{"v":NaN,"big":100000000000000000000000}'
    out = processor().process([raw(accepted, partition=PM("h")), raw(refused)])
    assert [r.sensor_id for _, r, _ in out.clean] == ["h"]
    assert orjson.loads(out.clean[0][2])["extra"]["serial"] == 1e23
    assert len(out.quarantined) == 1
    quarantined = quarantined_record(out.quarantined[0])
    assert quarantined["payload"]["big"] == 1e23


def test_records_become_what_to_inbound_makes_of_each() -> None:
    """The batch path skips to_inbound's call for records without headers; the Inbound must be the same."""
    from aiokafka.structs import ConsumerRecord

    from services.ingest.worker import to_inbound, to_inbounds

    def record(offset: int, stamp: int | None, headers: tuple[tuple[str, bytes], ...] = ()) -> ConsumerRecord:
        return ConsumerRecord("raw", offset % 3, offset, stamp, 0, b"k%d" % offset, b"{}", None, 2, 2, headers)

    records = [
        record(0, NOW),
        record(1, NOW + 1, (("fw-source", b"http"), ("fw-request", b"r1"))),
        record(2, NOW + 2, (("fw-forwarded", b"1"),)),
        record(3, NOW + 3, (("fw-source", b"bogus"),)),
        record(4, NOW + 4),
    ]
    assert to_inbounds(records) == [to_inbound(r) for r in records]
    # no broker time: the worker's clock, either way
    before = int(time.time() * 1000)
    for got in to_inbounds([record(5, 0), record(6, None), record(7, -1)]):
        assert before <= got.received_ms <= int(time.time() * 1000)


def test_the_inputs_counted_per_door_are_the_sources_of_the_batch() -> None:
    """A fetch without headers is counted as Kafka's without a pass over it; any other is counted message by message."""
    import asyncio

    from aiokafka.structs import ConsumerRecord

    from services.ingest import metrics as m
    from services.ingest.worker import Ingest
    from shared.batching import Outbox

    ingest = Ingest.__new__(Ingest)  # the batch path alone: no Faust app, no broker
    ingest.processor, ingest.dirty, ingest.cache_pending, ingest.board = processor(), {}, {}, VerdictBoard()
    ingest.clean_name, ingest.raw_name, ingest.quarantine_name = "clean", "raw", "quarantine"

    def record(n: int, headers: tuple[tuple[str, bytes], ...] = ()) -> ConsumerRecord:
        value = orjson.dumps(good(f"in{n}", NOW - 1000))
        return ConsumerRecord("raw", PM(f"in{n}"), n, NOW, 0, None, value, None, 0, len(value), headers)

    def counted() -> dict[str, float]:
        return {source: m.INPUTS.labels(source)._value.get() for source in ("kafka", "http", "mqtt")}

    plain = [record(0), record(1), record(2)]
    mixed = [record(3), record(4, (("fw-source", b"http"),)), record(5, (("fw-request", b"r5"),))]
    for records, expected in ((plain, {"kafka": 3}), (mixed, {"kafka": 2, "http": 1}), ([], {})):
        before = counted()
        work = asyncio.run(ingest.decide(records, Outbox(None)))  # type: ignore[arg-type]
        assert len(work[1].clean) == len(records)
        ingest.finish(work, 0.0)
        after = counted()
        assert {source: after[source] - before[source] for source in after if after[source] != before[source]} == (
            expected
        )


@pytest.mark.parametrize("opening", ["[", "{"])
def test_the_batch_path_refuses_what_decode_refuses_as_too_deep(opening: str) -> None:
    """The pipeline decodes the usual message without decode()'s call; nesting past the limit, in arrays or in
    objects, is still quarantined as too_deep with the text kept, and nesting within it (arrays too) is not."""
    depth = RULES.max_json_depth

    def nested(levels: int) -> object:
        value: object = 1
        for _ in range(levels):
            value = [value] if opening == "[" else {"k": value}
        return value

    deep = raw(good("deep", NOW - 1000, firmware=nested(depth)))
    fine = raw(good("fine", NOW - 1000, firmware=nested(depth - 2)))  # the payload object and one level of it
    out = processor().process([deep, fine])

    assert [r.sensor_id for _, r, _ in out.clean] == ["fine"]
    [q] = out.quarantined
    record = quarantined_record(q)
    assert [reason_code(r) for r in record["reasons"]] == ["too_deep"]
    assert record["reasons"][0] == decode(deep.value, RULES.max_line_bytes, depth)[1]  # type: ignore[arg-type]
    assert isinstance(record["payload"], str)  # kept as text, as decode leaves it
