"""Payload mappings: the shipped formats, timestamps, templates, every error path, config validation, CSV, CLI."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest import mappings, timeformats
from services.ingest.mappings import MappingConfigError, expand, from_mapping
from services.ingest.payloads import PayloadError, TooManyItems, csv_items, written
from services.ingest.rules import Rules
from services.ingest.settings import IngestSettings
from services.ingest.validation import deeper_than, reason_code, validate

ROOT = Path(__file__).resolve().parents[2]
RULES = Rules.load(IngestSettings(max_age_s=0))  # the shipped samples are from the past
SHIPPED = mappings.load()
GAS = {
    "timestamp": "2026-01-25T07:50:07.099780",
    "location": "Sumqayit",
    "sensors": {
        "density_kg_m3": 0.742,
        "pressure_diff_kpa": 12.5,
        "pressure_kpa": 485.3,
        "temperature_c": 25.4,
        "hourly_flow_m3": 12500.0,
        "total_flow_m3": 1500000.0,
    },
}
NOW = int(datetime(2026, 12, 4, tzinfo=UTC).timestamp() * 1000)


def ms(*args: int, tz=UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def mapped(name: str, message, topic: str | None = None, rules: Rules = RULES):
    """The validated readings (or reasons) a message becomes through a shipped mapping."""
    items, reasons, _ = expand(SHIPPED[name], orjson.dumps(message), rules, topic)
    if reasons:
        return reasons
    return [validate(orjson.loads(i.value), NOW, rules, "http") for i in items]


def one(spec: dict, name: str = "m") -> mappings.PayloadMapping:
    return from_mapping({name: spec})[name]


# --- the shipped mappings --------------------------------------------------------------


def test_gas_station_the_message_of_the_issue() -> None:
    [result] = mapped("gas-station", GAS)
    assert result.ok, result.reasons
    r = result.reading
    assert (r.sensor_id, r.site, r.zone, r.utility, r.asset) == (
        "gas-sumqayit",
        "gas-pipeline",
        "Sumqayit",
        "gas",
        "gas_station",
    )
    assert r.ts == ms(2026, 1, 25, 3, 50, 7) + 100  # 07:50:07.0998 in Baku (UTC+4)
    assert r.values == pytest.approx(
        {
            "density": 0.742,
            "pressure_diff": 12.5,
            "pressure": 485.3,
            "temperature": 25.4,
            "flow": 12500.0,
            "volume_total": 1_500_000.0,
        }
    )
    assert r.units["volume_total"] == "m3" and r.units["flow"] == "m3/h"
    assert "unknown_metrics" not in r.extra and r.quality > 0.9


def test_gas_station_with_a_sentinel_is_out_of_range() -> None:
    message = {**GAS, "sensors": {**GAS["sensors"], "pressure_kpa": -99999}}
    [result] = mapped("gas-station", message)
    assert [reason_code(r) for r in result.reasons] == ["out_of_range"]


def test_building_energy_makes_an_energy_and_a_water_reading() -> None:
    msg = {
        "timestamp": "2026-12-03T10:00:00Z",
        "building": "Tower A",
        "floor": 3,
        "electricity_kwh": 12.5,
        "water_l": 340,
    }
    energy, water = mapped("building-energy", msg)
    assert energy.ok and water.ok
    assert (energy.reading.sensor_id, energy.reading.utility, energy.reading.zone) == (
        "tower-a-f3-electricity",
        "energy",
        "tower-a",
    )
    assert energy.reading.values == {"energy": 12.5}
    assert (water.reading.sensor_id, water.reading.utility) == ("tower-a-f3-water", "water")
    assert water.reading.values == pytest.approx({"volume": 0.34})


def test_water_meter_unit_from_a_field_and_the_senders_quality() -> None:
    msg = {"sensor_id": "wm-17", "timestamp": "2026-12-03T10:00:00Z", "value": 2.0, "unit": "L/s", "quality_score": 0.6}
    [result] = mapped("water-meter", msg)
    r = result.reading
    assert r.sensor_id == "wm-17" and r.values == pytest.approx({"flow": 7.2})
    assert r.extra["device_quality"] == 0.6 and r.quality == pytest.approx(0.6)
    bad = mapped("water-meter", {**msg, "unit": "bananas"})[0]
    assert [reason_code(x) for x in bad.reasons] == ["unknown_unit"]


def test_scada_wide_groups_channels_per_asset() -> None:
    row = {"DATETIME": "04/07/16 01", "L_T1": "2.66", "F_PU1": "89.41", "S_PU1": "1", "F_PU3": "0", "S_PU3": "0"}
    row |= {"P_J280": "2.98", "F_V2": "0", "S_V2": "0", "ATT_FLAG": "0"}
    results = mapped("scada-wide", row)
    got = {r.reading.sensor_id: (r.reading.asset, r.reading.values) for r in results}
    assert got.keys() == {"scada-t1", "scada-pu1", "scada-pu3", "scada-v2", "scada-j280"}
    assert got["scada-t1"] == ("reservoir", {"level": 2.66})
    assert got["scada-pu1"][0] == "pump"
    assert got["scada-pu1"][1] == pytest.approx({"flow": 89.41 * 3.6, "status": 1.0})
    assert got["scada-j280"][1] == pytest.approx({"pressure": 2.98 * 9.80665})
    assert all(r.reading.ts == ms(2016, 7, 4, 1) for r in results)


def test_scada_wide_reads_the_real_historian_export() -> None:
    path = Path("/work/shared/datasets/batadal-dev/dataset04.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text() if path.exists() else _SCADA_SAMPLE)))[:3]
    for row in rows:
        results = mapped("scada-wide", row)
        assert len(results) == 7 + 11 + 1 + 12 and all(r.ok for r in results), [r.reasons for r in results]


_SCADA_SAMPLE = (
    "DATETIME,L_T1,L_T2,L_T3,L_T4,L_T5,L_T6,L_T7,F_PU1,S_PU1,F_PU2,S_PU2,F_PU3,S_PU3,F_PU4,S_PU4,F_PU5,S_PU5,F_PU6,"
    "S_PU6,F_PU7,S_PU7,F_PU8,S_PU8,F_PU9,S_PU9,F_PU10,S_PU10,F_PU11,S_PU11,F_V2,S_V2,P_J280,P_J269,P_J300,P_J256,"
    "P_J289,P_J415,P_J302,P_J306,P_J307,P_J317,P_J14,P_J422,ATT_FLAG\n"
    "04/07/16 00,2.44,5.24,3.19,4.1,2.86,5.5,4.39,93.63,1,93.65,1,0,0,0,0,0,0,0,0,49.84,1,35.54,1,0,0,29.87,1,0,0,0,"
    "0,2.98,36.38,28.26,70,28.22,85.87,21.69,82.72,21.58,71.99,39.33,29.64,0\n"
)


def test_every_shipped_mapping_is_documented_and_listed() -> None:
    doc = (ROOT / "docs/ingest.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in SHIPPED:
        assert f"| `{name}` |" in doc and f"| `{name}` |" in readme


# --- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "tz", "expected"),
    [
        ("2026-01-25T07:50:07", "iso", "Asia/Baku", ms(2026, 1, 25, 3, 50, 7)),
        ("2026-01-25T07:50:07+01:00", "iso", "Asia/Baku", ms(2026, 1, 25, 6, 50, 7)),  # its own offset wins
        ("2026-01-25T07:50:07Z", "iso", "UTC", ms(2026, 1, 25, 7, 50, 7)),
        ("2026-07-01 12:00", "iso", "Europe/Berlin", ms(2026, 7, 1, 10)),  # summer time
        ("2026-01-01 12:00", "iso", "Europe/Berlin", ms(2026, 1, 1, 11)),
        ("2026-01-25T07:50:07", "iso", "-03:30", ms(2026, 1, 25, 11, 20, 7)),
        (1_769_327_407, "epoch", "UTC", 1_769_327_407_000),
        (1_769_327_407_123, "epoch", "UTC", 1_769_327_407_123),
        ("1769327407.5", "epoch_s", "UTC", 1_769_327_407_500),
        (1_769_327_407, "epoch_s", "UTC", 1_769_327_407_000),
        (1_769_327_407_123, "epoch_ms", "UTC", 1_769_327_407_123),
        ("1769327407123", "epoch_ms", "UTC", 1_769_327_407_123),
        ("06/01/14 00", "%d/%m/%y %H", "UTC", ms(2014, 1, 6)),
        ("06/01/14 13", "%d/%m/%y %H", "+04:00", ms(2014, 1, 6, 9)),
        ("25.01.2026 07:50", "%d.%m.%Y %H:%M", "Asia/Baku", ms(2026, 1, 25, 3, 50)),
    ],
)
def test_timestamp_formats(value, fmt: str, tz: str, expected: int) -> None:
    assert timeformats.to_epoch_ms(value, fmt, timeformats.zone(tz)) == expected


@pytest.mark.parametrize(
    ("value", "fmt", "why"),
    [
        ("25/01/2026", "iso", "not in format 'iso'"),
        (1_769_327_407, "iso", "expected text"),
        ("soon", "epoch", "not an epoch number"),
        (True, "epoch_s", "boolean"),
        ([1], "epoch_ms", "expected an epoch number"),
        (float("nan"), "epoch", "expected an epoch number"),
        ("2014-01-06", "%d/%m/%y %H", "not in format"),
    ],
)
def test_timestamps_that_do_not_fit_their_format(value, fmt: str, why: str) -> None:
    with pytest.raises(timeformats.TimeFormatError, match=why):
        timeformats.to_epoch_ms(value, fmt, UTC)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "+25:00", "", "../etc/passwd"])
def test_unknown_zones_are_refused(tz: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        timeformats.zone(tz)


def test_a_timestamp_error_names_the_mapping_and_field() -> None:
    assert mapped("gas-station", {**GAS, "timestamp": "25/01/2026 07"}) == [
        "mapping_error: gas-station: timestamp: '25/01/2026 07' is not in format 'iso'"
    ]


# --- templates, topic segments and the error paths -------------------------------------

TOPIC_MAPPING = {
    "ts": {"field": "t", "format": "epoch_ms"},
    "defaults": {"site": "{topic[1]}", "utility": "water", "asset": "pipe"},
    "readings": [{"sensor_id": "{topic[2]|upper}-{id}", "zone": "{topic[-1]|slug}", "values": {"pressure": "p"}}],
}


def test_ids_from_topic_segments_and_fields() -> None:
    mp = one(TOPIC_MAPPING)
    [r] = mp.apply({"t": NOW, "id": 7, "p": 400}, "plant/north/st9/Zone A_1")
    assert (r["sensor_id"], r["site"], r["zone"]) == ("ST9-7", "north", "zone-a-1")


def test_a_mapped_reading_keeps_its_fields_in_order_and_each_message_its_own_values() -> None:
    """The compiled plan starts each reading from a copy of its literal fields: the native JSON keeps the
    order identity, ts, values, units, quality, and no reading shares its dicts with another."""
    mp = one(
        {
            "ts": {"field": "meta.t", "format": "epoch_ms"},
            "defaults": {"site": "{topic[1]}", "utility": "water", "asset": "pipe"},
            "readings": [
                {
                    "sensor_id": "{topic[2]|upper}-{meta.id}-{kind}",
                    "zone": "z1",
                    "values_from": "v",
                    "exclude": ["note"],
                    "values": {"level": "lvl"},
                    "units": {"flow": "{u}"},
                    "quality": "q",
                    "quality_scale": 100,
                }
            ],
        }
    )
    first = {"meta": {"t": NOW, "id": 3}, "kind": "a", "v": {"flow": "2.5", "note": "x"}, "lvl": 1, "u": "L/s", "q": 50}
    second = {**first, "meta": {"t": NOW + 1, "id": 4}, "v": {"flow": 7}}
    [r1] = mp.apply(first, "plant/north/st9")
    [r2] = mp.apply(second, "plant/north/st9")
    assert list(r1) == ["sensor_id", "site", "zone", "utility", "asset", "ts", "values", "units", "quality"]
    assert r1 == {"sensor_id": "ST9-3-a", "site": "north", "zone": "z1", "utility": "water", "asset": "pipe",
                  "ts": NOW, "values": {"flow": 2.5, "level": 1}, "units": {"flow": "L/s"}, "quality": 0.5}  # fmt: skip
    assert (r2["sensor_id"], r2["ts"], r2["values"]) == ("ST9-4-a", NOW + 1, {"flow": 7, "level": 1})
    assert r1["values"] is not r2["values"] and r1["units"] is not r2["units"]


@pytest.mark.parametrize(
    ("message", "topic", "reason"),
    [
        ({"t": NOW, "id": 7, "p": 1}, None, "mapping_error: m: sensor_id: {topic[2]|upper} needs an MQTT topic"),
        ({"t": NOW, "id": 7, "p": 1}, "plant", "mapping_error: m: sensor_id: the topic has no segment 2"),
        ({"t": NOW, "p": 1}, "a/b/c", "mapping_error: m: sensor_id: missing field id"),
        ({"t": NOW, "id": {"x": 1}, "p": 1}, "a/b/c", "mapping_error: m: sensor_id: {id} is dict, not text"),
        ({"t": NOW, "id": 7}, "a/b/c", "mapping_error: m: values.pressure: missing field p"),
        ({"id": 7, "p": 1}, "a/b/c", "mapping_error: m: t: missing field t"),
        ([{"t": NOW}], "a/b/c", "mapping_error: m: message: expected a JSON object, got list"),
    ],
)
def test_mapping_errors_name_the_mapping_and_the_field(message, topic, reason: str) -> None:
    items, reasons, decoded = expand(one(TOPIC_MAPPING), orjson.dumps(message), RULES, topic)
    assert decoded == message and items == [] and len(reasons) == 1 and reasons[0].startswith(reason)
    assert reason_code(reasons[0]) == "mapping_error"


def test_values_from_must_be_an_object_and_quality_a_number() -> None:
    mp = one(
        {
            "ts": {"field": "t", "format": "epoch_ms"},
            "readings": [{"sensor_id": "s", "values_from": "a.b", "quality": "q", "quality_scale": 100}],
        }
    )
    assert mp.apply({"t": NOW, "a": {"b": {"flow": "3.5", "x": ""}}, "q": "50"})[0]["values"] == {
        "flow": 3.5,
        "x": None,  # an empty cell is a missing value
    }
    assert mp.apply({"t": NOW, "a": {"b": {"flow": 1}}, "q": 50})[0]["quality"] == 0.5
    with pytest.raises(mappings.MappingError, match=r"m: a.b: expected an object of metrics, got list"):
        mp.apply({"t": NOW, "a": {"b": [1]}, "q": 1})
    with pytest.raises(mappings.MappingError, match=r"m: values_from: missing field a"):
        mp.apply({"t": NOW, "q": 1})
    with pytest.raises(mappings.MappingError, match=r"m: q: quality must be a number, got str"):
        mp.apply({"t": NOW, "a": {"b": {}}, "q": "good"})


def test_numbers_as_text_are_read_and_other_text_is_refused_by_validation() -> None:
    mp = one({"ts": {"field": "t", "format": "epoch_ms"}, "defaults": {"site": "s", "zone": "z", "utility": "gas",
              "asset": "a"}, "readings": [{"sensor_id": "s", "values_from": "v"}]})  # fmt: skip
    items, _, _ = expand(mp, orjson.dumps({"t": NOW - 10, "v": {"pressure_kpa": "nan", "flow_m3h": "12"}}), RULES)
    result = validate(orjson.loads(items[0].value), NOW, RULES)
    assert [reason_code(r) for r in result.reasons] == ["non_finite"]


def test_the_decode_limits_apply_before_the_mapping() -> None:
    mp = SHIPPED["gas-station"]
    tight = Rules.load(IngestSettings(max_line_bytes=100, max_json_depth=4))
    assert reason_code(expand(mp, orjson.dumps(GAS), tight)[1][0]) == "too_large"
    deep = {**GAS, "x": [[[[[1]]]]]}
    assert reason_code(expand(mp, orjson.dumps(deep), Rules.load(IngestSettings(max_json_depth=4)))[1][0]) == "too_deep"
    assert reason_code(expand(mp, b"{not json", RULES)[1][0]) == "malformed_json"
    assert reason_code(expand(mp, b'{"a": "\\ud800"}', RULES)[1][0]) == "lone_surrogate"


# --- a reading left unwritten (the Kafka source door's direct route) -----------------------

#: Every kind of value a reading takes from a message: templates with each filter, literal text that JSON escapes,
#: values_from and a metric from a nested field, units from a field, a quality.
WIDE = {
    "ts": {"field": "t", "format": "epoch_ms"},
    "defaults": {"site": "sïte-\u0001{a|upper}", "utility": "water", "asset": "{b|lower}"},
    "readings": [
        {"sensor_id": "x-{a|slug}-{a}-{n}", "zone": "{deep.z}", "values_from": "m", "values": {"p": "deep.v"},
         "units": {"p": "{u}"}, "quality": "deep.q", "quality_scale": 3},
        {"sensor_id": "{n}{n}{b}", "values_from": "deep.m"},
    ],
}  # fmt: skip
# Raw JSON as a sender may write it, as short as it gets: numbers written longer by orjson (1e5 -> 100000.0), text
# that a case filter lengthens (ΐ -> Ϊ́, ß -> SS, İ -> i̇), control characters, empty text.
NUMBER_TOKENS = [
    "0",
    "-0",
    "7",
    "1e5",
    "1e9",
    "1e15",
    "9e15",
    "1E300",
    "5e-324",
    "-1e-7",
    "0.5",
    "NaN",
    "18446744073709551616",
]
TEXT_TOKENS = ['""', '"ΐ"', '"ß"', '"İ"', '"\\u0001"', '"\\u0390x"', '"1e5"', '"1"', '" 2 "', '"nan"', '"A b_C"']
token = st.sampled_from(NUMBER_TOKENS + TEXT_TOKENS)
member = st.one_of(token, token.map(lambda t: f"[{t},[{t}]]"))
members = st.dictionaries(st.sampled_from(["pressure_kpa", "flow_m3h", "ΐ", "x"]), member, max_size=4).map(
    lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"
)


@settings(max_examples=300, deadline=None)
@given(
    a=st.sampled_from([*TEXT_TOKENS, "1e5", "5e-324", "0"]),
    b=st.sampled_from(TEXT_TOKENS),
    n=st.sampled_from(NUMBER_TOKENS[:11]),
    z=st.sampled_from(TEXT_TOKENS),
    v=member,
    q=st.sampled_from(["0", "1", "0.5", "3e-300"]),
    m=members,
    deep_m=members,
    u=st.sampled_from(TEXT_TOKENS),
)
def test_a_readings_json_is_within_the_mappings_bound(a, b, n, z, v, q, m, deep_m, u) -> None:
    """What lets the door leave a reading unwritten: its JSON within ``fixed + per_byte * message bytes`` and no
    deeper than the message's limit, for messages written as tightly as JSON allows."""
    mp = one(WIDE)
    fixed, per_byte = mp._bound  # type: ignore[misc]
    raw = (
        f'{{"t":{NOW},"a":{a},"b":{b},"n":{n},"u":{u},"deep":{{"z":{z},"v":{v},"q":{q},"m":{deep_m}}},"m":{m}}}'
    ).encode()
    for depth in (3, 4, 5):
        rules = Rules.load(IngestSettings(max_age_s=0, max_json_depth=depth))
        items, reasons, _ = expand(mp, raw, rules)
        if reasons:  # a template of a nested field, or too deep for this limit: nothing to bound
            continue
        for item in items:
            assert item.value is not None and len(item.value) <= fixed + per_byte * len(raw)
            assert not deeper_than(item.decoded, depth)


