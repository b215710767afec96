"""Unit-suffixed metric names, cumulative counters and the unknown-metric policy."""

from __future__ import annotations

import orjson
import pytest

from services.ingest import metric_names
from services.ingest.pipeline import BatchProcessor, Inbound
from services.ingest.rules import ConfigError, Rules
from services.ingest.settings import IngestSettings
from services.ingest.validation import reason_code, validate
from shared.batching import PartitionMap

NOW = 1_709_510_400_000
RULES = Rules.load()
STRICT = Rules.load(IngestSettings(unknown_metrics="strict"))
PM = PartitionMap(1)


def parse(name: str, rules: Rules = RULES) -> tuple[str, str] | None:
    return metric_names.parse(name, {n: s.unit for n, s in rules.metrics.items()}, rules.aliases, rules.counter_twin)


def reading(values: dict, units: dict | None = None, **changes) -> dict:
    d = {
        "sensor_id": "gs-1",
        "ts": NOW - 1000,
        "site": "s",
        "zone": "z",
        "utility": "gas",
        "asset": "other",
        "values": values,
    }
    if units is not None:
        d["units"] = units
    d.update(changes)
    return d


def codes(result) -> set[str]:
    return {reason_code(r) for r in result.reasons}


# --- the grammar -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "metric", "unit"),
    [
        ("pressure_kpa", "pressure", "kpa"),
        ("pressure_bar", "pressure", "bar"),
        ("pressure_psi", "pressure", "psi"),
        ("pressure_diff_kpa", "pressure_diff", "kpa"),
        ("temperature_c", "temperature", "c"),
        ("temperature_f", "temperature", "f"),
        ("temp_degf", "temperature", "f"),  # an alias as the stem, a compact unit
        ("flow_m3h", "flow", "m3/h"),
        ("flow_lps", "flow", "l/s"),
        ("flow_l_s", "flow", "l/s"),  # two tokens read as a quotient
        ("flow_m3_h", "flow", "m3/h"),
        ("hourly_flow_m3", "flow", "m3/h"),  # a rate word makes a volume unit a flow unit
        ("daily_flow_m3", "flow", "m3/d"),
        ("water_l", "volume", "l"),
        ("electricity_kwh", "energy", "kwh"),
        ("density_kg_m3", "density", "kg/m3"),
        ("level_m", "level", "m"),
        ("power_MW", "power", "MW"),  # case kept for SI prefixes where it is the meaning
        ("power_mW", "power", "mW"),
        ("total_flow_m3", "volume_total", "m3"),  # counters
        ("flow_total_m3", "volume_total", "m3"),
        ("cumulative_water_l", "volume_total", "l"),
        ("total_energy_kwh", "energy_total", "kwh"),
        ("total_electricity_wh", "energy_total", "wh"),
    ],
)
def test_the_grammar_resolves_names_with_units(name: str, metric: str, unit: str) -> None:
    assert parse(name) == (metric, unit)
    assert RULES.canonical_name(name) == metric


@pytest.mark.parametrize(
    "name",
    [
        "pressure",  # no unit: a plain name, not the grammar's
        "flow_m3",  # a volume is not a flow (without hourly_/daily_)
        "pressure_kg",  # not a unit of pressure
        "foo_kpa",  # not a metric
        "total_pressure_kpa",  # pressure has no counter
        "total_hourly_flow_m3",  # a counter of a rate is not read
        "hourly_kpa",
        "_kpa",
        "pressure__kpa",
        "kpa",
    ],
)
def test_names_outside_the_grammar_do_not_resolve(name: str) -> None:
    assert parse(name) is None


def test_a_unit_suffixed_value_is_converted_and_range_checked() -> None:
    result = validate(reading({"pressure_psi": 100.0, "temperature_f": 212.0, "hourly_flow_m3": 12.0}), NOW, RULES)
    assert result.ok, result.reasons
    r = result.reading
    assert r.values == pytest.approx({"pressure": 689.4757, "temperature": 100.0, "flow": 12.0}, rel=1e-6)
    assert r.units == {"pressure": "kPa", "temperature": "C", "flow": "m3/h"}
    assert "unknown_metrics" not in r.extra


def test_a_sentinel_in_a_unit_suffixed_name_is_out_of_range_in_the_native_format() -> None:
    result = validate(reading({"pressure_kpa": -99999}), NOW, RULES)
    assert codes(result) == {"out_of_range"}
    assert "pressure=-99999 kPa" in result.reasons[0]


