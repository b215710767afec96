"""Metric names that carry their unit: ``pressure_kpa``, ``flow_m3h``, ``density_kg_m3``, ``total_flow_m3``.

Devices and historians often put the unit into the name instead of a ``units`` object. The
grammar (lower case, ``_`` between words)::

    name      = [counter "_"] [rate "_"] stem ["_" "total"] "_" unit
    counter   = "total" | "cumulative" | "cum"       -> the counter that integrates the stem
    rate      = "hourly" | "daily" | "minutely"      -> the unit is per hour / day / minute
    stem      = a metric or alias of ranges.yaml (``pressure_diff``, ``temp``, ``electricity``)
    unit      = one token (``kpa``, ``psi``, ``c``, ``m3``, ``kwh``) or a compact rate
                (``m3h``, ``lps``, ``lpm``, ``gph``), or two tokens read as a quotient
                (``kg_m3`` = kg/m3, ``l_s`` = l/s, ``m3_h`` = m3/h)

A name resolves only when the unit is a unit of the stem's metric (``units.conversion``), so
``flow_m3`` is not a flow but ``hourly_flow_m3`` (m3 per hour) is, and ``total_flow_m3`` is
the ``volume_total`` counter (``counter_of: [flow, volume]`` in ranges.yaml). A name that does
not resolve is an unknown metric (see the unknown-metric policy), never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.ingest.units import conversion

#: Compact unit tokens that are not spellings :func:`services.ingest.units.normalise_unit` knows.
COMPACT_UNITS = {
    "m3h": "m3/h",
    "m3s": "m3/s",
    "m3d": "m3/d",
    "lps": "l/s",
    "lpm": "l/min",
    "lph": "l/h",
    "gph": "gal/h",
    "cmh": "m3/h",
    "degc": "c",
    "degf": "f",
}
COUNTER_WORDS = frozenset({"total", "cumulative", "cum"})
RATE_WORDS = {"hourly": "/h", "daily": "/d", "minutely": "/min"}


def parse(
    name: str,
    units_of: Mapping[str, str],
    aliases: Mapping[str, str],
    counter_twin: Mapping[str, str],
) -> tuple[str, str] | None:
    """``(metric, unit as named)`` for a unit-suffixed name, or None when the grammar does not apply.

    ``units_of`` maps each known metric to its canonical unit; ``counter_twin`` maps a metric to
    the counter that integrates it (``flow`` -> ``volume_total``).
    """
    tokens = name.strip().split("_")
    if len(tokens) < 2 or not all(tokens):
        return None
    for width in (1, 2):
        if len(tokens) <= width:
            break
        unit_tokens = tokens[-width:]
        if width == 1:
            unit = COMPACT_UNITS.get(unit_tokens[0].lower(), unit_tokens[0])
        else:
            unit = "/".join(unit_tokens)
        found = _resolve_stem([t.lower() for t in tokens[:-width]], unit, units_of, aliases, counter_twin)
        if found is not None:
            return found
    return None


def _resolve_stem(
    words: list[str],
    unit: str,
    units_of: Mapping[str, str],
    aliases: Mapping[str, str],
    counter_twin: Mapping[str, str],
) -> tuple[str, str] | None:
    counter = False
    if words and words[0] in COUNTER_WORDS:
        counter, words = True, words[1:]
    elif len(words) > 1 and words[-1] in COUNTER_WORDS:
        counter, words = True, words[:-1]
    if words and words[0] in RATE_WORDS:
        if counter:
            return None  # "total hourly flow" is not a quantity this grammar reads
        unit, words = unit + RATE_WORDS[words[0]], words[1:]
    if not words:
        return None
    stem = "_".join(words)
    metric = stem if stem in units_of else aliases.get(stem)
    if metric is None:
        return None
    if counter:
        metric = counter_twin.get(metric, metric if metric in counter_twin.values() else "")
        if not metric:
            return None
    canonical = units_of.get(metric)
    if canonical is None or conversion(canonical, unit) is None:
        return None
    return metric, unit