def test_lazy_readings_are_those_known_within_the_limits_and_written_as_before() -> None:
    raw = orjson.dumps(GAS)
    eager, _, _ = expand(SHIPPED["gas-station"], raw, RULES)
    lazy, _, _ = expand(SHIPPED["gas-station"], raw, RULES, None, True)
    assert [i.value for i in lazy] == [None]
    assert [i.value for i in written(lazy)] == [i.value for i in eager]
    assert [(i.sensor_id, i.decoded) for i in lazy] == [(i.sensor_id, i.decoded) for i in eager]
    # Over the limit by the bound (not by its JSON): written, so the door checks its size as before.
    fixed, per_byte = SHIPPED["gas-station"]._bound  # type: ignore[misc]
    tight = Rules.load(IngestSettings(max_age_s=0, max_line_bytes=fixed + per_byte * len(raw) - 1))
    assert [i.value for i in expand(SHIPPED["gas-station"], raw, tight, None, True)[0]] == [i.value for i in eager]
    # A ts orjson cannot write (an epoch far beyond 64 bits): written, so expand fails as it always did.
    epoch = one({"ts": {"field": "t", "format": "epoch_ms"}, "defaults": {"site": "s", "zone": "z",
                 "utility": "gas", "asset": "a"}, "readings": [{"sensor_id": "s", "values_from": "v"}]})  # fmt: skip
    with pytest.raises(TypeError):
        expand(epoch, b'{"t": 1e300, "v": {"pressure_kpa": 1}}', RULES, None, True)
    # Never lazy: a metric from a top-level field (one level deeper in the reading), channels, topic segments.
    building = {"timestamp": "2026-12-03T10:00:00Z", "building": "A", "floor": 3, "electricity_kwh": 1, "water_l": 2}
    assert all(i.value for i in expand(SHIPPED["building-energy"], orjson.dumps(building), RULES, None, True)[0])
    assert SHIPPED["building-energy"]._bound is None and SHIPPED["scada-wide"]._bound is None
    assert one(TOPIC_MAPPING)._bound is None


