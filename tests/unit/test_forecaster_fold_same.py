"""The forecaster's stage-1 fold and the partials check, made cheaper per reading (issue 19), answer as before.

The reference implementations below are the code they replaced, verbatim but for names: every input here,
good and bad, must give the same partials (the same bytes on the wire), the same rejects with the same reasons
and the same watermarks, and the same verdict on every partial.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import orjson
import pytest

from services.forecaster.partials import MAX_TS, BadReading, fold, problem
from shared.codec import dumps
from shared.window_stats import add, add_squared

STEP_MS = 60_000
T0 = 1_709_510_400_000


def reference_fold(items: Any, step_ms: int) -> tuple[dict[str, Any], list[tuple[Any, str]], dict[str, int]]:
    out: dict[str, Any] = {}
    bad: list[tuple[Any, str]] = []
    marks: dict[str, int] = {}
    isfinite = math.isfinite
    for reading, partition, offset in items:
        try:
            zone = reading["zone"]
            ts = reading["ts"]
            values = reading["values"]
            utility = reading["utility"]
            sensor = reading["sensor_id"]
            if not zone or not isinstance(zone, str) or not isinstance(values, dict):
                raise BadReading("no zone or no values")
            if type(ts) is not int or not 0 <= ts < MAX_TS:
                raise BadReading("ts is not epoch milliseconds")
            if type(utility) is not str or type(sensor) is not str or type(reading.get("site", "")) is not str:
                raise BadReading("utility, sensor_id and site must be text")
            if not isinstance(reading.get("units") or {}, dict):
                raise BadReading("units must be a map")
        except (KeyError, TypeError, ValueError) as exc:
            bad.append((reading, f"forecaster: unusable reading ({type(exc).__name__}: {exc})"))
            continue
        part = out.get(zone)
        if part is None:
            part = out[zone] = {
                "zone": zone,
                "site": reading.get("site", ""),
                "u": {},
                "units": {},
                "b": {},
                "wm": {},
                "off": {},
            }
        p = str(partition)
        if ts > marks.get(p, -1):
            marks[p] = ts
        if ts > part["wm"].get(p, -1):
            part["wm"][p] = ts
        if offset > part["off"].get(p, -1):
            part["off"][p] = offset
        part["u"][utility] = part["u"].get(utility, 0) + 1
        bkey = str(ts // step_ms)
        bucket = part["b"].get(bkey)
        if bucket is None:
            bucket = part["b"][bkey] = {"n": 0, "m": {}, "s": {}}
        bucket["n"] += 1
        sens = bucket["s"].get(sensor)
        if sens is None:
            sens = bucket["s"][sensor] = {}
        metrics = bucket["m"]
        units = reading.get("units") or {}
        for name, raw in values.items():
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                continue
            x = float(raw)
            if not isfinite(x):
                continue
            key = f"{utility}.{name}"
            if add_squared(metrics, key, x) and name in units:
                part["units"][key] = units[name]
            add(sens, key, x)
    return out, bad, marks


DIGITS = re.compile(r"[0-9]{1,18}")


def _finite(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _int_map(m: Any) -> bool:
    return isinstance(m, dict) and all(type(v) is int for v in m.values())


def reference_problem(message: Any, max_id_chars: int = 200) -> str:
    if not isinstance(message, dict):
        return f"expected an object, got {type(message).__name__}"
    if not _int_map(message.get("wm", {})) or not all(DIGITS.fullmatch(k) for k in message.get("wm", {})):
        return "wm must map source partitions to integer event times"
    if "zone" not in message:
        return "" if "wm" in message else "neither a partial nor a watermark"
    zone, site = message["zone"], message.get("site", "")
    if type(zone) is not str or not zone or len(zone) > max_id_chars:
        return "zone must be non-empty text"
    if type(site) is not str or len(site) > max_id_chars:
        return "site must be text"
    if not _int_map(message.get("off", {})) or not all(DIGITS.fullmatch(k) for k in message.get("off", {})):
        return "off must map source partitions to integer offsets"
    if not _int_map(message.get("u", {})):
        return "u must map utilities to counts"
    units = message.get("units", {})
    if not isinstance(units, dict) or not all(type(v) is str for v in units.values()):
        return "units must map metrics to text"
    buckets = message.get("b", {})
    if not isinstance(buckets, dict):
        return "b must map steps to statistics"
    for step, bucket in buckets.items():
        if not DIGITS.fullmatch(step) or len(step) > 15:
            return f"step {step[:40]!r} is not a non-negative integer"
        if not isinstance(bucket, dict) or type(bucket.get("n")) is not int:
            return "a step's statistics need an integer n"
        m, sens = bucket.get("m", {}), bucket.get("s", {})
        if not isinstance(m, dict) or not all(
            type(a) is list and len(a) == 5 and all(_finite(x) for x in a) and a[0] > 0 for a in m.values()
        ):
            return "m must map metrics to [n, sum, sumsq, min, max]"
        if not isinstance(sens, dict) or not all(
            isinstance(per, dict)
            and all(type(a) is list and len(a) == 4 and all(_finite(x) for x in a) and a[0] > 0 for a in per.values())
            for per in sens.values()
        ):
            return "s must map sensors to metrics to [n, sum, min, max]"
    return ""


class Num(float):
    """A float subclass: not what JSON gives, but a number the fold must count like any other."""


ODD_VALUES = [True, None, "3.5", [1.0], {"x": 1}, float("nan"), float("inf"), -float("inf"), 7, 0, -2.5, Num(1.5)]


def readings(seed: int, n: int) -> list[tuple[Any, int, int]]:
    """Readings as readings.clean holds them, most good, some with every kind of flaw the fold sets aside."""
    rng = random.Random(seed)
    items: list[tuple[Any, int, int]] = []
    offsets = [0, 0, 0, 0]
    for _ in range(n):
        zone = f"z{rng.randrange(4)}"
        utility = rng.choice(["water", "water", "gas"])
        reading: Any = {
            "sensor_id": f"{zone}-s{rng.randrange(12)}",
            "ts": T0 + rng.randrange(5 * STEP_MS),
            "site": rng.choice(["s1", "s2", ""]),
            "zone": zone,
            "utility": utility,
            "asset": "pipe",
            "values": {"flow": round(rng.uniform(10, 90), 3), "pressure": rng.randrange(300, 600)},
            "units": {"flow": "m3/h"} if rng.random() < 0.7 else rng.choice([{}, None, {"pressure": "kPa"}]),
        }
        roll = rng.random()
        if roll < 0.15:
            reading["values"][rng.choice(["flow", "level", "pressure"])] = rng.choice(ODD_VALUES)
        elif roll < 0.25:
            field, value = rng.choice(
                [
                    ("zone", ""),
                    ("zone", 5),
                    ("ts", -1),
                    ("ts", 1.5e12),
                    ("ts", MAX_TS),
                    ("ts", True),
                    ("values", [1.0]),
                    ("utility", None),
                    ("sensor_id", 3),
                    ("site", 4),
                    ("units", ["m3/h"]),
                ]
            )
            reading[field] = value
        elif roll < 0.28:
            del reading[rng.choice(["zone", "ts", "values", "utility", "sensor_id", "site", "units"])]
        elif roll < 0.30:
            reading = rng.choice([[1, 2], "text", 5])
        partition = rng.randrange(4)
        offsets[partition] += rng.randrange(1, 3)
        items.append((reading, partition, offsets[partition]))
    return items


@pytest.mark.parametrize("seed", range(12))
def test_fold_gives_the_partials_rejects_and_watermarks_the_previous_fold_gave(seed: int) -> None:
    items = readings(seed, 400)
    folded = fold(items, STEP_MS)
    partials, bad, marks = reference_fold(items, STEP_MS)
    assert folded.partials and folded.bad  # the inputs hold both kinds
    assert dumps(folded.partials) == dumps(partials)  # values, types (floats stay floats) and key order
    assert [(id(r), why) for r, why in folded.bad] == [(id(r), why) for r, why in bad]
    assert folded.watermarks == marks and list(folded.watermarks) == list(marks)


def mutations(partial: dict[str, Any], rng: random.Random) -> list[Any]:
    """A partial and variants of it the stage-2 check must refuse, or accept, as it did."""
    step = next(iter(partial["b"]))
    metric = next(iter(partial["b"][step]["m"]))
    sensor = next(iter(partial["b"][step]["s"]))
    out: list[Any] = [partial]
    for value in [[0, 1.0, 1.0, 1.0, 1.0], [1, 1.0, 1.0, 1.0], [1, math.inf, 1.0, 1.0, 1.0], [1, "1", 1.0, 1.0, 1.0],
                  (1, 1.0, 1.0, 1.0, 1.0), [1, True, 1.0, 1.0, 1.0], [2, 3, 5, 1, 2], [-1, 1.0, 1.0, 1.0, 1.0], None]:  # fmt: skip
        bad = orjson.loads(orjson.dumps(partial))
        bad["b"][step]["m"][metric] = value
        out.append(bad)
    for value in [[0, 1.0, 1.0, 1.0], [1, 1.0, 1.0], [1, math.nan, 1.0, 1.0], [1, 1.0, None, 1.0], [3, 3, 1, 2], [1, 2.0, 2.0, 2.0, 2.0]]:  # fmt: skip
        bad = orjson.loads(orjson.dumps(partial))
        bad["b"][step]["s"][sensor][metric] = value
        out.append(bad)
    for field, value in [("s", []), ("s", {sensor: [1, 2]}), ("s", {sensor: {}}), ("m", []), ("m", {}), ("n", 1.0)]:
        bad = orjson.loads(orjson.dumps(partial))
        bad["b"][step][field] = value
        out.append(bad)
    out += [
        {**partial, "b": {"x1": {}}},
        {**partial, "zone": ""},
        {**partial, "off": {"0": 1.5}},
        {"wm": {"0": 1}},
        {},
        [],
    ]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_partials_check_says_what_the_previous_check_said(seed: int) -> None:
    rng = random.Random(seed)
    folded = fold([(r, p, o) for r, p, o in readings(seed, 300)], STEP_MS)
    verdicts = []
    for partial in folded.partials.values():
        for message in mutations(orjson.loads(dumps(partial)), rng):
            verdicts.append(problem(message))
            assert verdicts[-1] == reference_problem(message), message
    assert "" in verdicts and any(verdicts)  # both kinds were judged
