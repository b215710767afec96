"""Hostile inputs for the fuzz suites: hypothesis strategies drawn with a fixed seed, and known killers.

:func:`generate` draws ``n`` examples of a strategy deterministically (hypothesis with a fixed
seed, generation only, no shrinking, no example database), so a run sends the same inputs on
every machine. :func:`killers` is the corpus of inputs known to have stopped services or to
sit on an edge of the decoders: nesting deeper than orjson writes, lone surrogates, invalid
UTF-8, NaN and Infinity, integers beyond 64 bits, wrong types, non-objects, giant strings,
empty messages.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

T0 = 1_767_225_600_000  # 2026-01-01, epoch ms

# JSON-ish values of every shape, including what JSON cannot say (NaN, inf) and what orjson cannot read.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cs", "Co", "Zs"]), max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def encode(value: Any) -> bytes:
    """JSON as a lax writer would send it: NaN/Infinity literals, lone surrogates as escapes."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()


def reading(sensor: str, ts: int, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "sensor_id": sensor,
        "ts": ts,
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "asset": "pipe",
        "values": {"flow": 12.5, "pressure": 3.1},
        "units": {"flow": "m3/h", "pressure": "bar"},
        "source": "kafka",
    }
    r.update(over)
    return r


READING_FIELDS = ["sensor_id", "ts", "site", "zone", "utility", "asset", "values", "units", "source", "extra"]