def test_one_message_cannot_make_unbounded_readings() -> None:
    mp = SHIPPED["scada-wide"]
    row = {"DATETIME": "04/07/16 01", **{f"L_T{i}": 1.0 for i in range(mappings.MAX_READINGS_PER_MESSAGE + 1)}}
    with pytest.raises(mappings.MappingError, match="readings \\(limit"):
        mp.apply(row)


# --- the mappings file is validated at start --------------------------------------------

GOOD = {"ts": {"field": "t"}, "readings": [{"sensor_id": "s", "values": {"p": "p"}}]}


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({**GOOD, "colour": 1}, "mappings.m.colour: unknown key"),
        ({**GOOD, "ts": "t"}, "mappings.m.ts: expected"),
        ({**GOOD, "ts": {"field": "t", "format": "dd/mm/yy"}}, "mappings.m.ts.format:"),
        ({**GOOD, "ts": {"field": "t", "format": "%Q"}}, "mappings.m.ts.format:"),
        ({**GOOD, "ts": {"field": "t", "tz": "Mars/Olympus"}}, "mappings.m.ts.tz:"),
        ({**GOOD, "ts": {"field": "t", "when": 1}}, "mappings.m.ts.when: unknown key"),
        ({**GOOD, "readings": [{"values": {"p": "p"}}]}, "mappings.m.readings[0].sensor_id: required"),
        ({**GOOD, "readings": [{"sensor_id": "s"}]}, "mappings.m.readings[0]: needs `values`"),
        (
            {**GOOD, "readings": [{"sensor_id": "{a", "values": {"p": "p"}}]},
            "mappings.m.readings[0].sensor_id: unbalanced",
        ),
        (
            {**GOOD, "readings": [{"sensor_id": "{a|shout}", "values": {"p": "p"}}]},
            "readings[0].sensor_id: unknown filter",
        ),
        ({**GOOD, "readings": [{"sensor_id": "{a..b}", "values": {"p": "p"}}]}, "readings[0].sensor_id: 'a..b' is not"),
        ({**GOOD, "readings": [{"sensor_id": "s", "utility": "steam", "values": {"p": "p"}}]}, "readings[0].utility:"),
        (
            {**GOOD, "readings": [{"sensor_id": "s", "values": {"p": "topic[1]"}}]},
            "readings[0].values.p: expected a field",
        ),
        ({**GOOD, "readings": [{"sensor_id": "s", "values": {"p": 3}}]}, "readings[0].values.p: expected a field"),
        ({**GOOD, "readings": [{"sensor_id": "s", "values": {"p": "p"}, "quality_scale": 0}]}, "quality_scale"),
        ({**GOOD, "readings": [{"sensor_id": "s", "values": {"p": "p"}, "exclude": "x"}]}, "readings[0].exclude"),
        ({**GOOD, "readings": "all"}, "mappings.m.readings: expected a list"),
        ({"ts": {"field": "t"}}, "mappings.m: needs `readings`"),
        ({**GOOD, "defaults": {"colour": "red"}}, "mappings.m.defaults.colour: unknown key"),
        ({**GOOD, "mqtt": ["a/#/b"]}, "mappings.m.mqtt: 'a/#/b' is not an MQTT topic filter"),
        ({**GOOD, "mqtt": ["a/b+"]}, "mappings.m.mqtt:"),
        ({**GOOD, "kafka": ["bad topic"]}, "mappings.m.kafka: 'bad topic' is not a Kafka topic"),
        ({**GOOD, "kafka": 3}, "mappings.m.kafka: expected a list"),
        ({**GOOD, "channels": {"pattern": "("}}, "mappings.m.channels.pattern: not a regular expression"),
        ({**GOOD, "channels": {"pattern": "x"}}, "mappings.m.channels.pattern: needs a named group"),
        ({**GOOD, "channels": {"pattern": "(?P<metric>x)", "lookups": {"y": {}}}}, "channels.lookups.y: not a named"),
        ({**GOOD, "channels": {"pattern": "(?P<metric>x)", "reading": {}}}, "channels.reading.sensor_id: required"),
        ("just text", "mappings.m: expected a mapping"),
    ],
)
def test_config_errors_name_the_mapping_and_the_key(spec, where: str) -> None:
    with pytest.raises(MappingConfigError) as err:
        from_mapping({"m": spec})
    assert where in str(err.value)


