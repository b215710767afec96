"""The Kafka source door's direct route: which mapped readings skip readings.raw, and that the pipeline decides a
mapped reading it is handed (already decoded) exactly as it decides the same reading read from readings.raw."""

from __future__ import annotations

import dataclasses

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest import mappings
from services.ingest.mappings import expand
from services.ingest.payloads import Item
from services.ingest.pipeline import BatchProcessor, Inbound, Outcome
from services.ingest.rules import Rules
from services.ingest.settings import IngestSettings
from services.ingest.sources import caught_up, owned_here
from shared.batching import PartitionMap

SHIPPED = mappings.load()
PARTITIONS = PartitionMap(4)
RECEIVED = 1_769_313_100_000
DEEP_RULES = Rules.load(IngestSettings(max_age_s=0, max_json_depth=5))


def test_readings_of_partitions_read_elsewhere_take_readings_raw() -> None:
    items = [Item(b"{}", f"s{i}", decoded={"sensor_id": f"s{i}"}) for i in range(40)]
    local = frozenset({1, 3})
    mine, others = owned_here([("a.raw", items[:25]), ("b.raw", items[25:])], local, PARTITIONS, RECEIVED)
    assert {m.key.decode() for m in mine} == {i.sensor_id for i in items if PARTITIONS(i.sensor_id) in local}
    assert all(m.partition == PARTITIONS(m.key) and m.source == "kafka" and m.offset == -1 for m in mine)
    assert all(m.received_ms == RECEIVED and m.decoded == {"sensor_id": m.key.decode()} for m in mine)
    assert [t for t, _ in others] == ["a.raw", "b.raw"]  # each with its topic, for the door's headers
    elsewhere = [i.sensor_id for _, group in others for i in group]
    assert elsewhere == [i.sensor_id for i in items if PARTITIONS(i.sensor_id) not in local]
    assert owned_here([("a.raw", items)], frozenset(), PARTITIONS, RECEIVED) == ([], [("a.raw", items)])


def decide(rules: Rules, items: list[Item], direct: bool) -> Outcome:
    processor = BatchProcessor(rules, partition_of=PARTITIONS, load_state=lambda *_: None)
    batch = [
        Inbound(
            i.value,
            i.sensor_id.encode(),
            PARTITIONS(i.sensor_id),
            n,
            RECEIVED,
            "kafka",
            decoded=i.decoded if direct else None,
        )
        for n, i in enumerate(items)
    ]
    return processor.process(batch)


def same_outcome(rules: Rules, items: list[Item], lazy: list[Item] | None = None) -> Outcome:
    """``lazy``: the same readings as the door hands them over when it leaves them unwritten (``value`` None)."""
    via_raw, direct = decide(rules, items, False), decide(rules, items if lazy is None else lazy, True)
    assert [(p, r, b) for p, r, b in direct.clean] == [(p, r, b) for p, r, b in via_raw.clean]
    assert direct.quarantined == via_raw.quarantined
    assert {k: s.to_dict() for k, s in direct.states.items()} == {k: s.to_dict() for k, s in via_raw.states.items()}
    simple = ("duplicates", "reasons", "unknown_metrics", "forward", "verdicts")
    assert {f: getattr(direct, f) for f in simple} == {f: getattr(via_raw, f) for f in simple}
    return direct


number = st.one_of(st.floats(allow_nan=False), st.integers(-(10**6), 10**6))
# Nested lists as a metric's value: a reading deeper than the depth limit (4 below) is too_deep either way.
metric = st.one_of(number, st.none(), st.text(max_size=5), st.recursive(number, lambda c: st.lists(c, max_size=2)))


@settings(max_examples=80, deadline=None)
@given(
    stations=st.lists(st.sampled_from(["Baku", "Quba", "Ganja"]), min_size=1, max_size=8),
    values=st.dictionaries(
        st.sampled_from(["pressure_kpa", "temperature_c", "hourly_flow_m3", "total_flow_m3", "odour", "pressure_psi"]),
        metric,
        max_size=6,
    ),
    seconds=st.lists(st.integers(0, 5), min_size=8, max_size=8),
)
def test_a_mapped_reading_handed_over_is_decided_as_through_readings_raw(stations, values, seconds) -> None:
    """Values in and out of range, of the wrong type, unknown, null; duplicates; nesting beyond the depth limit."""
    rules = DEEP_RULES
    items: list[Item] = []
    lazy: list[Item] = []
    for station, second in zip(stations, seconds, strict=False):
        message = {"timestamp": f"2026-01-25T07:50:0{second}", "location": station, "sensors": values}
        readings, _, _ = expand(SHIPPED["gas-station"], orjson.dumps(message), rules)
        items.extend(readings)  # none when the message itself is too deep (the door quarantines it)
        lazy.extend(expand(SHIPPED["gas-station"], orjson.dumps(message), rules, None, True)[0])
    assert all(i.decoded is not None for i in items)
    assert all(i.value is None for i in lazy)
    same_outcome(rules, items)
    # Left unwritten: the same verdicts, clean readings and quarantine records (their payload written when needed).
    same_outcome(rules, items, lazy)


def test_the_size_limit_holds_for_a_reading_handed_over() -> None:
    rules = Rules.load(IngestSettings(max_age_s=0))
    message = {"timestamp": "2026-01-25T07:50:07", "location": "Baku", "sensors": {"pressure_kpa": 400.0}}
    [item], _, _ = expand(SHIPPED["gas-station"], orjson.dumps(message), rules)
    small = dataclasses.replace(rules, max_line_bytes=len(item.value) - 1)
    out = same_outcome(small, [item])
    assert list(out.reasons) == ["too_large"]


def test_a_partition_the_door_wrote_to_readings_raw_waits_until_the_pump_is_past_it() -> None:
    done = {0: 10, 1: 4}
    written = {0: 10, 1: 7}  # partition 1's fallback readings (offsets up to 7) are not decided yet
    assert caught_up(frozenset({0, 1, 2}), written, lambda p: done.get(p, -1)) == {0, 2}
    done[1] = 7
    assert caught_up(frozenset({0, 1, 2}), written, lambda p: done.get(p, -1)) == {0, 1, 2}
