"""Property-based: arbitrary JSON and arbitrary bytes never crash the validator and are all accounted for."""

from __future__ import annotations

import dataclasses
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.payloads import PayloadError, split_items
from services.ingest.pipeline import BatchProcessor, Inbound
from services.ingest.rules import Rules
from services.ingest.validation import REASON_CODES, decode, reason_code, validate
from shared.batching import PartitionMap

NOW = 1_709_510_400_000
RULES = Rules.load()
PM = PartitionMap(3)

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
# Readings that are nearly right, so the property also explores the deep branches.
near_readings = st.fixed_dictionaries(
    {
        "sensor_id": st.sampled_from(["a", "b", ""]) | json_scalars,
        "ts": st.sampled_from([NOW, NOW / 1000, "2024-03-04T00:00:00Z", NOW + 10**9, "x"]) | json_scalars,
        "site": st.just("north") | json_scalars,
        "zone": st.just("z1"),
        "utility": st.sampled_from(["water", "energy", "gas", "Water", "steam"]),
        "asset": st.sampled_from(["pipe", "pump", "meter", "thing"]),
        "values": st.dictionaries(
            st.sampled_from(["pressure", "flow", "ph", "temp", "PH", "battery", ""]) | st.text(max_size=70),
            json_scalars | st.floats(),
            max_size=4,
        )
        | json_values,
    },
    optional={
        "units": st.dictionaries(
            st.sampled_from(["pressure", "flow", "temp"]),
            st.sampled_from(["psi", "bar", "°F", "L/s", "?"]) | json_scalars,
        ),
        "quality": st.floats() | json_scalars,
        "extra": json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_readings))
def test_validate_never_raises_and_always_decides(payload) -> None:
    result = validate(payload, NOW, RULES)
    if result.ok:
        assert result.reasons == []
        r = result.reading
        assert r.values and all(math.isfinite(v) for v in r.values.values())
        assert 0.0 <= r.quality <= 1.0
        orjson.dumps(r)  # every clean reading can be written out
    else:
        assert result.reasons and {reason_code(x) for x in result.reasons} <= set(REASON_CODES)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_decode_never_raises(data: bytes) -> None:
    value, error = decode(data)
    assert (error is None) or (
        value is None and reason_code(error) in {"malformed_json", "invalid_utf8", "lone_surrogate"}
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.binary(max_size=80), near_readings.map(orjson.dumps), json_values.map(orjson.dumps)), max_size=30
    )
)
def test_every_message_of_a_batch_is_accounted_for(messages: list[bytes]) -> None:
    proc = BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: None)
    batch = [
        Inbound(value=m, key=None, partition=i % 3, offset=i, received_ms=NOW, request=b"w:1:%d" % i)
        for i, m in enumerate(messages)
    ]
    out = proc.process(batch)
    assert len(out.clean) + len(out.quarantined) + out.duplicates + len(out.forward) == len(batch)
    forwarded = {m.offset for _, _, m in out.forward}
    # Every message that was decided here has exactly one verdict for its waiting request.
    assert len(out.verdicts) == len(batch) - len(forwarded)
    for q in out.quarantined:
        assert orjson.loads(q.value)["reasons"]


@settings(max_examples=300)
@given(st.binary(max_size=300) | json_values.map(orjson.dumps))
def test_split_items_reads_a_body_or_refuses_it_cleanly(body: bytes) -> None:
    try:
        items = split_items(body, max_items=1000)
    except PayloadError as exc:
        assert str(exc)
    else:
        assert all(isinstance(i.value, bytes) for i in items)
        if not items:
            assert orjson.loads(body) == []  # an empty array: a request with nothing in it


# Spellings of known metrics (plain, unit-suffixed, aliased, twice the same metric) with numbers in and out of range.
SPELLINGS = ["pressure", "pressure_kpa", "pressure_bar", "flow", "flow_lps", "temperature_c", "temperature_f"]
SPELLINGS += ["total_flow_m3", "density_kg_m3", "ph", "Temp", "battery"]
UNITS = st.sampled_from(["psi", "bar", "kPa", "°F", "L/s", "?"]) | json_scalars
metric_values = st.dictionaries(
    st.sampled_from(SPELLINGS),
    st.floats(-1e6, 1e6) | st.integers(-(10**6), 10**6) | st.sampled_from([0.0, -0.0, 1e308, 10**400, math.nan]),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    metric_values,
    st.none() | st.dictionaries(st.sampled_from(["pressure", "pressure_kpa", "flow", "temperature_c", "ph"]), UNITS),
)
def test_a_reading_decides_the_same_whether_its_spellings_were_seen_before(values, units) -> None:
    """Validation memoises what each spelling (and unit) comes to; a spelling seen before takes a shorter path."""
    payload = {"sensor_id": "s", "ts": NOW, "site": "a", "zone": "b", "utility": "water", "asset": "pipe",
               "values": values}  # fmt: skip
    if units is not None:
        payload["units"] = units
    cold = validate(payload, NOW, dataclasses.replace(RULES))  # the same rules with memos of their own, empty
    warm = dataclasses.replace(RULES)
    # the spellings seen first without units, in their own unit each, then as sent
    validate({**payload, "units": None, "values": {k: 1.0 for k in values}}, NOW, warm)
    for _ in range(2):
        again = validate(payload, NOW, warm)
        assert again == cold
        if cold.ok:
            assert orjson.dumps(again.reading.values) == orjson.dumps(cold.reading.values)  # -0.0 stays -0.0