def test_bad_names_and_routes_claimed_twice_are_refused() -> None:
    with pytest.raises(MappingConfigError, match=r"mappings\.Bad Name:"):
        from_mapping({"Bad Name": GOOD})
    with pytest.raises(MappingConfigError, match=r"mappings.b.kafka: 'x' is already routed to mapping a"):
        from_mapping({"a": {**GOOD, "kafka": ["x"]}, "b": {**GOOD, "kafka": ["x"]}})


def test_a_mappings_file_adds_and_replaces_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mappings.yaml"
    path.write_text(yaml.safe_dump({"mappings": {"mine": GOOD, "gas-station": {**GOOD, "kafka": ["gas.v2"]}}}))
    known = mappings.load(path)
    assert {"mine", "gas-station", "water-meter"} <= set(known) and known["gas-station"].kafka == ("gas.v2",)
    path.write_text("mappings: [1, 2]")
    with pytest.raises(MappingConfigError, match="expected `mappings:`"):
        mappings.load(path)
    path.write_text("mappings: {a: [")
    with pytest.raises(MappingConfigError, match="not valid YAML"):
        mappings.load(path)
    with pytest.raises(MappingConfigError, match="cannot read"):
        mappings.load(tmp_path / "missing.yaml")


# --- CSV -------------------------------------------------------------------------------


