"""The shared window accumulator against the two it replaced (the detector's aggregate partials, the
forecaster's step partials), bit for bit on random data: the lists are the wire format of two topics."""

from __future__ import annotations

import json
import random
from typing import Any

from services.detector import aggregates
from services.forecaster import partials
from shared import window_stats

SPECIAL = [0.0, -0.0, 1, -1, 3, 2.5, float("inf"), -float("inf"), 1e300, -1e-300, 5e-324]


def values(rng: random.Random) -> list[float]:
    out: list[float] = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.1:
            out.append(rng.choice(SPECIAL))
        elif r < 0.25:
            out.append(rng.randint(-5, 5))
        else:
            out.append(rng.gauss(10, 5) * 10 ** rng.randint(-6, 6))
    return out


# The code before the shared accumulator, as it was in services/detector/aggregates.py and
# services/forecaster/partials.py.


def old_detector_add(stats: dict, metric: str, v: float) -> None:
    s = stats.get(metric)
    if s is None:
        stats[metric] = [1, v, v, v]
    else:
        s[0] += 1
        s[1] += v
        s[2] = min(s[2], v)
        s[3] = max(s[3], v)


def old_detector_merge(a: dict, b: dict) -> dict:
    out = {k: list(v) for k, v in a.items()}
    for metric, s in b.items():
        t = out.get(metric)
        out[metric] = list(s) if t is None else [t[0] + s[0], t[1] + s[1], min(t[2], s[2]), max(t[3], s[3])]
    return out


def old_forecaster_add(metrics: dict, sens: dict, key: str, x: float) -> None:
    acc = metrics.get(key)
    if acc is None:
        metrics[key] = [1, x, x * x, x, x]
    else:
        acc[0] += 1
        acc[1] += x
        acc[2] += x * x
        if x < acc[3]:
            acc[3] = x
        if x > acc[4]:
            acc[4] = x
    sacc = sens.get(key)
    if sacc is None:
        sens[key] = [1, x, x, x]
    else:
        sacc[0] += 1
        sacc[1] += x
        if x < sacc[2]:
            sacc[2] = x
        if x > sacc[3]:
            sacc[3] = x


def old_forecaster_merge(into: dict, other: dict) -> None:
    for key, acc in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = list(acc)
        elif len(acc) == 5:
            mine[0] += acc[0]
            mine[1] += acc[1]
            mine[2] += acc[2]
            mine[3] = min(mine[3], acc[3])
            mine[4] = max(mine[4], acc[4])
        else:
            mine[0] += acc[0]
            mine[1] += acc[1]
            mine[2] = min(mine[2], acc[2])
            mine[3] = max(mine[3], acc[3])


def exact(x: Any) -> str:
    """Bit-exact text: floats by repr (-0.0, inf kept), ints stay ints."""
    return json.dumps(x, sort_keys=True)


def test_adding_and_merging_give_the_old_results_bit_for_bit() -> None:
    for seed in range(4):
        rng = random.Random(seed)
        keys = [f"m{i}" for i in range(6)]
        new = [({}, {}, {}), ({}, {}, {})]  # per half: detector stats, forecaster metrics, forecaster sensor
        old = [({}, {}, {}), ({}, {}, {})]
        for i, v in enumerate(values(rng)):
            key = rng.choice(keys)
            if key == "m0":  # signed zeros: which one a minimum keeps is part of the old results
                v = rng.choice([0.0, -0.0, 0, 1.5])
            (nd, nm, ns), (od, om, os_) = new[i % 2], old[i % 2]
            window_stats.add(nd, key, v)
            window_stats.add_squared(nm, key, v)
            window_stats.add(ns, key, v)
            old_detector_add(od, key, v)
            old_forecaster_add(om, os_, key, v)
        assert exact(new) == exact(old)
        assert exact(window_stats.merged(new[0][0], new[1][0])) == exact(old_detector_merge(old[0][0], old[1][0]))
        for j in (1, 2):
            window_stats.merge_into(new[0][j], new[1][j])
            old_forecaster_merge(old[0][j], old[1][j])
            assert exact(new[0][j]) == exact(old[0][j])


def test_merging_is_order_free_in_counts_minima_and_maxima_and_copies_what_it_takes() -> None:
    rng = random.Random(9)
    parts: list[dict] = [{} for _ in range(5)]
    for v in values(rng):
        window_stats.add_squared(parts[rng.randrange(5)], rng.choice("abc"), v)
    forward, backward = {}, {}
    for p in parts:
        window_stats.merge_into(forward, p)
    for p in reversed(parts):
        window_stats.merge_into(backward, p)
    for key in forward:
        f, b = forward[key], backward[key]
        assert (f[0], f[3], f[4]) == (b[0], b[3], b[4])
    taken = {}
    window_stats.merge_into(taken, parts[0])
    taken["a"][0] += 1
    assert taken["a"][0] == parts[0]["a"][0] + 1  # the source list was copied, not shared


def test_the_services_partials_are_built_with_it() -> None:
    """The detector's add_reading/merge and the forecaster's fold/merge_bucket on the same readings agree with
    the old arithmetic (NaN and non-numbers left out as before)."""
    rng = random.Random(3)
    readings = []
    for i, v in enumerate(values(rng)[:800]):
        extra = rng.choice([float("nan"), "x", True, None, v / 3])
        readings.append(
            {
                "sensor_id": f"s{i % 7}",
                "zone": "z",
                "site": "a",
                "utility": "water",
                "ts": 1000 * i,
                "values": {"flow": v, "level": extra},
            }
        )
    det: dict = {}
    old_det: dict = {}
    for r in readings:
        numeric = {k: x for k, x in r["values"].items() if type(x) in (int, float)}
        aggregates.add_reading(det, numeric, False, r["ts"])
        for k, x in numeric.items():
            if x == x:
                old_detector_add(old_det, k, x)
    assert exact(det["m"]) == exact(old_det)
    assert exact(aggregates.merge(det, det)["m"]) == exact(old_detector_merge(old_det, old_det))

    folded = partials.fold(((r, 0, i) for i, r in enumerate(readings)), 60_000)
    old_m: dict = {}
    old_s: dict = {}
    for r in readings:
        step = str(r["ts"] // 60_000)
        for name, raw in r["values"].items():
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw or abs(raw) == float("inf"):
                continue
            old_forecaster_add(
                old_m.setdefault(step, {}),
                old_s.setdefault(step, {}).setdefault(r["sensor_id"], {}),
                f"water.{name}",
                float(raw),
            )
    buckets = folded.partials["z"]["b"]
    assert exact({b: buckets[b]["m"] for b in buckets}) == exact(old_m)
    assert exact({b: buckets[b]["s"] for b in buckets}) == exact(old_s)
    into = partials.empty_bucket()
    for b in buckets.values():
        partials.merge_bucket(into, b)
    old_into: dict = {}
    for b in old_m.values():
        old_forecaster_merge(old_into, b)
    assert exact(into["m"]) == exact(old_into)
