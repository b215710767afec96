"""The pure validation path: timestamps, units, ranges, finite numbers, quality, extra fields."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.ingest.quality import completeness, quality_score, range_score, staleness
from services.ingest.rules import ConfigError, Rules
from services.ingest.settings import IngestSettings
from services.ingest.units import conversion, normalise_unit, to_canonical
from services.ingest.validation import Validated, check, decode, parse_ts, reason_code, validate
from services.simulator.units import CANONICAL_UNITS
from shared.records import Reading

NOW = 1_709_510_400_000  # 2024-03-04T00:00:00Z
RULES = Rules.load()


def reading(**overrides):
    base = {
        "sensor_id": "north-dma1-pipe03",
        "ts": NOW - 1000,
        "site": "north",
        "zone": "north-dma1",
        "utility": "water",
        "asset": "pipe",
        "values": {"pressure": 431.2, "flow": 118.4},
        "units": {"pressure": "kPa", "flow": "m3/h"},
        "quality": 0.97,
    }
    base.update(overrides)
    return base


def codes(result) -> set[str]:
    return {reason_code(r) for r in result.reasons}


# --- units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "unit", "value", "expected"),
    [
        ("kPa", "psi", 100.0, 689.4757),
        ("kPa", "bar", 4.5, 450.0),
        ("kPa", "MPa", 1.2, 1200.0),
        ("C", "°F", 212.0, 100.0),
        ("C", "degF", 32.0, 0.0),
        ("C", "K", 273.15, 0.0),
        ("m3/h", "L/s", 10.0, 36.0),
        ("m3/h", "l/min", 100.0, 6.0),
        ("kWh", "Wh", 1500.0, 1.5),
        ("kWh", "MWh", 2.0, 2000.0),
        ("kW", "MW", 1.0, 1000.0),
        ("kW", "mW", 1000.0, 0.001),
        ("uS/cm", "µS/cm", 500.0, 500.0),
        ("uS/cm", "mS/cm", 1.5, 1500.0),
        ("m3/h", "m³/h", 7.0, 7.0),
    ],
)
def test_units_convert_to_canonical(canonical, unit, value, expected) -> None:
    assert to_canonical(value, canonical, unit) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_unknown_or_foreign_units_are_refused() -> None:
    assert conversion("kPa", "furlong") is None
    assert conversion("kPa", "L/s") is None  # a flow unit is not a pressure unit
    assert conversion("kW", "MA") is None  # megaampere: case decides, and it is not a power unit
    assert normalise_unit(" Deg C ") == "c"


# --- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (NOW, NOW),
        (NOW / 1000, NOW),
        (NOW // 1000, NOW),
        ("2024-03-04T00:00:00Z", NOW),
        ("2024-03-04T00:00:00.000Z", NOW),
        ("2024-03-04T01:00:00+01:00", NOW),
        ("2024-03-04T00:00:00", NOW),  # naive: taken as UTC
    ],
)
def test_timestamps_normalise_to_utc_epoch_ms(raw, expected) -> None:
    assert parse_ts(raw) == expected


@pytest.mark.parametrize(
    "raw", ["yesterday", "2024-13-45T00:00:00Z", "1709510400000", True, None, [], -5, math.nan, 1e20]
)
def test_unusable_timestamps(raw) -> None:
    assert parse_ts(raw) is None


# --- a valid reading ---------------------------------------------------------------------


def test_valid_reading_is_normalised() -> None:
    result = validate(
        reading(
            values={"pressure": 62.5, "Flow": 3.0, "temp": 50.0}, units={"pressure": "psi", "Flow": "L/s", "temp": "°F"}
        ),
        NOW,
        RULES,
        "http",
    )
    assert result.ok, result.reasons
    r = result.reading
    assert r.ts == NOW - 1000 and r.received_ms == NOW and r.source == "http"
    assert r.values["pressure"] == pytest.approx(430.922, abs=1e-3)
    assert r.values["flow"] == pytest.approx(10.8)
    assert r.values["temperature"] == pytest.approx(10.0)
    assert r.units == {"pressure": "kPa", "flow": "m3/h", "temperature": "C"}
    assert 0.5 <= r.quality <= 1.0


def test_every_field_of_a_valid_reading_lands_in_its_place() -> None:
    # validate builds the Reading positionally (the hot path): every field must still be where it belongs.
    result = validate(reading(site="site-a", zone="zone-b", asset="Pump", note="n1"), NOW, RULES, "mqtt")
    assert result.ok, result.reasons
    assert result.reading is not None
    assert result.reading.to_dict() == {
        "sensor_id": "north-dma1-pipe03",
        "ts": NOW - 1000,
        "site": "site-a",
        "zone": "zone-b",
        "utility": "water",
        "asset": "pump",
        "values": {"pressure": 431.2, "flow": 118.4},
        "units": {"pressure": "kPa", "flow": "m3/h"},
        "quality": result.reading.quality,
        "extra": {"note": "n1", "device_quality": 0.97},
        "received_ms": NOW,
        "source": "mqtt",
        "v": 1,
    }
    assert 0.0 < result.reading.quality <= 1.0


def test_unknown_fields_go_to_extra_and_unknown_metrics_are_kept_and_counted() -> None:
    result = validate(
        reading(firmware="2.1", extra={"gateway": "gw-7"}, values={"pressure": 400.0, "flow": 80.0, "battery": 3.7}),
        NOW,
        RULES,
    )
    assert result.ok
    assert result.reading.extra["firmware"] == "2.1" and result.reading.extra["gateway"] == "gw-7"
    assert result.reading.values["battery"] == 3.7
    assert "battery" not in result.reading.units
    assert result.unknown_metrics == 1


@pytest.mark.parametrize(
    "payload",
    [
        reading(),
        reading(values={"pressure": 400.0, "flow": 80.0, "battery": 3.7}),  # clean, one unknown metric
        reading(values={"pressure": 400.0, "flow": None}),  # clean, a missing metric
        reading(ts="yesterday"),
        reading(utility="steam", quality=2),
        [1, 2],
    ],
)
def test_check_is_validate_with_the_usual_reading_alone(payload) -> None:
    checked = check(payload, NOW, RULES)
    if type(checked) is Reading:  # clean without unknown metrics: the reading itself
        assert validate(payload, NOW, RULES) == Validated(checked, [], checked.sensor_id, 0)
    else:
        assert checked == validate(payload, NOW, RULES)
        assert checked.reading is None or checked.unknown_metrics > 0


def test_check_gives_the_usual_clean_reading_as_a_reading() -> None:
    assert type(check(reading(), NOW, RULES)) is Reading
    assert type(check(reading(values={"pressure": 400.0, "battery": 3.7}), NOW, RULES)) is Validated


def test_null_value_is_a_missing_metric_not_a_refusal() -> None:
    result = validate(reading(values={"pressure": 400.0, "flow": None}), NOW, RULES)
    assert result.ok
    assert "flow" not in result.reading.values
    assert result.reading.extra["missing_metrics"] == ["flow"]
    complete = validate(reading(), NOW, RULES).reading.quality
    assert result.reading.quality < complete  # completeness counts


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"ts": NOW + 3_600_000}, "future_ts"),
        ({"ts": NOW - 8 * 24 * 3_600_000}, "too_old"),
        ({"ts": "not a time"}, "invalid_ts"),
        ({"utility": "steam"}, "invalid_utility"),
        ({"site": ""}, "invalid_field"),
        ({"sensor_id": 42}, "invalid_field"),
        ({"values": {}}, "no_values"),
        ({"values": [1, 2]}, "invalid_field"),
        ({"values": {"pressure": "12.5"}}, "not_a_number"),
        ({"values": {"pressure": True}}, "not_a_number"),
        ({"values": {"pressure": "NaN"}}, "non_finite"),
        ({"values": {"pressure": 25000.0}}, "out_of_range"),
        ({"values": {"ph": 15.0}}, "out_of_range"),
        ({"values": {"pressure": 3000.0}, "units": {"pressure": "psi"}}, "out_of_range"),  # 20,684 kPa
        ({"values": {"pressure": 5.0}, "units": {"pressure": "furlong"}}, "unknown_unit"),
        ({"values": {"pressure": 5.0}, "units": "kPa"}, "invalid_units"),
        ({"values": {"temp": 5.0, "temperature": 6.0}}, "duplicate_metric"),
        ({"values": {"pressure": None}}, "no_values"),
        ({"quality": 1.5}, "invalid_quality"),
        ({"quality": 0.1}, "low_quality"),
    ],
)
def test_refusals_name_their_reason(change, code) -> None:
    result = validate(reading(**change), NOW, RULES)
    assert not result.ok
    assert code in codes(result), result.reasons


def test_every_problem_is_reported_not_just_the_first() -> None:
    payload = reading(values={"pressure": "x", "flow": 1e9})
    del payload["zone"]
    result = validate(payload, NOW, RULES)
    assert {"missing_field", "not_a_number", "out_of_range"} <= codes(result)
    assert result.sensor_id == "north-dma1-pipe03"


def test_non_objects_are_refused() -> None:
    for value in (5, "text", [1], None, True):
        assert codes(validate(value, NOW, RULES)) == {"not_an_object"}


def test_bare_nan_and_infinity_are_non_finite_not_malformed() -> None:
    raw = b'{"sensor_id":"a","ts":1709510399000,"site":"s","zone":"z","utility":"gas","asset":"x","values":{"pressure":NaN,"flow":-Infinity}}'
    value, error = decode(raw)
    assert error is None
    result = validate(value, NOW, RULES)
    assert codes(result) == {"non_finite"} and len(result.reasons) == 2


def test_malformed_bytes_decode_to_a_reason() -> None:
    for raw in (b"{bad", b"", b'{"a": NaN', b"\xef\xbb\xbf{}", b'{"a":1}\x00'):
        value, error = decode(raw)
        assert value is None and error.startswith("malformed_json"), (raw, error)
    assert decode(b'{"a":"\xff\xfe"}')[1].startswith("invalid_utf8")
    assert decode(b'"\\ud800"')[1].startswith("lone_surrogate")
    # the permissive decoder (NaN) must not let a lone surrogate through either
    assert decode(b'{"a":"\\udc00","b":NaN}')[1].startswith("lone_surrogate")
    # an integer beyond any float beside NaN (found by the fuzz suite: OverflowError, not ValueError)
    assert decode(b'{"a":NaN,"b":1' + b"0" * 400 + b"}")[1].startswith("malformed_json")


def test_decode_limits_size_and_depth_and_leaves_only_encodable_values() -> None:
    deep = b"[" * 300 + b"]" * 300
    assert decode(deep, max_depth=32)[1].startswith("too_deep")
    assert decode(b'{"v":NaN,"x":' + deep + b"}", max_depth=32)[1].startswith("too_deep")
    assert decode(b"[" * 32 + b"]" * 32, max_depth=32)[1] is None
    # brackets inside strings do not count as nesting
    value, error = decode(orjson.dumps({"a": "[" * 100}), max_depth=2)
    assert error is None and value == {"a": "[" * 100}
    assert decode(b'"' + b"x" * 100 + b'"', max_bytes=50)[1] == "too_large: 102 bytes (limit 50)"


def test_reasons_about_deep_or_huge_values_stay_short() -> None:
    nested: list = []
    for _ in range(900):
        nested = [nested]
    result = validate(reading(utility=nested, ts=nested, quality=nested, values={"pressure": nested}), NOW, RULES)
    assert not result.ok and all(len(r) < 200 for r in result.reasons)


@pytest.mark.parametrize(
    "fields",
    [
        {"firmware": "2.1"},  # one field beyond the contract
        {"firmware": "2.1", "quality": None},  # ... beside a null optional one (counted present, not given)
        {"firmware": "2.1", "units": None, "quality": None, "extra": None},
        {"firmware": None, "units": None},
        {"firmware": "2.1", "extra": {"gateway": "gw-7"}},
        {"firmware": "2.1", "units": "drop"},  # an optional field absent, one beyond the contract in its place
        {"firmware": "2.1", "quality": "drop"},
        {"firmware": "2.1", "units": "drop", "quality": "drop"},
    ],
)
def test_every_field_beyond_the_contract_goes_to_extra(fields) -> None:
    """Validation counts the payload's keys to skip looking at each one; a null or absent field must not hide
    another."""
    payload = {k: v for k, v in reading(**fields).items() if v != "drop"}
    result = validate(payload, NOW, RULES)
    assert result.ok
    extra = result.reading.extra  # type: ignore[union-attr]
    assert "firmware" in extra and extra["firmware"] == fields["firmware"]
    assert all(k not in extra for k in ("units", "quality", "sensor_id", "values"))
    if isinstance(fields.get("extra"), dict):
        assert extra["gateway"] == "gw-7"
    elif "extra" in fields:
        assert extra["extra"] is None


def test_a_large_extra_is_refused() -> None:
    small = validate(reading(note="x" * 100), NOW, RULES)
    assert small.ok and small.reading.extra["note"] == "x" * 100
    big = validate(reading(note="x" * (RULES.max_extra_bytes + 1)), NOW, RULES)
    assert [reason_code(r) for r in big.reasons] == ["extra_too_large"]


# --- quality -------------------------------------------------------------------------------


def test_quality_falls_near_the_hard_limit_and_with_age_and_device_quality() -> None:
    fresh = validate(reading(quality=None), NOW, RULES).reading.quality
    assert fresh == 1.0
    near_limit = validate(reading(quality=None, values={"pressure": 19_000.0, "flow": 80.0}), NOW, RULES)
    assert near_limit.ok and near_limit.reading.quality < fresh
    stale = validate(reading(quality=None, ts=NOW - 3 * 24 * 3_600_000), NOW, RULES).reading.quality
    assert stale < fresh
    assert validate(reading(quality=0.6), NOW, RULES).reading.quality == pytest.approx(0.6)


def test_quality_threshold_is_configurable() -> None:
    strict = Rules.load(IngestSettings(quality_threshold=0.99))
    result = validate(reading(quality=None, values={"pressure": 400.0}), NOW, strict)  # flow missing
    assert codes(result) == {"low_quality"}


# --- the ranges file -----------------------------------------------------------------------


def test_default_ranges_cover_the_metrics_the_simulator_emits_in_their_canonical_units() -> None:
    # The simulator's table is the metric vocabulary devices are modelled on; ingest's ranges must match it.
    # (ingest knows a few more: volume, status and the cumulative counters the mappings' formats carry)
    assert {name: RULES.metrics[name].unit for name in CANONICAL_UNITS if name in RULES.metrics} == CANONICAL_UNITS


def test_an_override_file_replaces_only_what_it_lists(tmp_path: Path) -> None:
    path = tmp_path / "ranges.yaml"
    path.write_text("metrics:\n  pressure: {unit: kPa, min: 0, max: 1000}\nassets:\n  pipe: [pressure]\n")
    rules = Rules.load(IngestSettings(ranges_file=str(path)))
    assert rules.metrics["pressure"].hi == 1000 and rules.metrics["flow"].hi == 100000
    assert not validate(reading(values={"pressure": 1200.0}), NOW, rules).ok
    assert validate(reading(values={"pressure": 900.0}), NOW, rules).ok


@pytest.mark.parametrize(
    "text",
    [
        "metrics:\n  pressure: {unit: kPa, min: 10, max: 5}\n",
        "metrics:\n  pressure: {unit: parsecs, min: 0, max: 5}\n",
        "metrics:\n  pressure: {unit: kPa, min: 0, max: 5, soft: [1, 9]}\n",
        "aliases:\n  zz: nothing\n",
        "metrics: [1, 2]\n",
        "metrics: {pressure: {unit: kPa, min: '0', max: 5}}\n",
    ],
)
def test_a_bad_ranges_file_fails_at_load_naming_the_entry(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ranges.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        Rules.load(IngestSettings(ranges_file=str(path)))


def test_iso_parse_matches_datetime() -> None:
    dt = datetime(2025, 6, 1, 12, 30, 15, 250000, tzinfo=UTC)
    assert parse_ts(dt.isoformat()) == int(dt.timestamp() * 1000)


_AGED_RULES = Rules.load(IngestSettings(max_age_s=3600, stale_after_s=60))


@hsettings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(
        [("water", "pump"), ("water", "pipe"), ("gas", "gas_station"), ("energy", "meter"), ("x", "y")]
    ),
    metrics=st.lists(st.sampled_from(sorted(RULES.metrics)), max_size=8, unique=True),
    scale=st.floats(0.0, 1.2),
    age_s=st.integers(0, 4000),
    device=st.one_of(st.none(), st.floats(0.0, 1.0)),
    rules=st.sampled_from([RULES, _AGED_RULES]),
)
def test_quality_score_is_the_documented_formula(kind, metrics, scale, age_s, device, rules) -> None:
    # The hot path's shortcuts (completeness without a set, a memo of round()) give exactly the formula.
    values = {m: rules.metrics[m].lo + scale * (rules.metrics[m].hi - rules.metrics[m].lo) for m in metrics}
    utility, asset = kind
    ts = NOW - age_s * 1000
    expected = rules.expected_for(utility, asset)
    score = (
        rules.w_completeness * completeness(values, expected)
        + rules.w_range * range_score(values, rules)
        + rules.w_staleness * staleness(ts, NOW, rules)
    )
    if device is not None:
        score *= device
    want = round(min(1.0, max(0.0, score)), 4)
    assert quality_score(values, utility, asset, ts, NOW, device, rules) == want
    assert quality_score(values, utility, asset, ts, NOW, device, rules, range_score(values, rules)) == want


@hsettings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([("water", "pump"), ("water", "pipe"), ("gas", "gas_station"), ("energy", "meter")]),
    metrics=st.lists(st.sampled_from(sorted(RULES.metrics)), min_size=1, max_size=8, unique=True),
    scale=st.sampled_from([0.5, 0.45, 0.02, 0.98]),
    age_s=st.sampled_from([0, 30, 61, 3000]),
    # a device's own quality on the usual reading takes a shortcut too (quality.device_scaled): odd fractions, 0, 1
    device=st.sampled_from([None, 1.0, 0.8, 0.97, 0.123456789, 1, 0]),
    rules=st.sampled_from([RULES, _AGED_RULES, Rules.load(IngestSettings(max_age_s=0))]),
)
def test_validation_scores_a_reading_as_quality_score_does(kind, metrics, scale, age_s, device, rules) -> None:
    """The usual reading (complete, fresh, within the usual ranges, no device quality) takes the full score without
    the call; every reading, usual or not, gets what quality_score gives."""
    utility, asset = kind
    if scale == 0.5:  # the usual reading: every expected metric, each in the middle of its usual range
        metrics = sorted({*metrics, *rules.expected_for(utility, asset)})
    specs = {m: rules.metrics[m] for m in metrics}
    values = {m: s.lo + scale * (s.hi - s.lo) for m, s in specs.items()}
    if scale == 0.5:
        values = {
            m: (s.soft_lo + s.soft_hi) / 2 if math.isfinite(s.soft_hi - s.soft_lo) else values[m]
            for m, s in specs.items()
        }
    payload = reading(
        utility=utility,
        asset=asset,
        ts=NOW - age_s * 1000,
        values=values,
        units={m: rules.metrics[m].unit for m in metrics},
        quality=device,
    )
    if device is None:
        del payload["quality"]
    checked = validate(payload, NOW, rules)
    score = quality_score(values, utility, asset, NOW - age_s * 1000, NOW, device, rules)
    if score < rules.quality_threshold:
        assert [reason_code(r) for r in checked.reasons] == ["low_quality"]
    else:
        assert checked.reading is not None and checked.reading.quality == score
    usual = values.keys() >= rules.expected_for(utility, asset) and range_score(values, rules) == 1.0
    if usual and (age_s <= 60 or rules.max_age_ms <= 0) and device is None:
        assert checked.reading is not None and checked.reading.quality == rules.full_quality


def test_the_usual_reading_gets_the_full_score() -> None:
    payload = reading(values={"pressure": 431.2, "flow": 118.4, "temperature": 12.0}, units={})
    del payload["quality"]
    checked = validate(payload, NOW, RULES)
    values = checked.reading.values  # type: ignore[union-attr]
    assert range_score(values, RULES) == 1.0 and values.keys() >= RULES.expected_for("water", "pipe")
    assert (
        checked.reading.quality
        == RULES.full_quality
        == quality_score(values, "water", "pipe", NOW - 1000, NOW, None, RULES)
    )  # type: ignore[union-attr]


# --- the usual reading's values and units, taken as sent --------------------------------------

_METRIC = st.sampled_from(
    ["pressure", "flow", "ph", "temperature", "bearing_temperature", "temp", "Pressure", "pressure_psi", "battery"]
)
_UNIT_OF = {
    "pressure": ["kPa", "psi", "bar"],
    "flow": ["m3/h", "L/s"],
    "ph": ["pH"],
    "temperature": ["C", "K"],
    "bearing_temperature": ["C"],
}
_NUMBER = st.one_of(
    st.floats(-200.0, 30_000.0, allow_nan=False),  # within and beyond the soft and hard ranges
    st.integers(-200, 30_000),
    st.sampled_from([math.nan, math.inf, None, 10**400]),
)


@st.composite
def _values_and_units(draw):
    names = draw(st.lists(_METRIC, min_size=1, max_size=5, unique=True))
    values = {name: draw(_NUMBER) for name in names}
    units = {name: draw(st.sampled_from(_UNIT_OF.get(name, ["kPa"]))) for name in names}
    order = draw(st.permutations(list(units)))
    units = {name: units[name] for name in order}
    if draw(st.booleans()):
        units.pop(draw(st.sampled_from(order)))  # a metric without its unit
    if draw(st.booleans()):
        units["flow" if "flow" not in units else "level"] = "m3/h"  # a unit for a metric not sent
    return values, units


@hsettings(max_examples=400, deadline=None)
@given(_values_and_units())
def test_the_values_and_units_taken_as_sent_are_what_the_general_path_gives(given_values) -> None:
    values, units = given_values
    payload = reading(values=values, units=units)
    fresh = Rules.load()  # nothing memoised: the first look at each metric takes the general path
    first = validate(copy.deepcopy(payload), NOW, fresh)
    sent = copy.deepcopy(payload)
    again = validate(sent, NOW, fresh)  # the memos filled: the usual reading is taken as sent
    assert again.reasons == first.reasons
    if first.reading is None:
        assert again.reading is None
        return
    # order and types too (an int made a float, a unit in the values' order)
    assert repr(list(again.reading.values.items())) == repr(list(first.reading.values.items()))
    assert repr(list(again.reading.units.items())) == repr(list(first.reading.units.items()))
    assert again.reading == first.reading
    canonical = (
        list(values) == list(units)
        and all(type(v) is float for v in values.values())
        and all(units[name] == fresh.metrics[name].unit for name in values if name in fresh.metrics)
        and all(name in fresh.metrics for name in values)
    )
    if canonical:  # the shortcut was taken (else this test would not check it)
        assert again.reading.values is sent["values"] and again.reading.units is sent["units"]


def test_the_usual_reading_keeps_the_dicts_it_was_sent_with() -> None:
    payload = reading()
    check(dict(payload), NOW, RULES)  # the plans memoised
    got = check(payload, NOW, RULES)
    assert got.values is payload["values"] and got.units is payload["units"]
    assert got.values == {"pressure": 431.2, "flow": 118.4} and got.units == {"pressure": "kPa", "flow": "m3/h"}
    # in another order, or in another unit, they are built as before
    swapped = reading(units={"flow": "m3/h", "pressure": "kPa"})
    got = check(swapped, NOW, RULES)
    assert got.units is not swapped["units"] and list(got.units) == ["pressure", "flow"]
    # the same unit for both: only the names tell the order apart
    values = {"temperature": 12.0, "bearing_temperature": 40.0}
    check(reading(values=dict(values), units={"temperature": "C", "bearing_temperature": "C"}), NOW, RULES)
    got = check(reading(values=values, units={"bearing_temperature": "C", "temperature": "C"}), NOW, RULES)
    assert list(got.units) == ["temperature", "bearing_temperature"]
    psi = reading(units={"pressure": "psi", "flow": "m3/h"}, values={"pressure": 62.5, "flow": 118.4})
    got = check(psi, NOW, RULES)
    assert got.values["pressure"] == pytest.approx(430.92, abs=0.01) and got.units["pressure"] == "kPa"


def test_the_asset_kind_is_folded_the_same_the_first_time_and_after() -> None:
    import services.ingest.validation as v

    for sent in (" Pump ", "PUMP", "pump", "Gas_Station\t", "\u00c9tang"):
        first = check(reading(asset=sent), NOW, RULES)
        again = check(reading(asset=sent), NOW, RULES)  # from the memo
        assert first.asset == again.asset == sent.strip().lower()
    v._FOLDED.clear()
    for n in range(v._FOLDED_LIMIT + 5):  # the memo stays bounded and right when it starts over
        assert v._fold(f" K{n} ") == f"k{n}"
    assert len(v._FOLDED) <= v._FOLDED_LIMIT


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0, 1, -0.0, 0.5, 0.97])), min_size=1, max_size=6))
def test_a_device_quality_scales_the_full_score_the_same_from_the_memo(qualities) -> None:
    """Each usual reading's quality is quality_score's, whether the device's own quality was met before or not."""
    from services.ingest.quality import device_scaled

    fresh = Rules.load()
    for q in qualities + qualities:  # every value a second time: from the memo
        payload = reading(quality=q)
        got = check(payload, NOW, fresh)
        want = quality_score(payload["values"], "water", "pipe", NOW - 1000, NOW, q, fresh)
        assert want == device_scaled(fresh.full_score, q)
        if want < fresh.quality_threshold:
            assert type(got) is Validated and [reason_code(r) for r in got.reasons] == ["low_quality"]
            assert got.reasons == [f"low_quality: {want:.3f} below {fresh.quality_threshold}"]
        else:
            assert type(got) is Reading and got.quality == want and type(got.quality) is float


def test_the_device_quality_memo_stays_bounded_and_right_when_it_starts_over() -> None:
    import services.ingest.validation as v
    from services.ingest.quality import device_scaled

    fresh = Rules.load()
    qualities = [(n + 1) / (v._SCALED_LIMIT + 10) for n in range(v._SCALED_LIMIT + 5)]
    for q in qualities:  # each sender may choose any quality in (0, 1]: more than the memo holds
        check(reading(quality=q), NOW, fresh)
        assert len(fresh.full_scaled) <= v._SCALED_LIMIT
    q = qualities[-1]
    assert fresh.full_scaled[q] == device_scaled(fresh.full_score, q)