def test_an_explicit_unit_wins_over_the_name() -> None:
    result = validate(reading({"pressure_kpa": 1.0}, {"pressure_kpa": "bar"}), NOW, RULES)
    assert result.reading is not None and result.reading.values["pressure"] == pytest.approx(100.0)


def test_two_spellings_of_one_metric_are_a_duplicate() -> None:
    result = validate(reading({"pressure_kpa": 400.0, "pressure_bar": 4.0}), NOW, RULES)
    assert codes(result) == {"duplicate_metric"}


def test_the_grammar_follows_the_ranges_file(tmp_path) -> None:
    path = tmp_path / "ranges.yaml"
    path.write_text("aliases:\n  head: level\n")
    rules = Rules.load(IngestSettings(ranges_file=str(path)))
    assert parse("head_ft", rules) == ("level", "ft")
    assert parse("head_ft") is None


def test_counter_of_must_name_a_metric(tmp_path) -> None:
    path = tmp_path / "ranges.yaml"
    path.write_text("metrics:\n  gas_total: {unit: m3, min: 0, max: 10, counter_of: [nothing]}\n")
    with pytest.raises(ConfigError, match=r"metrics.gas_total.counter_of: 'nothing'"):
        Rules.load(IngestSettings(ranges_file=str(path)))


# --- counters --------------------------------------------------------------------------


def batch(*readings: dict) -> list[Inbound]:
    return [Inbound(orjson.dumps(r), None, 0, i, NOW) for i, r in enumerate(readings)]


def test_a_counter_reset_is_flagged_and_accepted_not_refused() -> None:
    proc = BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: None)
    out = proc.process(
        batch(
            reading({"total_flow_m3": 1_500_000.0}, ts=NOW - 3000),
            reading({"total_flow_m3": 1_500_120.0}, ts=NOW - 2000),
            reading({"total_flow_m3": 3.0}, ts=NOW - 1000),  # the meter was replaced
            reading({"total_flow_m3": 9.0}, ts=NOW - 500),
        )
    )
    assert not out.quarantined and len(out.clean) == 4
    extras = [orjson.loads(encoded)["extra"] for _, _, encoded in out.clean]
    assert [e.get("counter_resets") for e in extras] == [None, None, ["volume_total"], None]
    assert out.clean[2][1].values == {"volume_total": 3.0}
    assert proc.states["gs-1"].counter_resets == 1
    assert proc.states["gs-1"].to_dict()["counter_resets"] == 1


def test_an_out_of_order_counter_reading_is_not_a_reset() -> None:
    proc = BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: None)
    out = proc.process(
        batch(reading({"total_flow_m3": 200.0}, ts=NOW - 1000), reading({"total_flow_m3": 100.0}, ts=NOW - 2000))
    )
    assert len(out.clean) == 2 and all("counter_resets" not in r.extra for _, r, _ in out.clean)


def test_a_negative_register_is_out_of_range() -> None:
    assert codes(validate(reading({"total_energy_kwh": -5.0}), NOW, RULES)) == {"out_of_range"}


# --- unknown metrics -------------------------------------------------------------------


def test_unknown_metrics_are_accepted_flagged_and_counted_per_sensor_by_default() -> None:
    result = validate(reading({"pressure": 400.0, "odour_index": 3.0}), NOW, RULES)
    assert result.ok and result.reading is not None
    assert result.reading.extra["unknown_metrics"] == ["odour_index"]
    assert result.unknown_metrics == 1
    proc = BatchProcessor(RULES, partition_of=PM, load_state=lambda sid, msg: None)
    proc.process(batch(reading({"pressure": 400.0, "odour_index": 3.0}), reading({"pressure": 401.0}, ts=NOW - 10)))
    state = proc.states["gs-1"]
    assert state.unknown_metrics == 1 and state.stats()["unknown_metrics"] == 1


def test_strict_quarantines_unknown_metrics_with_their_name() -> None:
    result = validate(reading({"pressure": 400.0, "odour_index": 3.0}), NOW, STRICT)
    assert codes(result) == {"unknown_metric"}
    assert "'odour_index'" in result.reasons[0]
    # known names, aliases and unit-suffixed names are not unknown
    assert validate(reading({"press": 400.0, "temperature_c": 10.0}), NOW, STRICT).ok


def test_an_unknown_policy_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="FLOWWATCH_INGEST_UNKNOWN_METRICS"):
        Rules.load(IngestSettings(unknown_metrics="lenient"))