@st.composite
def mutated_readings(draw: st.DrawFn) -> bytes:
    """A reading with some fields replaced by hostile values (or removed)."""
    r = reading(draw(st.text(min_size=1, max_size=30)), T0 + draw(st.integers(0, 10**9)))
    for field in draw(st.lists(st.sampled_from(READING_FIELDS), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()) and field in r:
            del r[field]
        else:
            r[field] = draw(values)
    if draw(st.booleans()):
        r["values"] = draw(st.dictionaries(st.text(max_size=8), scalars, max_size=6))
    return encode(r)


raw_bytes = st.binary(max_size=400)
json_garbage = values.map(encode)
#: Anything that may arrive on a readings topic.
readings_inputs = st.one_of(mutated_readings(), json_garbage, raw_bytes)


def generate(strategy: st.SearchStrategy[Any], n: int, at: int = 20261204) -> list[Any]:
    """``n`` examples of ``strategy``, the same on every run (hypothesis, seeded, generation only)."""
    out: list[Any] = []
    round_ = 0
    while len(out) < n:

        @hsettings(
            max_examples=n - len(out),
            database=None,
            phases=[Phase.generate],
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @seed(at + round_)
        @given(strategy)
        def draw(example: Any) -> None:
            out.append(example)

        draw()
        round_ += 1
    return out[:n]


def nested(depth: int) -> str:
    """``depth`` arrays inside each other, as JSON text (deeper than any recursive writer goes)."""
    return "[" * depth + "1" + "]" * depth


def with_raw(reading: dict[str, Any], field: str, raw_json: str) -> bytes:
    """``reading`` with ``field`` set to the raw JSON text ``raw_json``."""
    body = encode({**reading, field: "@@RAW@@"})
    return body.replace(b'"@@RAW@@"', raw_json.encode())


def killers() -> list[bytes]:
    """Known killers and edge cases for readings topics (each one message)."""
    ok = reading("fz-killer", T0)
    lone = f'{{"sensor_id": "\\ud800", "ts": {T0}, "site": "s", "zone": "z", "utility": "water", "asset": "pipe", '
    out = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"1",
        b'"reading"',
        b"{",
        b"\xff\xfe\x00",
        b"\x00" * 64,
        (lone + '"values": {"flow": 1.0}}').encode(),
        encode({**ok, "zone": "\udcff"}),
        encode({**ok, "values": {"\ud83d": 1.0}}),
        json.dumps(ok).encode().replace(b"fz-killer", b"fz-\xc3\x28"),
        encode({**ok, "values": {"flow": float("nan")}}),
        encode({**ok, "values": {"flow": float("inf")}}),
        encode({**ok, "values": {"flow": -float("inf")}}),
        encode({**ok, "ts": 2**64}),
        encode({**ok, "ts": -(2**63) - 1}),
        encode({**ok, "values": {"flow": 10**400}}),
        b'{"sensor_id": "fz-k", "ts": 1e400, "values": {"flow": 1e999}}',
        encode({**ok, "ts": 1.5}),
        encode({**ok, "ts": True}),
        encode({**ok, "ts": str(T0)}),
        encode({**ok, "sensor_id": 5}),
        encode({**ok, "sensor_id": ""}),
        encode({**ok, "sensor_id": ["a"]}),
        encode({**ok, "zone": None}),
        encode({**ok, "zone": {"a": 1}}),
        encode({**ok, "site": 3}),
        encode({**ok, "utility": ["water"]}),
        encode({**ok, "values": [1, 2]}),
        encode({**ok, "values": {"flow": "1"}}),
        encode({**ok, "values": {"flow": True}}),
        encode({**ok, "values": {"flow": None}}),
        encode({**ok, "values": {"flow": [1.0]}}),
        encode({**ok, "units": ["m3/h"]}),
        with_raw(ok, "extra", nested(300)),
        with_raw(ok, "extra", nested(1000)),
        with_raw(ok, "extra", nested(2000)),
        with_raw(ok, "values", nested(1500)),
        nested(5000).encode(),
        encode({**ok, "sensor_id": "s" * 100_000}),
        encode({**ok, "zone": "z" * 50_000}),
        encode({**ok, "extra": {"blob": "x" * 500_000}}),
        encode({**ok, "extra": {"ctl": "\x01\x02\x1f" * 40_000}}),
        encode({**ok, "values": {f"m{i}": float(i) for i in range(20_000)}}),
        encode({**ok, "extra": {str(i): i for i in range(30_000)}}),
    ]
    return out


def no_keys(*keys: str) -> Any:
    """Filter: JSON garbage that is not an object holding any of ``keys`` (so it can never be well-formed)."""
    return lambda v: not (isinstance(v, dict) and any(k in v for k in keys))


# --- models events: every one unusable by construction ------------------------------------------------------

MODEL_EVENT = {"name": "detector-pipe", "version": "v1", "alias": "production", "action": "promoted", "ts": T0}
NOT_A_NAME = st.one_of(
    st.sampled_from(
        ["../../etc/passwd", "v1/../v2", "/abs", "a/b", "..", ".v1", "", "v" * 65, "v1\n", "v 1", "\ud800"]
    ),
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)


@st.composite
def bad_model_events(draw: st.DrawFn) -> bytes:
    event = dict(MODEL_EVENT)
    field = draw(st.sampled_from(["name", "version", "alias", "action", "ts"]))
    if draw(st.integers(0, 4)) == 0:
        del event[field]
    elif field == "ts":
        event["ts"] = draw(st.one_of(st.text(max_size=5), st.floats(), st.none(), st.lists(scalars, max_size=2)))
    else:
        event[field] = draw(NOT_A_NAME)
    return encode(event)


models_inputs = st.one_of(bad_model_events(), values.filter(no_keys("name")).map(encode), raw_bytes)


# --- zone partials (forecaster stage 2, detector aggregates): every one unusable by construction ------------


def forecaster_partial(zone: str = "fz-zone") -> dict[str, Any]:
    return {
        "zone": zone,
        "site": "fz-site",
        "u": {"water": 2},
        "units": {"water.flow": "m3/h"},
        "b": {
            "29453760": {
                "n": 2,
                "m": {"water.flow": [2, 3.0, 5.0, 1.0, 2.0]},
                "s": {"s1": {"water.flow": [2, 3.0, 1.0, 2.0]}},
            }
        },
        "wm": {"0": T0},
        "off": {"0": 5},
    }


FORECASTER_BREAKS: list[tuple[str, Any]] = [
    ("zone", ""),
    ("zone", 5),
    ("zone", None),
    ("zone", ["z"]),
    ("zone", "z" * 300),
    ("site", 7),
    ("wm", 5),
    ("wm", {"0": "late"}),
    ("wm", {"p": 1}),
    ("wm", {"0": 1.5}),
    ("off", {"0": None}),
    ("off", []),
    ("u", {"water": "2"}),
    ("u", 3),
    ("units", {"water.flow": 1}),
    ("units", "m3/h"),
    ("b", 5),
    ("b", []),
    ("b", {"x": {"n": 1}}),
    ("b", {"-1": {"n": 1}}),
    ("b", {"1" * 30: {"n": 1}}),
    ("b", {"1": {"n": "2"}}),
    ("b", {"1": 5}),
    ("b", {"1": {"n": 1, "m": {"a": [1, 2]}}}),
    ("b", {"1": {"n": 1, "m": {"a": [0, 1, 1, 1, 1]}}}),
    ("b", {"1": {"n": 1, "m": {"a": [1, "x", 1, 1, 1]}}}),
    ("b", {"1": {"n": 1, "m": []}}),
    ("b", {"1": {"n": 1, "s": {"s1": {"a": [1, 2, 3]}}}}),
    ("b", {"1": {"n": 1, "s": {"s1": 5}}}),
]


@st.composite
def bad_forecaster_partials(draw: st.DrawFn) -> bytes:
    partial = forecaster_partial(draw(st.text(min_size=1, max_size=20)))
    field, value = draw(st.sampled_from(FORECASTER_BREAKS))
    partial[field] = value
    return encode(partial)


forecaster_partials_inputs = st.one_of(
    bad_forecaster_partials(), values.filter(no_keys("zone", "wm")).map(encode), raw_bytes
)

DETECTOR_BREAKS: list[Any] = [
    5,
    [],
    "x",
    None,
    {"x": {"n": 1}},
    {"1" * 30: {"n": 1}},
    {"0": 5},
    {"0": {"n": "1"}},
    {"0": {"ts": 1.5}},
    {"0": {"anomalies": None}},
    {"0": {"m": {"a": [1, 2]}}},
    {"0": {"m": {"a": [0, 1, 1, 1]}}},
    {"0": {"m": {"a": [1, "x", 1, 1]}}},
    {"0": {"m": []}},
    {"0": {"m": {"a": [1, 1e309, 1, 1]}}},
]
detector_partials_inputs = st.one_of(
    st.sampled_from(DETECTOR_BREAKS).map(encode),
    values.filter(lambda v: not isinstance(v, dict) or any(not str(k).lstrip("-").isdigit() for k in v)).map(encode),
    raw_bytes,
)


# --- records of any topic: templates, hostile versions of them, and cheap deterministic mutations ----------


@st.composite
def mutated_records(draw: st.DrawFn, template: dict[str, Any]) -> bytes:
    """``template`` with some fields replaced by hostile values, removed, or added."""
    r = dict(template)
    fields = [*template, "extra"]
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()) and name in r:
            del r[name]
        else:
            r[name] = draw(values)
    return encode(r)


