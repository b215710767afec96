"""Stage 1: fold readings into per-zone partial step statistics (a map-side combine).

readings.clean is keyed by sensor, but features are per zone. Instead of
repartitioning every reading by zone, each micro-batch is folded into one small
message per zone holding sum/count/min/max per step and metric (and per sensor; :mod:`shared.window_stats`),
which stage 2 merges in the zone's table. That moves a few hundred messages per
second through the repartition topic instead of tens of thousands.

A partial is a plain dict (orjson on the wire)::

    {"zone": "z1", "site": "s1",
     "u": {"water": 120},                      # readings per utility
     "units": {"water.flow": "m3/h"},
     "b": {"28512345": {                       # step index (ts // step_ms), as str
         "n": 40,
         "m": {"water.flow": [n, sum, sumsq, min, max]},
         "s": {"sensor-1": {"water.flow": [n, sum, min, max]}}}},
     "wm": {"0": 1711000000000},               # source partition -> max event ts
     "off": {"0": 1234}}                       # source partition -> max offset (dedup)

After the partials, stage 1 sends a watermark message ``{"wm": {"0": ts}}`` to every
partition of the partials topic: source partition 0 has nothing older than ``ts`` to
come. Per partials partition it follows the partials it covers, so stage 2 can close a
zone's step as soon as every source partition feeding the zone has passed it, even
when a replay makes partitions run hours apart in event time.

Metric names are qualified by utility (``water.flow``, ``gas.pressure``) so a gas
pressure never averages with a water pressure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.window_stats import add, add_squared, merge_into

Partial = dict[str, Any]
MAX_TS = 1 << 53  # event times beyond this are not epoch milliseconds (and lose precision as floats)


class BadReading(ValueError):
    """A reading on readings.clean that the forecaster cannot use, with the reason."""


@dataclass(slots=True)
class Folded:
    """One micro-batch, folded: partials per zone, unusable readings, and per source partition
    the newest event time seen (the watermark stage 1 broadcasts after the partials)."""

    partials: dict[str, Partial]
    bad: list[tuple[Any, str]]
    watermarks: dict[str, int]


def fold(items: Iterable[tuple[Any, int, int]], step_ms: int) -> Folded:
    """Fold ``(reading dict, source partition, offset)`` items into one partial per zone.

    Raises nothing: unusable readings come back as ``(reading, reason)`` for the
    caller to quarantine and count.
    """
    out: dict[str, Partial] = {}
    bad: list[tuple[Any, str]] = []
    marks: dict[str, int] = {}
    isfinite = math.isfinite
    # Every reading of a fetch comes here (thousands a second, the forecaster's main cost beside decoding):
    # what repeats from reading to reading (a partial's inner maps, a step's and a partition's key text, a
    # metric's qualified name) is looked up once per fetch, not built again for each reading.
    parts: dict[str, tuple[dict[str, Any], dict[str, int], dict[str, int], dict[str, int], dict[str, Any]]] = {}
    pkeys: dict[int, str] = {}
    bkeys: dict[int, str] = {}
    qualified: dict[str, dict[str, str]] = {}
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
            site = reading.get("site", "")
            if type(utility) is not str or type(sensor) is not str or type(site) is not str:
                raise BadReading("utility, sensor_id and site must be text")
            units = reading.get("units") or {}
            if not isinstance(units, dict):
                raise BadReading("units must be a map")
        except (KeyError, TypeError, ValueError) as exc:
            bad.append((reading, f"forecaster: unusable reading ({type(exc).__name__}: {exc})"))
            continue
        refs = parts.get(zone)
        if refs is None:
            part = out[zone] = {"zone": zone, "site": site, "u": {}, "units": {}, "b": {}, "wm": {}, "off": {}}
            refs = parts[zone] = (part["b"], part["wm"], part["off"], part["u"], part["units"])
        buckets, wm, off, per_utility, part_units = refs
        p = pkeys.get(partition)
        if p is None:
            p = pkeys[partition] = str(partition)
        if ts > marks.get(p, -1):
            marks[p] = ts
        if ts > wm.get(p, -1):
            wm[p] = ts
        if offset > off.get(p, -1):
            off[p] = offset
        per_utility[utility] = per_utility.get(utility, 0) + 1
        step = ts // step_ms
        bkey = bkeys.get(step)
        if bkey is None:
            bkey = bkeys[step] = str(step)
        bucket = buckets.get(bkey)
        if bucket is None:
            bucket = buckets[bkey] = {"n": 0, "m": {}, "s": {}}
        bucket["n"] += 1
        sensors = bucket["s"]
        sens = sensors.get(sensor)
        if sens is None:
            sens = sensors[sensor] = {}
        metrics = bucket["m"]
        names = qualified.get(utility)
        if names is None:
            names = qualified[utility] = {}
        for name, raw in values.items():
            kind = type(raw)
            if kind is float:
                x = raw
            elif kind is int:
                x = float(raw)
            elif kind is bool or not isinstance(raw, (int, float)):
                continue
            else:  # a subclass of int or float (not from JSON, but the contract is any number)
                x = float(raw)
            if not isfinite(x):
                continue
            key = names.get(name)
            if key is None:
                key = names[name] = f"{utility}.{name}"
            if add_squared(metrics, key, x) and name in units:
                part_units[key] = units[name]
            add(sens, key, x)
    return Folded(out, bad, marks)


def merge_bucket(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add one partial step's statistics into another (both dicts as in the module doc)."""
    into["n"] += other["n"]
    merge_into(into["m"], other["m"])
    sensors = into["s"]
    for sensor, accs in other["s"].items():
        mine = sensors.get(sensor)
        if mine is None:
            mine = sensors[sensor] = {}
        merge_into(mine, accs)


def empty_bucket() -> dict[str, Any]:
    return {"n": 0, "m": {}, "s": {}}


DIGITS = re.compile(r"[0-9]{1,18}")


def _all_stats(stats: dict[str, Any], width: int) -> bool:
    """Every value a list of ``width`` finite numbers, its count first and above 0 (:mod:`shared.window_stats`)."""
    isfinite = math.isfinite
    for a in stats.values():
        if type(a) is not list or len(a) != width:
            return False
        for x in a:
            if (type(x) is not float and type(x) is not int) or not isfinite(x):
                return False
        if not a[0] > 0:
            return False
    return True


def _int_map(m: Any) -> bool:
    return isinstance(m, dict) and all(type(v) is int for v in m.values())


def problem(message: Any, max_id_chars: int = 200) -> str:
    """Why a message of forecaster.zone-partials cannot be applied ('' when it can).

    Either a watermark ``{"wm": {partition: ts}}`` or a partial of the shape in the module doc;
    a zone state only ever merges what passes.
    """
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
        if not isinstance(m, dict) or not _all_stats(m, 5):
            return "m must map metrics to [n, sum, sumsq, min, max]"
        if not isinstance(sens, dict):
            return "s must map sensors to metrics to [n, sum, min, max]"
        # Plain loops, not nested all() of generators: a partial holds a step's statistics of every sensor
        # of its zone that reported in the fetch, so at a steady rate there are about as many as readings.
        for per in sens.values():
            if not isinstance(per, dict) or not _all_stats(per, 4):
                return "s must map sensors to metrics to [n, sum, min, max]"
    return ""
