"""Forecaster pure core: folding readings, zone state, step closing, losses, labels, settings (no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from services.forecaster.classes import CLASS_INDEX, LABEL_TO_CLASS, MECHANISM_CLASS, RISK_CLASSES, risk_class
from services.forecaster.features import METRIC_FEATURES, FeatureConfig
from services.forecaster.losses import account_loss, incident_transition, volume_unit
from services.forecaster.offline.dataset import ZoneLabels
from services.forecaster.partials import fold, merge_bucket
from services.forecaster.pipeline import ZoneProcessor
from services.forecaster.settings import ForecasterSettings, parse_mapping
from services.forecaster.waiting import WaitingZones
from services.forecaster.zonestate import ZoneState
from shared.records import IncidentLabel

STEP_MS = 60_000
T0 = 1_709_510_400_000  # 2024-03-04T00:00Z, a step boundary


def reading(sensor: str, ts: int, zone: str = "z1", utility: str = "water", **values: float) -> dict:
    return {
        "sensor_id": sensor,
        "ts": ts,
        "site": "s1",
        "zone": zone,
        "utility": utility,
        "asset": "pipe",
        "values": values,
        "units": {"flow": "m3/h"} if "flow" in values else {},
    }


CFG = FeatureConfig(metrics=("water.flow", "water.pressure"), key_metrics={"water": "flow"})
NO_LATENESS = ForecasterSettings(lateness_s=0)


# -- stage 1: fold --------------------------------------------------------------------------------


def test_fold_sums_per_zone_step_metric_and_sensor() -> None:
    items = [
        (reading("a", T0 + 1_000, flow=10.0, pressure=400.0), 0, 5),
        (reading("b", T0 + 2_000, flow=30.0), 1, 9),
        (reading("a", T0 + 61_000, flow=12.0), 0, 6),
        (reading("c", T0 + 3_000, zone="z2", flow=1.0), 1, 10),
    ]
    folded = fold(items, STEP_MS)
    assert set(folded.partials) == {"z1", "z2"}
    z1 = folded.partials["z1"]
    b0 = z1["b"][str(T0 // STEP_MS)]
    assert b0["n"] == 2
    assert b0["m"]["water.flow"] == [2, 40.0, 1000.0, 10.0, 30.0]
    assert b0["m"]["water.pressure"] == [1, 400.0, 160000.0, 400.0, 400.0]
    assert b0["s"]["a"]["water.flow"] == [1, 10.0, 10.0, 10.0]
    assert z1["b"][str(T0 // STEP_MS + 1)]["m"]["water.flow"][0] == 1
    assert z1["wm"] == {"0": T0 + 61_000, "1": T0 + 2_000}
    assert z1["off"] == {"0": 6, "1": 9}
    assert z1["units"] == {"water.flow": "m3/h"}
    # the broadcast watermark covers every reading of the partition, whatever its zone
    assert folded.watermarks == {"0": T0 + 61_000, "1": T0 + 3_000}
    assert folded.bad == []


def test_fold_sets_aside_unusable_readings_with_a_reason_and_skips_non_numbers() -> None:
    items = [
        ({"sensor_id": "a", "ts": T0, "values": {"flow": 1.0}}, 0, 1),  # no zone
        ("not a dict", 0, 2),
        (reading("a", T0, flow=float("nan"), pressure=True, label="x"), 0, 3),  # type: ignore[arg-type]
        (reading("b", T0, flow=2.0), 0, 4),
    ]
    folded = fold(items, STEP_MS)
    assert len(folded.bad) == 2
    assert all(reason.startswith("forecaster: unusable reading") for _r, reason in folded.bad)
    bucket = folded.partials["z1"]["b"][str(T0 // STEP_MS)]
    assert bucket["n"] == 2  # both usable readings counted
    assert bucket["m"] == {"water.flow": [1, 2.0, 4.0, 2.0, 2.0]}  # NaN, bool and string values left out


def test_folding_in_two_batches_then_merging_equals_folding_at_once() -> None:
    rng = np.random.default_rng(1)
    rows = [
        (reading(f"s{i % 4}", T0 + i * 7_000, flow=float(rng.normal(100, 5)), pressure=float(rng.normal(400, 3))), 0, i)
        for i in range(40)
    ]
    whole = fold(rows, STEP_MS).partials["z1"]["b"]
    first, second = fold(rows[:17], STEP_MS).partials["z1"]["b"], fold(rows[17:], STEP_MS).partials["z1"]["b"]
    for key, bucket in second.items():
        if key in first:
            merge_bucket(first[key], bucket)
        else:
            first[key] = bucket
    assert first.keys() == whole.keys()
    for key in whole:
        assert first[key]["n"] == whole[key]["n"]
        for metric, acc in whole[key]["m"].items():
            assert first[key]["m"][metric] == pytest.approx(acc)
        for sensor, accs in whole[key]["s"].items():
            for metric, acc in accs.items():
                assert first[key]["s"][sensor][metric] == pytest.approx(acc)


# -- stage 2: zone state ----------------------------------------------------------------------------


def partial_of(items: list[tuple[dict, int, int]]) -> dict:
    return fold(items, STEP_MS).partials["z1"]


def test_duplicate_partial_after_redelivery_is_skipped() -> None:
    st = ZoneState("z1", STEP_MS)
    p = partial_of([(reading("a", T0, flow=1.0), 0, 10)])
    assert st.ingest(p) is True
    assert st.ingest(p) is False
    assert st.open[T0 // STEP_MS]["n"] == 1


def test_step_closes_only_when_every_source_partition_passed_it() -> None:
    st = ZoneState("z1", STEP_MS)
    s0 = T0 // STEP_MS
    st.ingest(partial_of([(reading("a", T0 + 1000, flow=1.0), 0, 1), (reading("b", T0 + 2000, flow=1.0), 1, 1)]))
    st.ingest(partial_of([(reading("a", T0 + 61_000, flow=1.0), 0, 2)]))  # partition 0 is in the next step
    assert st.closable() == []  # partition 1 has not passed step 0 yet
    # partition 1's broadcast watermark says it moved on (its sensor of this zone was just quiet)
    assert st.closable({"1": T0 + 60_000}) == [s0]
    st.ingest(partial_of([(reading("b", T0 + 62_000, flow=1.0), 1, 2)]))
    assert st.closable() == [s0]


def test_lateness_delays_closing_and_open_steps_stay_bounded() -> None:
    kw = {"lateness_ms": 15_000, "max_open_steps": 3}
    st = ZoneState("z1", STEP_MS)
    s0 = T0 // STEP_MS
    st.ingest(partial_of([(reading("a", T0, flow=1.0), 0, 1), (reading("b", T0, flow=1.0), 1, 1)]))
    st.ingest(partial_of([(reading("a", T0 + 80_000, flow=1.0), 0, 2)]))
    assert st.closable({"1": T0 + 70_000}, **kw) == []  # partition 1 only 10 s past the end: within the lateness
    assert st.closable({"1": T0 + 75_000}, **kw) == [s0]
    # a partition that never reports (partitions=3): nothing closes until more than max_open_steps are open
    st.ingest(partial_of([(reading("a", T0 + k * 60_000, flow=1.0), 0, 2 + k) for k in range(2, 5)]))
    assert len(st.open) == 5
    assert st.closable({"1": T0 + 10 * 60_000}, partitions=3, **kw) == [s0, s0 + 1]


def test_late_partial_for_a_closed_step_is_counted_not_merged() -> None:
    proc = ZoneProcessor(CFG, NO_LATENESS)
    states: dict[str, ZoneState] = {}
    proc.process(states, [partial_of([(reading("a", T0, flow=1.0), 0, 1)])])
    proc.process(states, [partial_of([(reading("a", T0 + 60_000, flow=1.0), 0, 2)])])
    assert states["z1"].closed == T0 // STEP_MS
    proc.process(states, [partial_of([(reading("a", T0 + 5_000, flow=99.0), 0, 3)])])
    assert proc.late == 1
    assert T0 // STEP_MS not in states["z1"].open


def test_a_watermark_after_a_zones_last_partial_closes_its_steps() -> None:
    # The zone's sensors are all in readings partition 1; partition 0 catches up only after the zone's last
    # partial (a restart folds one partition before the other): that watermark alone must close its steps.
    proc = ZoneProcessor(CFG, NO_LATENESS, source_partitions=2)
    waiting = WaitingZones(partitions=2, source_partitions=2, lateness_ms=0)
    key, q = b"z1", WaitingZones(2, 2, 0).partition_of(b"z1")
    states: dict[str, ZoneState] = {}
    marks = {"0": T0 + 30_000, "1": T0 + 30_000}
    proc.ingest(states, [partial_of([(reading("a", T0 + k * 60_000, flow=1.0), 1, k) for k in range(5)])])
    proc.close_ready(states, ["z1"], marks)
    assert len(states["z1"].open) == 5  # partition 0 has not passed the first step
    waiting.update(q, key, states["z1"])
    assert waiting.due(q, marks) == []
    marks = {"0": T0 + 3 * 60_000, "1": T0 + 5 * 60_000}  # partition 0's broadcast moves on; no partial comes
    assert waiting.due(q, marks) == [key]
    proc.close_ready(states, ["z1"], marks)
    assert states["z1"].closed == T0 // STEP_MS + 2 and min(states["z1"].open) == T0 // STEP_MS + 3
    waiting.update(q, key, states["z1"])
    assert waiting.due(q, marks) == []  # its next open step ends after partition 0's watermark
    assert waiting.due(1 - q, {"0": 2**62, "1": 2**62}) == []  # another partition's zones only
    proc.close_ready(states, ["z1"], {"0": 2**62, "1": 2**62})
    waiting.update(q, key, states["z1"])
    assert waiting.due(q, {"0": 2**62, "1": 2**62}) == []  # nothing open: not waiting any more


def test_zones_restored_at_a_restart_are_looked_at_on_their_partitions_next_watermark() -> None:
    waiting = WaitingZones(partitions=2, source_partitions=2, lateness_ms=0)
    keys = [b"z1", b"z2", b"z3", b"z4"]
    waiting.seed(keys)
    due = [k for q in (0, 1) for k in waiting.due(q, {"0": 0, "1": 0})]
    assert sorted(due) == keys and waiting.seeded
    assert waiting.due(0, {"0": 0}) == []  # a source partition that never reported holds every zone


def run_steps(values: list[dict[str, float]], sensors: int = 3, cfg: FeatureConfig = CFG) -> tuple[list, dict]:
    """Feed one reading per sensor per step (``values[k]`` are sensor 0's values; others get them too)."""
    proc_steps: list = []
    proc = ZoneProcessor(cfg, NO_LATENESS, on_step=lambda step, _inputs: proc_steps.append(step))
    states: dict[str, ZoneState] = {}
    for k, vals in enumerate([*values, values[-1]]):
        items = [(reading(f"s{j}", T0 + k * STEP_MS + j, **vals), 0, k * sensors + j) for j in range(sensors)]
        proc.process(states, [partial_of(items)], {"0": T0 + k * STEP_MS + sensors})
    return proc_steps, states


def feature(step, metric: str, name: str) -> float:
    i = CFG.metrics.index(metric) * len(METRIC_FEATURES) + METRIC_FEATURES.index(name)
    return float(step.features[i])


def test_a_level_shift_shows_against_the_baseline_and_the_whole_zone_moves() -> None:
    rng = np.random.default_rng(3)
    normal = [{"flow": 100.0 + rng.normal(0, 1), "pressure": 400 + rng.normal(0, 1)} for _ in range(120)]
    leak = [{"flow": 130.0 + rng.normal(0, 1), "pressure": 390 + rng.normal(0, 1)} for _ in range(3)]
    steps, _ = run_steps(normal + leak)
    before, during = steps[100], steps[121]
    assert abs(feature(before, "water.flow", "z_base")) < 1.5
    assert feature(during, "water.flow", "z_base") > 2.0
    assert feature(during, "water.flow", "sensor_median_z") > 2.0  # every sensor, not one
    assert feature(during, "water.pressure", "z_base") < -2.0
    assert feature(during, "water.flow", "present") == 1.0
    # the key metric is the zone total: three sensors
    assert during.actual["water.flow"] == pytest.approx(3 * leak[1]["flow"], rel=1e-6)


def test_a_stuck_sensor_repeats_exactly() -> None:
    rng = np.random.default_rng(4)
    steps: list = []
    proc = ZoneProcessor(CFG, NO_LATENESS, on_step=lambda s, _i: steps.append(s))
    states: dict[str, ZoneState] = {}
    for k in range(60):
        items = []
        for j in range(4):
            v = 55.5 if (j == 0 and k >= 40) else float(rng.normal(100, 1))
            items.append((reading(f"s{j}", T0 + k * STEP_MS + j, flow=v), 0, k * 4 + j))
        proc.process(states, [partial_of(items)], {"0": T0 + k * STEP_MS + 4})
    assert feature(steps[30], "water.flow", "repeat_frac") == 0.0
    assert feature(steps[50], "water.flow", "repeat_frac") == pytest.approx(0.25)


def test_state_round_trip_gives_the_same_next_features() -> None:
    rng = np.random.default_rng(5)
    values = [{"flow": 100.0 + rng.normal(0, 2), "pressure": 400 + rng.normal(0, 1)} for _ in range(50)]
    _, states = run_steps(values)
    restored = {z: ZoneState.from_bytes(orjson.dumps(s.to_dict())) for z, s in states.items()}
    nxt = [(reading(f"s{j}", T0 + 51 * STEP_MS + j, flow=120.0, pressure=395.0), 0, 10_000 + j) for j in range(3)]
    later = [(reading("s0", T0 + 53 * STEP_MS, flow=1.0), 0, 20_000)]
    outs = []
    for st in (states, restored):
        got: list = []
        proc = ZoneProcessor(CFG, NO_LATENESS, on_step=lambda s, _i, got=got: got.append(s))
        proc.process(st, [partial_of(nxt), partial_of(later)], {"0": T0 + 53 * STEP_MS})
        outs.append(got)
    assert len(outs[0]) == len(outs[1]) >= 1
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        assert a.actual == b.actual


def test_state_stays_bounded() -> None:
    cfg = FeatureConfig(metrics=("water.flow",), key_metrics={"water": "flow"}, window_steps=8, sensor_ttl_steps=5)
    proc = ZoneProcessor(cfg, NO_LATENESS)
    states: dict[str, ZoneState] = {}
    for k in range(40):
        # a new sensor every step: old ones must be forgotten
        items = [(reading(f"s{k}", T0 + k * STEP_MS, flow=1.0 + k), 0, k)]
        proc.process(states, [partial_of(items)], {"0": T0 + k * STEP_MS})
    st = states["z1"]
    assert len(st.sensors) <= cfg.sensor_ttl_steps + 2
    assert len(st.history["water.flow"]) == cfg.window_steps
    assert len(st.open) <= 2
    assert all(len(slots) == 25 for slots in st.profiles.values())  # 24 hour slots + the open hour


# -- losses -----------------------------------------------------------------------------------------


def test_incident_starts_at_threshold_and_ends_below_half_of_it() -> None:
    inc = incident_transition(None, 0.4, "leak", T0, 0.5)
    assert inc is None
    inc = incident_transition(None, 0.7, "leak", T0, 0.5)
    assert inc == {"since_ms": T0, "type": "leak", "steps": 1}
    inc = incident_transition(inc, 0.3, "burst", T0 + STEP_MS, 0.5)  # between 0.25 and 0.5: still on, type kept
    assert inc is not None and inc["type"] == "leak" and inc["steps"] == 2
    assert incident_transition(inc, 0.2, "leak", T0 + 2 * STEP_MS, 0.5) is None


def test_loss_is_excess_over_the_forecast_times_time_priced_by_the_tariff() -> None:
    inc = {"since_ms": T0, "type": "leak", "steps": 3}
    kw = {
        "probability": 0.9,
        "incident_type": "leak",
        "step_s": 60,
        "metric": "water.flow",
        "unit": "m3/h",
        "tariff": 2.0,
        "currency": "EUR",
        "horizon_s": 900,
    }
    inc2, loss = account_loss(inc, 1.5, actual=160.0, expected=100.0, **kw)
    assert loss["unit"] == "m3"
    assert loss["excess_rate_per_h"] == pytest.approx(60.0)
    assert loss["volume"] == pytest.approx(1.5 + 60.0 / 60.0)  # 60 m3/h for one minute
    assert loss["cost"] == pytest.approx(2.0 * 2.5)
    assert loss["expected_volume_horizon"] == pytest.approx(0.9 * 60.0 * 0.25)
    assert inc2 is not None and inc2["volume"] == pytest.approx(2.5)
    # below the forecast: nothing is lost; and sensor faults never cost volume
    assert account_loss(inc, 0.0, actual=90.0, expected=100.0, **kw)[1]["volume"] == 0.0
    kw["incident_type"] = "sensor_fault"
    assert account_loss(inc, 0.0, actual=160.0, expected=100.0, **kw)[1]["volume"] == 0.0
    # no incident: no volume, but a price on the horizon when the key metric runs high
    _, loss = account_loss(None, 0.0, actual=160.0, expected=100.0, **{**kw, "incident_type": "leak"})
    assert loss["volume"] == 0.0 and loss["ongoing"] is False and loss["expected_volume_horizon"] > 0


def test_rate_units_convert_to_volumes() -> None:
    assert volume_unit("kW") == ("kWh", 1.0)
    assert volume_unit("L/s") == ("m3", 3.6)
    assert volume_unit("furlongs/fortnight")[0] == "furlongs/fortnight*h"


# -- labels and settings ----------------------------------------------------------------------------


def test_every_simulator_incident_type_maps_to_a_risk_class() -> None:
    from services.simulator.incidents import KINDS
    from shared.records import INCIDENT_TYPES

    # one vocabulary: what the simulator injects is what the forecaster classifies
    assert tuple(KINDS) == INCIDENT_TYPES
    assert set(MECHANISM_CLASS) == set(INCIDENT_TYPES)
    for kind in INCIDENT_TYPES:
        assert risk_class(kind) in RISK_CLASSES[1:]
    assert set(LABEL_TO_CLASS.values()) == set(RISK_CLASSES[1:])
    with pytest.raises(ValueError, match="unknown incident type"):
        risk_class("alien_invasion")


def test_zone_steps_are_labelled_with_the_incident_under_way_or_coming_within_the_horizon() -> None:
    lab = IncidentLabel("i1", "pump_cavitation", T0 + 10 * STEP_MS, T0 + 20 * STEP_MS, "s1", "z1", "water")
    labels = ZoneLabels([lab])
    h = 5 * STEP_MS
    assert labels.label("z1", T0, T0 + STEP_MS, h) == (0, False)
    assert labels.label("z1", T0 + 5 * STEP_MS, T0 + 6 * STEP_MS, h) == (CLASS_INDEX["pump_fault"], False)
    assert labels.label("z1", T0 + 12 * STEP_MS, T0 + 13 * STEP_MS, h) == (CLASS_INDEX["pump_fault"], True)
    assert labels.label("z1", T0 + 20 * STEP_MS, T0 + 21 * STEP_MS, h) == (0, False)
    assert labels.label("z2", T0 + 12 * STEP_MS, T0 + 13 * STEP_MS, h) == (0, False)


def test_settings_from_env_and_their_validation() -> None:
    s = ForecasterSettings.from_env(
        {"FLOWWATCH_FORECASTER_STEP_S": "30", "FLOWWATCH_FORECASTER_TARIFFS": "water=3.5, gas:1"}
    )
    assert s.step_ms == 30_000
    assert s.tariff_by_utility == {"water": 3.5, "gas": 1.0}
    assert parse_mapping("water:flow,energy:power") == {"water": "flow", "energy": "power"}
    with pytest.raises(ValueError):
        ForecasterSettings.from_env({"FLOWWATCH_FORECASTER_WINDOW_STEPS": "2"})
    with pytest.raises(ValueError):
        ForecasterSettings.from_env({"FLOWWATCH_FORECASTER_TARIFFS": "water"})
    cfg = FeatureConfig.from_settings(s, ("water.flow",))
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.key_metric("water") == "water.flow" and cfg.key_metric("steam") is None
    assert math.isclose(cfg.baseline_alpha, 1 - 0.5 ** (1 / s.baseline_half_life_steps))


def test_a_state_written_before_the_names_were_spelled_out_is_read_as_it_was() -> None:
    # tables and changelogs written by the previous release hold version 1 (short names, each sensor's metric
    # stats beside its "_b"/"_m" keys): a worker of this release takes them over unchanged
    rng = np.random.default_rng(9)
    _, states = run_steps([{"flow": 100.0 + rng.normal(0, 2), "pressure": 400 + rng.normal(0, 1)} for _ in range(30)])
    now = states["z1"].to_dict()
    short = {"utility_counts": "util", "watermarks": "wm", "offsets": "off", "baselines": "base", "profiles": "prof"}
    short |= {"recent_z": "recent", "history": "hist", "incident_loss": "vol"}
    v1 = {short.get(k, k): v for k, v in now.items() if k not in ("sensors", "v")}
    v1["v"] = 1
    v1["sens"] = {s: {"_b": st["seen"], "_m": st["last"], **st["stats"]} for s, st in now["sensors"].items()}
    assert now["sensors"] and now["baselines"] and now["watermarks"]
    assert ZoneState.from_bytes(orjson.dumps(v1)).to_dict() == now