def records_inputs(template: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Anything that may arrive on a topic of ``template``'s records: hostile versions of it, JSON garbage, bytes."""
    return st.one_of(mutated_records(template), mutated_records(template), json_garbage, raw_bytes)


def hostile_values() -> list[str]:
    """Field values (as raw JSON text) that stopped or could stop a consumer or a database write."""
    return [
        "null",
        "true",
        "1.5",
        "-1",
        "0",
        str(2**31),
        str(2**63),
        str(-(2**63) - 1),
        str(2**64),
        "1e308",
        "-1e308",
        "1e400",
        "NaN",
        "Infinity",
        '""',
        '"\\u0000"',
        '"a\\u0000b"',
        '"\\ud800"',
        '"\\udfff"',
        '"\\u00e9"',
        "[]",
        "{}",
        '{"a": {"b": [1, {"c": null}]}}',
        nested(300),
        '"2026-01-01T00:00:00Z"',
        '["firing"]',
    ]


def incompressible_text(n: int) -> str:
    """``n`` CJK characters drawn at random (seeded): 3 bytes each in UTF-8 that no compression shrinks."""
    rng = random.Random(7)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(n))


def big_hostile_values() -> list[str]:
    """Field values too big to send ten thousand times: each goes once into every field."""
    return [
        json.dumps("€" * 2000, ensure_ascii=False),  # 6 KB of UTF-8 in 2,000 characters (compressible)
        json.dumps(incompressible_text(2000), ensure_ascii=False),  # 6 KB no index row can hold (2,704 bytes)
        json.dumps("x" * 10_000),
        json.dumps("\x01\x1f" * 5_000),  # 60 KB once escaped
        nested(1100),
    ]


FRAGMENTS = [
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\\ud800",
    b"NaN",
    b"-Infinity",
    b"[" * 300,
    b'"',
    b"}",
    b"\n",
    b"\xef\xbb\xbf",
]


def mutations(template: dict[str, Any], seeds: list[bytes], n: int, rng: Any) -> list[bytes]:
    """``n`` deterministic mutations: a template field set to a hostile value (raw JSON), or a seed cut,
    bit-flipped or spliced with a fragment that broke parsers; one in twenty is the template as it is."""
    raw_values = hostile_values()
    fields = [*template, "extra"]
    seeds = [s for s in seeds if len(s) <= 2048] or [encode(template)]  # the big killers are sent as they are
    out: list[bytes] = []
    for _ in range(n):
        kind = rng.randrange(20)
        if kind == 0:
            out.append(encode(template))
        elif kind < 10:
            chosen = rng.sample(fields, rng.randint(1, 2))
            body = {k: v for k, v in template.items()}
            for name in chosen:
                body[name] = f"@@{name}@@"
            raw = encode(body)
            for name in chosen:
                raw = raw.replace(f'"@@{name}@@"'.encode(), rng.choice(raw_values).encode())
            out.append(raw)
        else:
            seed_ = rng.choice(seeds)
            at = rng.randrange(len(seed_) + 1)
            if kind < 13:
                out.append(seed_[:at])
            elif kind < 16 and seed_:
                at = min(at, len(seed_) - 1)
                out.append(seed_[:at] + bytes([seed_[at] ^ (1 << rng.randrange(8))]) + seed_[at + 1 :])
            else:
                out.append(seed_[:at] + rng.choice(FRAGMENTS) + seed_[at:])
    return out