def test_csv_rows_become_messages() -> None:
    items = csv_items(b"\xef\xbb\xbfDATETIME,L_T1\n04/07/16 00,2.44\n\n04/07/16 01,2.5,9\n", 10)
    assert orjson.loads(items[0].value) == {"DATETIME": "04/07/16 00", "L_T1": "2.44"}
    assert items[0].reasons is None
    assert reason_code(items[1].reasons[0]) == "malformed_csv"
    with pytest.raises(TooManyItems):
        csv_items(b"a\n1\n2\n3\n", 2)
    for body in (b"", b"a,b\n", b"\xff\xfe", b"a,b\n\n\n"):
        with pytest.raises(PayloadError):
            csv_items(body, 10)


# --- round trips: a format's message -> the same canonical reading as the native one ------


@settings(max_examples=60, deadline=None)
@given(
    station=st.from_regex(r"[A-Z][a-z]{2,12}", fullmatch=True),
    pressure=st.floats(0, 10000),
    dp=st.floats(-1000, 1000),
    temperature=st.floats(-40, 100),
    flow=st.floats(0, 20000),
    density=st.floats(0.1, 1500),
    total=st.floats(0, 1e9),
    seconds=st.integers(0, 6 * 86400),
)
def test_gas_station_round_trip(station, pressure, dp, temperature, flow, density, total, seconds) -> None:
    ts = NOW - 7 * 86400 + seconds * 1000
    local = datetime.fromtimestamp(ts / 1000, tz=timeformats.zone("Asia/Baku")).replace(tzinfo=None)
    message = {
        "timestamp": local.isoformat(),
        "location": station,
        "sensors": {
            "pressure_kpa": pressure,
            "pressure_diff_kpa": dp,
            "temperature_c": temperature,
            "hourly_flow_m3": flow,
            "density_kg_m3": density,
            "total_flow_m3": total,
        },
    }
    native = {
        "sensor_id": f"gas-{station.lower()}",
        "ts": ts,
        "site": "gas-pipeline",
        "zone": station,
        "utility": "gas",
        "asset": "gas_station",
        "values": {"pressure": pressure, "pressure_diff": dp, "temperature": temperature, "flow": flow,
                   "density": density, "volume_total": total},
    }  # fmt: skip
    [via_mapping] = mapped("gas-station", message)
    assert via_mapping.reading == validate(native, NOW, RULES, "http").reading


