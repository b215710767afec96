"""The detector's decode: msgspec's checked fast way takes exactly what the checks in Python take, and nothing else.

``decode`` hands whatever msgspec refuses to ``_checked`` (the reasons come from there), so the two can differ only
where msgspec accepts: each accepted message must give the same record, value types and bytes included.
"""

from __future__ import annotations

import dataclasses
import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.detector.worker import _checked, _wire, decode
from shared.records import Reading
from tests import fuzz


def same(raw: bytes, max_id: int = 200) -> None:
    fast, why = decode(raw, max_id)
    slow, slow_why = _checked(raw, max_id)
    assert why == slow_why
    if slow is None:
        assert fast is None
        return
    assert fast is not None
    assert repr(fast) == repr(slow)  # every field, nested values and their types (an int stays an int: 1 is not 1.0)
    assert [type(v) for v in fast.values.values()] == [type(v) for v in slow.values.values()]


def test_the_fast_way_has_the_records_fields_in_order_with_its_defaults() -> None:
    wire = _wire(200).type
    fields = dataclasses.fields(Reading)
    assert list(wire.__struct_fields__) == [f.name for f in fields]
    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default for f in fields
    }
    minimal = b'{"sensor_id":"a","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1}}'
    r = decode(minimal)[0]
    assert r is not None
    assert {k: getattr(r, k) for k in ("units", "quality", "extra", "received_ms", "source", "v")} == {
        k: defaults[k] for k in ("units", "quality", "extra", "received_ms", "source", "v")
    }
    assert r.units is not decode(minimal)[0].units  # a fresh map each, as the record's default_factory gives


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(fuzz.reading("s-1", fuzz.T0)),
        orjson.dumps({**fuzz.reading("s-1", fuzz.T0), "values": {"flow": 3, "p": -0.0, "q": 1e308}}),
        orjson.dumps({**fuzz.reading("s-1", fuzz.T0), "added_later": [1, 2], "extra": {"x": None}, "units": 5}),
        orjson.dumps({**fuzz.reading("é" * 200, fuzz.T0), "site": "😀" * 200}),  # lengths in characters
        orjson.dumps({**fuzz.reading("é" * 201, fuzz.T0)}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "source": "x" * 201}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "source": None}),
        orjson.dumps({**fuzz.reading("", fuzz.T0)}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "ts": 1.0}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "ts": True}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "values": {}}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "values": {"x": True}}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "values": {"x": None}}),
        orjson.dumps({**fuzz.reading("s", fuzz.T0), "values": [1.0]}),
        b'{"sensor_id":"a","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":18446744073709551616}}',
        b'{"sensor_id":"a","ts":18446744073709551615,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1}}',
        b'{"sensor_id":"a","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1e400}}',
        b'{"sensor_id":"a","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":NaN}}',
        b'{"sensor_id":"a","sensor_id":"b","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1}}',
        b'{"sensor_id":"\\ud800","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1}}',
        b'{"sensor_id":"a","ts":1,"site":"s","zone":"z","utility":"u","asset":"p","values":{"x":1}} x',
        b"",
        b"[]",
        b"null",
        b"\xff",
    ],
)
def test_hostile_and_edge_messages_decode_as_the_checks_in_python_decode_them(raw: bytes) -> None:
    same(raw)
    same(raw, max_id=8)


@hsettings(max_examples=1500, deadline=None)
@given(fuzz.readings_inputs)
def test_anything_on_the_topic_decodes_as_the_checks_in_python_decode_it(raw: bytes) -> None:
    same(raw)
    same(raw, max_id=5)


def test_killer_inputs_decode_as_the_checks_in_python_decode_them() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # one holds ~1,000 arrays in each other in ``extra``: both take it, repr recurses
    try:
        for raw in fuzz.killers():
            same(raw)
    finally:
        sys.setrecursionlimit(limit)


def test_a_reading_as_ingest_writes_it_takes_the_fast_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.detector import worker

    written = orjson.dumps(
        Reading(
            "s-1",
            fuzz.T0,
            "si",
            "zo",
            "water",
            "pipe",
            {"flow": 3, "p": 1.5},
            {"flow": "m3/h"},
            0.9,
            {"fw": "1.2"},
            fuzz.T0 + 5,
            "mqtt",
        )
    )
    expected = worker._checked(written, 200)
    monkeypatch.setattr(worker, "_checked", lambda *_: pytest.fail("went the checked way"))
    assert repr(worker.decode(written)) == repr(expected)


# JSON written token by token, so values a JSON writer never makes reach every field: numbers out of a float's range
# or beyond 64 bits, odd spellings, escapes, bad UTF-8, literals that are not JSON, in known and unknown fields.
NUMBER_TEXT = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?\Z"),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["-0", "-0.0", "1E5", "1e-400", "1e400", "4.9e-324", "NaN", "Infinity", "01", "1.", "+1"]),
)
STRING_TEXT = st.one_of(
    st.text(max_size=8).map(lambda t: orjson.dumps(t).decode()),
    st.sampled_from(['"\\ud800"', '"\\u0000"', '"\\ud83d\\ude00"', '"\x01"', '"\udcff"', '"a\\tb"']),
)
ANY_TEXT = st.recursive(
    st.one_of(NUMBER_TEXT, STRING_TEXT, st.sampled_from(["true", "false", "null", "[]", "{}", "[1,]", "tru"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(STRING_TEXT, inner), max_size=3).map(
            lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
        ),
    ),
    max_leaves=6,
)
BASE = {
    "sensor_id": '"a"',
    "ts": "1",
    "site": '"s"',
    "zone": '"z"',
    "utility": '"u"',
    "asset": '"p"',
    "values": '{"x":1}',
}


@st.composite
def token_messages(draw: st.DrawFn) -> bytes:
    fields = list(BASE.items())
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f.name for f in dataclasses.fields(Reading)] + ["added_later"]))
        if name == "values" and draw(st.booleans()):
            pairs = draw(st.lists(st.tuples(STRING_TEXT, NUMBER_TEXT), max_size=3))
            value = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        elif name in ("ts", "quality", "received_ms", "v") and draw(st.booleans()):
            value = draw(NUMBER_TEXT)
        else:
            value = draw(ANY_TEXT)
        if draw(st.booleans()):
            fields = [(k, v) for k, v in fields if k != name]
        fields.append((name, value))
    space = draw(st.sampled_from(["", " ", "\n"]))
    text = (
        "{"
        + ",".join(f'{space}"{k}"{space}:{space}{v}' for k, v in fields)
        + "}"
        + draw(st.sampled_from(["", " ", " x"]))
    )
    return text.encode("utf-8", "surrogatepass")


@hsettings(max_examples=1500, deadline=None)
@given(token_messages(), st.sampled_from([200, 3, 1]))
def test_json_written_token_by_token_decodes_as_the_checks_in_python_decode_it(raw: bytes, max_id: int) -> None:
    same(raw, max_id)