@settings(max_examples=40, deadline=None)
@given(
    building=st.from_regex(r"[A-Za-z][A-Za-z ]{0,10}[A-Za-z]", fullmatch=True),
    floor=st.integers(-3, 120),
    kwh=st.floats(0, 1e6),
    litres=st.floats(0, 1e6),
)
def test_building_energy_round_trip(building, floor, kwh, litres) -> None:
    ts = NOW - 3_600_000
    message = {"timestamp": datetime.fromtimestamp(ts / 1000, UTC).isoformat(), "building": building, "floor": floor,
               "electricity_kwh": kwh, "water_l": litres}  # fmt: skip
    slug = "-".join(w for w in building.lower().split(" ") if w)
    base = {"ts": ts, "site": "buildings", "zone": slug, "asset": "submeter"}
    energy = {**base, "sensor_id": f"{slug}-f{floor}-electricity", "utility": "energy", "values": {"energy": kwh}}
    water = {**base, "sensor_id": f"{slug}-f{floor}-water", "utility": "water", "values": {"volume": litres},
             "units": {"volume": "L"}}  # fmt: skip
    got = [r.reading for r in mapped("building-energy", message)]
    assert got == [validate(energy, NOW, RULES, "http").reading, validate(water, NOW, RULES, "http").reading]


# --- the commands ----------------------------------------------------------------------


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {"PYTHONPATH": str(ROOT), "FLOWWATCH_INGEST_MAX_AGE_S": "0", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "services.ingest", *args], input=stdin, capture_output=True, env=env, timeout=60
    )


def test_the_mappings_command_lists_them() -> None:
    done = run_cli("mappings")
    assert done.returncode == 0
    assert all(f"| `{name}` |" in done.stdout.decode() for name in SHIPPED)


def test_check_with_a_mapping_gives_one_verdict_per_reading(tmp_path: Path) -> None:
    bad = {**GAS, "sensors": {**GAS["sensors"], "pressure_kpa": -99999}}
    body = b"\n".join(orjson.dumps(m) for m in (GAS, bad, {**GAS, "timestamp": 5}))
    done = run_cli("check", "--mapping", "gas-station", "-", stdin=body)
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1
    assert [(v["message"], v["ok"]) for v in lines] == [(0, True), (1, False), (2, False)]
    assert lines[1]["reasons"][0].startswith("out_of_range: pressure=-99999")
    assert lines[2]["reasons"] == ["mapping_error: gas-station: timestamp: expected text in format 'iso', got int"]
    csv_file = tmp_path / "scada.csv"
    csv_file.write_text(_SCADA_SAMPLE)
    done = run_cli("check", "--mapping", "scada-wide", str(csv_file), "--quiet")
    assert done.returncode == 0 and orjson.loads(done.stderr)["valid"] == 31
    assert run_cli("check", "--mapping", "nope", "-").returncode == 2
    assert run_cli("check", str(csv_file)).returncode == 2  # CSV needs a mapping
