"""The one validation path every reading takes, whatever door it came in by.

:func:`decode` turns wire bytes into a JSON value (or a reason), :func:`validate` turns a
JSON value into a clean :class:`~shared.records.Reading` (timestamp in UTC epoch ms, values
in canonical units, a quality score) or a list of reasons. Both are pure: no clock, no
I/O, no state, so the Kafka agent, the HTTP endpoint, the MQTT bridge and the ``check``
command agree by construction. Per-sensor checks (duplicates, lateness against the
sensor's newest reading) need state and live in :mod:`services.ingest.sensors`.

Reasons are ``"<code>: <detail>"``; the code (before the colon) is what metrics count,
so label cardinality stays bounded whatever the input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from math import isfinite
from typing import Any, final

import orjson

from services.ingest.quality import device_scaled, quality_score
from services.ingest.rules import MetricSpec, Rules
from services.ingest.units import conversion
from shared.records import UTILITIES, Reading

#: Fields of the input contract; anything else goes to ``Reading.extra``.
KNOWN_FIELDS = frozenset({"sensor_id", "ts", "site", "zone", "utility", "asset", "values", "units", "quality", "extra"})
MAX_METRIC_NAME_LEN = 64
# Epoch values at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_MS_THRESHOLD = 1e11
_MAX_TS_MS = 10**14  # year 5138: anything later is not a timestamp

#: Every reason code validation can give, for docs and metric pre-registration.
REASON_CODES = (
    "too_large",
    "malformed_json",
    "malformed_csv",
    "invalid_utf8",
    "lone_surrogate",
    "too_deep",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "invalid_utility",
    "invalid_ts",
    "future_ts",
    "too_old",
    "no_values",
    "too_many_metrics",
    "invalid_metric_name",
    "duplicate_metric",
    "not_a_number",
    "non_finite",
    "invalid_units",
    "unknown_unit",
    "unknown_metric",
    "mapping_error",
    "out_of_range",
    "invalid_quality",
    "low_quality",
    "extra_too_large",
    # stateful, from services.ingest.sensors and the pipeline
    "late",
    "too_many_new_sensors",
    # a bug met by one record: that record is quarantined, the batch goes on
    "internal_error",
)
_KNOWN_CODES = frozenset(REASON_CODES)


def reason_code(reason: str) -> str:
    """The code of a reason, always one of :data:`REASON_CODES` (metric labels never come from free text)."""
    code = reason.split(":", 1)[0]
    return code if code in _KNOWN_CODES else "internal_error"


@final  # check() tells a Validated from a Reading by its exact type
@dataclass(slots=True)
class Validated:
    """The outcome for one input: a clean reading, or the reasons it was refused."""

    reading: Reading | None
    reasons: list[str]
    sensor_id: str | None = None
    unknown_metrics: int = 0

    @property
    def ok(self) -> bool:
        return self.reading is not None


def _int_as_orjson(digits: str) -> int | float:
    """An integer literal as orjson reads it: beyond 64 bits a float (orjson cannot write bigger ints)."""
    value = int(digits)
    return value if -(2**63) <= value < 2**64 else float(value)


_NO_UNITS: dict[str, Any] = {}
# No missing or unknown metrics, from the usual path of _values: one list, only ever read (validate copies none).
_NONE: list[str] = []


def deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests arrays/objects more than ``limit`` levels (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _nesting_bound(raw: bytes | bytearray | memoryview | str) -> int:
    """An upper bound of the nesting depth: the number of opening brackets (C-speed, no parse)."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    data = bytes(raw) if isinstance(raw, memoryview) else raw
    return data.count(b"[") + data.count(b"{")


def decode(
    raw: bytes | bytearray | memoryview | str, max_bytes: int | None = None, max_depth: int | None = None
) -> tuple[Any, str | None]:
    """``(value, None)`` for valid JSON within the limits, else ``(None, reason)``.

    Whatever this returns can be written again by orjson: nesting is checked against
    ``max_depth`` (orjson reads 1024 levels but writes only 254) and text holds no lone
    surrogate. Bare ``NaN``/``Infinity`` are not JSON (orjson refuses them) but devices built
    on permissive encoders send them; such a payload decodes here so that it is refused as
    ``non_finite`` naming the metric, which tells an operator more than ``malformed_json``.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        return None, f"too_large: {len(raw)} bytes (limit {max_bytes})"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        value, error = _decode_lenient(raw, str(exc))
        if error is not None:
            return None, error
    else:
        if max_depth is None:
            return value, None
    if max_depth is not None:
        if type(raw) is bytes:  # _bytes_nesting_bound inline: once per message
            bound = raw.count(b"{") + (raw.count(b"[") if raw.find(b"[") >= 0 else 0)
        else:
            bound = _nesting_bound(raw)
        if bound > max_depth and deeper_than(value, max_depth):
            return None, f"too_deep: arrays/objects nested more than {max_depth} levels"
    return value, None


def _bytes_nesting_bound(raw: bytes) -> int:
    """How deep ``raw`` could nest at most: its ``{`` and ``[``, counted in C. A reading seldom holds an array, and a
    search for ``[`` spares counting them (a byte loop). ``find``, not ``in``: a ``bytes`` operand of ``in`` is
    first tried as an integer (an exception made and cleared in C), 165 against 75 ns on a 350-byte reading."""
    return raw.count(b"{") + (raw.count(b"[") if raw.find(b"[") >= 0 else 0)


def decoded_within(raw: bytes, value: Any, max_bytes: int | None, max_depth: int | None) -> str | None:
    """What :func:`decode` would refuse ``raw`` for, when ``value`` is already what it decodes to (None: nothing).

    For a reading built in the worker and written as ``raw`` (a mapped reading the Kafka source door hands
    the pipeline directly, see :mod:`services.ingest.sources`): the same limits, without parsing it again.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        return f"too_large: {len(raw)} bytes (limit {max_bytes})"
    if max_depth is not None and _bytes_nesting_bound(raw) > max_depth and deeper_than(value, max_depth):
        return f"too_deep: arrays/objects nested more than {max_depth} levels"
    return None


def _decode_lenient(raw: bytes | bytearray | memoryview | str, first_error: str) -> tuple[Any, str | None]:
    """What orjson refused: NaN/Infinity read by the standard library, or the reason it is not JSON."""
    if "not valid UTF-8" in first_error:
        return None, f"invalid_utf8: {first_error}"
    if "surrogate" in first_error:
        return None, f"lone_surrogate: {first_error}"
    try:
        text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        if "NaN" in text or "Infinity" in text:
            value = json.loads(text, parse_int=_int_as_orjson)
        else:
            return None, f"malformed_json: {first_error}"
    except (ValueError, RecursionError, OverflowError):  # an integer beyond a float overflows
        return None, f"malformed_json: {first_error}"
    try:
        # The standard library lets through what orjson would refuse to write again.
        orjson.dumps(value)
    except TypeError as exc:
        if "surrogate" in str(exc):
            return None, "lone_surrogate: a string holds a lone surrogate (\\ud800-\\udfff), which is not Unicode"
        if "Recursion" not in str(exc):
            return None, f"malformed_json: {exc}"
        # too deep for orjson: the caller's depth check names it
    return value, None


def parse_ts(value: Any) -> int | None:
    """UTC epoch milliseconds from ISO 8601 text or epoch seconds/milliseconds; None if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        ms = value if abs(value) >= _MS_THRESHOLD else value * 1000
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        ms = round(value if abs(value) >= _MS_THRESHOLD else value * 1000.0)
    elif isinstance(value, str):
        text = value.strip()
        # fromisoformat also takes bare digits as a compact date; those are not ISO 8601 timestamps here.
        if len(text) < 10 or text.isdigit():
            return None
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = round(dt.timestamp() * 1000)
    else:
        return None
    if ms < 0 or ms >= _MAX_TS_MS:
        return None
    return int(ms)


def _text_field(payload: dict[str, Any], name: str, reasons: list[str], limit: int) -> str:
    value = payload.get(name)
    if type(value) is str and 0 < len(value) <= limit and not value.isspace():
        return value
    if value is None:
        reasons.append(f"missing_field: {name}")
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        reasons.append(f"invalid_field: {name} must be a non-empty string of at most {limit} characters")
        return ""
    return value


def _short(value: Any) -> str:
    """A bounded description of a value for a reason: never the repr of a container (deep ones overflow)."""
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, str):
        text = repr(value[:40])
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        text = f"<integer of {len(str(abs(value)))} digits>" if abs(value) < 10**4000 else "<huge integer>"
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(payload: Any, received_ms: int, rules: Rules, source: str = "kafka") -> Validated:
    """Check and normalise one decoded input. Never raises for any JSON value."""
    checked = check(payload, received_ms, rules, source)
    return checked if type(checked) is Validated else Validated(checked, [], checked.sensor_id)


#: Memo of asset kinds as sent -> as kept (stripped, lower case): a look-up where folding made a new string per reading.
_FOLDED: dict[str, str] = {}


def _fold(asset: str) -> str:
    folded = asset.strip().lower()
    if len(_FOLDED) >= _FOLDED_LIMIT:
        _FOLDED.clear()
    _FOLDED[asset] = folded
    return folded


_FOLDED_LIMIT = 10_000


def _full_scaled(rules: Rules, device_quality: float) -> float:
    """``device_scaled(rules.full_score, device_quality)``, memoised in ``rules.full_scaled``. Equal keys give equal
    answers: 1 and 1.0, 0, 0.0 and -0.0 all scale the same (NaN and bools never get here: validation refuses them)."""
    quality = device_scaled(rules.full_score, device_quality)
    memo = rules.full_scaled
    if len(memo) >= _SCALED_LIMIT:
        memo.clear()
    memo[device_quality] = quality
    return quality


_SCALED_LIMIT = 4096


def check(payload: Any, received_ms: int, rules: Rules, source: str = "kafka") -> Reading | Validated:
    """:func:`validate` for the hot path: the usual outcome, a clean reading with no unknown metric, is the
    :class:`Reading` itself (no :class:`Validated` made for it, ~0.15 µs a reading); anything else the Validated."""
    if not isinstance(payload, dict):
        return Validated(None, [f"not_an_object: got {type(payload).__name__}"])
    reasons: list[str] = []
    limit = rules.max_field_chars
    # The usual case (four plain texts) inline; anything else through _text_field, which says what is wrong.
    get = payload.get
    sensor_id, site, zone, asset = get("sensor_id"), get("site"), get("zone"), get("asset")
    if not (
        type(sensor_id) is str
        and type(site) is str
        and type(zone) is str
        and type(asset) is str
        and 0 < len(sensor_id) <= limit
        and 0 < len(site) <= limit
        and 0 < len(zone) <= limit
        and 0 < len(asset) <= limit
        and not sensor_id.isspace()
        and not site.isspace()
        and not zone.isspace()
        and not asset.isspace()
    ):
        sensor_id = _text_field(payload, "sensor_id", reasons, limit)
        site = _text_field(payload, "site", reasons, limit)
        zone = _text_field(payload, "zone", reasons, limit)
        asset = _text_field(payload, "asset", reasons, limit)
    folded = _FOLDED.get(asset)
    if folded is None:
        folded = _fold(asset)
    asset = folded

    utility = payload.get("utility")
    if utility in UTILITIES:
        pass
    elif utility is None:
        reasons.append("missing_field: utility")
    elif not isinstance(utility, str) or utility.strip().lower() not in UTILITIES:
        reasons.append(f"invalid_utility: {_short(utility)} is not one of {', '.join(UTILITIES)}")
    else:
        utility = utility.strip().lower()

    ts_raw = get("ts")
    if type(ts_raw) is int and _MS_THRESHOLD <= ts_raw < _MAX_TS_MS:
        ts: int | None = ts_raw  # epoch ms, as parse_ts gives it (a mapped reading's, the usual native one's)
    else:
        ts = parse_ts(ts_raw) if ts_raw is not None else None
    if ts_raw is None:
        reasons.append("missing_field: ts")
    elif ts is None:
        reasons.append(f"invalid_ts: {_short(ts_raw)} is not ISO 8601 or epoch seconds/milliseconds")
    else:
        if ts > received_ms + rules.max_future_ms:
            reasons.append(f"future_ts: {ts - received_ms} ms ahead of arrival (limit {rules.max_future_ms} ms)")
        elif rules.max_age_ms and ts < received_ms - rules.max_age_ms:
            reasons.append(f"too_old: {received_ms - ts} ms old on arrival (limit {rules.max_age_ms} ms)")

    device_quality = payload.get("quality")
    if device_quality is not None and (
        isinstance(device_quality, bool)
        or not isinstance(device_quality, (int, float))
        or not 0.0 <= device_quality <= 1.0  # NaN fails this too
    ):
        reasons.append(f"invalid_quality: {_short(device_quality)} is not a number in [0, 1]")
        device_quality = None

    raw_units = get("units")
    values, units, missing, unknown, in_range = _values(get("values"), raw_units, rules, reasons)

    if reasons:
        return Validated(None, reasons, sensor_id or None, len(unknown))

    extra: dict[str, Any] = {}
    given_extra = "extra" in payload
    # No field beyond the contract's, known without looking at every key: the seven fields a valid reading has and
    # the optional ones not null are all there, so a payload of that many keys has no other (else: the set comparison).
    if len(payload) != 7 + (raw_units is not None) + (device_quality is not None) + given_extra and not (
        payload.keys() <= KNOWN_FIELDS  # a set comparison in C; the loop keeps the order sent
    ):
        for key, value in payload.items():
            if key not in KNOWN_FIELDS:
                extra[key] = value
    if given_extra:
        given = payload["extra"]
        if isinstance(given, dict):
            extra.update(given)
        else:
            extra["extra"] = given
    if extra:
        size = len(orjson.dumps(extra))
        if size > rules.max_extra_bytes:
            why = f"extra_too_large: the extra fields take {size} bytes of JSON (limit {rules.max_extra_bytes})"
            return Validated(None, [why], sensor_id, len(unknown))
    if missing:
        extra["missing_metrics"] = missing
    if device_quality is not None:
        extra["device_quality"] = device_quality
    if unknown:
        extra["unknown_metrics"] = unknown

    assert ts is not None  # no reasons means ts parsed
    if (
        in_range == 1.0
        and (received_ms - ts <= rules.stale_after_ms or rules.max_age_ms <= 0)
        and values.keys() >= (rules.expected_known.get((utility, asset)) or rules.expected_for(utility, asset))
    ):
        # what quality_score gives when every part is 1, without working the parts out again
        if device_quality is None:
            quality = rules.full_quality
        else:
            quality = rules.full_scaled.get(device_quality)  # two calls less, once per reading that sends its own
            if quality is None:
                quality = _full_scaled(rules, device_quality)
    else:
        quality = quality_score(values, utility, asset, ts, received_ms, device_quality, rules, in_range)
    if quality < rules.quality_threshold:
        why = f"low_quality: {quality:.3f} below {rules.quality_threshold}"
        return Validated(None, [why], sensor_id, len(unknown))
    # Positional, in Reading's field order: a third of the cost of keywords, once per reading
    # (test_validation checks the fields land where they belong).
    reading = Reading(sensor_id, ts, site, zone, utility, asset, values, units, quality, extra, received_ms, source)
    return reading if not unknown else Validated(reading, reasons, sensor_id, len(unknown))  # reasons: empty here


def _values(
    raw_values: Any, raw_units: Any, rules: Rules, reasons: list[str]
) -> tuple[dict[str, float], dict[str, str], list[str], list[str], float]:
    """Canonical values and units; appends reasons.

    Returns (values, units, missing metrics, unknown metrics, range score): the range part of the
    quality score (:func:`services.ingest.quality.range_score`), worked out here where each value
    meets its spec anyway.
    """
    if raw_values is None:
        reasons.append("missing_field: values")
        return {}, {}, [], [], 1.0
    if not isinstance(raw_values, dict):
        reasons.append(f"invalid_field: values must be an object of metric -> number, got {type(raw_values).__name__}")
        return {}, {}, [], [], 1.0
    if raw_units is None:
        raw_units = _NO_UNITS
    elif not isinstance(raw_units, dict):
        reasons.append(f"invalid_units: units must be an object of metric -> unit, got {type(raw_units).__name__}")
        raw_units = _NO_UNITS
    if len(raw_values) > rules.max_metrics:
        reasons.append(f"too_many_metrics: {len(raw_values)} (limit {rules.max_metrics})")
        return {}, {}, [], [], 1.0

    worst = 1.0
    # The usual reading of all: every metric sent under its canonical name, in its canonical unit (given for each, in
    # the same order), as a float within its hard range. Then the reading's values and units are the ones sent, key
    # for key and in order, and are taken as they are (two dicts fewer built and freed a reading); anything else
    # goes on to the paths below, which would give equal dicts for such a reading.
    if raw_values and len(raw_units) == len(raw_values):
        canonical = rules.canonical_plans
        # No strict=: the lengths are equal (above), and any keyword sends zip() down its slow path (~1,600
        # instructions a reading, callgrind)
        for (raw_name, value), (unit_name, given) in zip(raw_values.items(), raw_units.items()):  # noqa: B905
            if type(value) is not float or unit_name != raw_name:
                break
            hit = canonical.get(raw_name)
            if hit is None or given != hit[0]:
                break
            _, lo, hi, soft_lo, soft_hi, spec = hit
            if not lo <= value <= hi:  # NaN and infinities fail too (the bounds are finite)
                break
            if not soft_lo <= value <= soft_hi:
                score = spec.range_score(value)
                if score < worst:
                    worst = score
        else:
            return raw_values, raw_units, _NONE, _NONE, worst
        worst = 1.0
    values: dict[str, float] = {}
    units: dict[str, str] = {}
    # The usual reading first: every metric a known spelling in a unit seen before, a number within its
    # hard range. Anything else (a first sighting, a unit missing or not text, a duplicate, a value out of
    # range or not a finite number) starts again on the general path below, which says what is wrong:
    # nothing here appends a reason, so the outcome is the general path's by construction.
    fast = rules.flat_plans
    for raw_name, value in raw_values.items():
        kind = type(value)
        if kind is not float:
            if kind is not int:
                break
            try:
                value = float(value)
            except OverflowError:
                break
        if raw_units:
            given = raw_units.get(raw_name)
            if given is None:  # no unit sent for this one (units for others): as without units,
                hit = fast.get(raw_name)
                if hit is not None and hit[0] != raw_name and raw_units.get(hit[0]) is not None:
                    break  # unless its unit came under the canonical name
            elif type(given) is str:
                hit = fast.get((raw_name, given))
            else:
                break
        else:
            hit = fast.get(raw_name)
        if hit is None:
            break
        name, unit, lo, hi, soft_lo, soft_hi, conv, spec = hit
        if name in values:
            break
        if conv is not None:
            value = value * conv[0] + conv[1]
        if not lo <= value <= hi:  # NaN and infinities fail too (the bounds are finite)
            break
        if not soft_lo <= value <= soft_hi:
            score = spec.range_score(value)
            if score < worst:
                worst = score
        values[name] = value
        units[name] = unit
    else:
        if values:
            return values, units, _NONE, _NONE, worst
    values = {}
    units = {}
    worst = 1.0
    missing: list[str] = []
    unknown: list[str] = []
    known_names = rules.valid_names
    plans = rules.unit_plans
    for raw_name, value in raw_values.items():
        name = known_names.get(raw_name)
        if name is None:
            if not isinstance(raw_name, str) or len(raw_name) > MAX_METRIC_NAME_LEN or not raw_name.strip():
                reasons.append(f"invalid_metric_name: {_short(raw_name)}")
                continue
            name = rules.canonical_name(raw_name)
        if name in values or name in missing:
            reasons.append(f"duplicate_metric: {raw_name!r} is {name} again")
            continue
        kind = type(value)
        if kind is float:
            number = value
        elif value is None:
            # A device that could not measure one metric: the rest of the reading is still good.
            missing.append(name)
            continue
        elif kind is bool or not isinstance(value, (int, float)):
            if isinstance(value, str) and value.strip().lower().lstrip("+-") in {"nan", "inf", "infinity"}:
                reasons.append(f"non_finite: {raw_name}={_short(value)}")
            else:
                reasons.append(f"not_a_number: {raw_name}={_short(value)}")
            continue
        else:
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
        if not isfinite(number):
            reasons.append(f"non_finite: {raw_name}={number}")
            continue
        given = raw_units.get(raw_name) if raw_units else None
        if given is None and raw_units and raw_name != name:
            given = raw_units.get(name)
        if given is not None and not isinstance(given, str):
            reasons.append(f"invalid_units: unit of {raw_name} must be a string, got {_short(given)}")
            continue
        plan = plans.get(raw_name if given is None else (raw_name, given))
        if plan is None:
            plan = unit_plan(rules, raw_name, name, given)
        spec, conv, text = plan
        if spec is None:
            if conv is None:  # refused: text is the reason
                reasons.append(text)  # type: ignore[arg-type]
                continue
            unknown.append(name)
            values[name] = number
            if text:
                units[name] = text
            continue
        if conv is not None:
            number = number * conv[0] + conv[1]
        if not spec.lo <= number <= spec.hi:
            shown = f"{number:.6g} {spec.unit}"
            reasons.append(f"out_of_range: {name}={shown} outside [{spec.lo:g}, {spec.hi:g}]")
            continue
        if not spec.soft_lo <= number <= spec.soft_hi:
            score = spec.range_score(number)
            if score < worst:
                worst = score
        values[name] = number
        units[name] = spec.unit
    if not values and not reasons:
        reasons.append("no_values: no metric with a number" + (f" (missing: {', '.join(missing)})" if missing else ""))
    return values, units, missing, unknown, worst


#: What a metric spelling with a given unit (or none) comes to: (spec, conversion, text). A known metric:
#: (its spec, (scale, offset) or None when the value is already in its unit, None); an unknown one accepted:
#: (None, (1.0, 0.0), its unit or ""); refused: (None, None, the reason).
UnitPlan = tuple[MetricSpec | None, tuple[float, float] | None, str | None]


def unit_plan(rules: Rules, raw_name: str, name: str, given: str | None) -> UnitPlan:
    """The plan of ``raw_name`` (canonical ``name``) sent in unit ``given`` (None: no unit sent); memoised in rules."""
    unit = given
    if unit is None and raw_name != name:
        unit = rules.named_units.get(raw_name)
    spec = rules.metrics.get(name)
    plan: UnitPlan
    if spec is None:
        if rules.strict_unknown:
            why = f"unknown_metric: {_short(raw_name)} is not a metric of the ranges file (unknown metrics are strict)"
            plan = (None, None, why)
        else:
            plan = (None, (1.0, 0.0), unit or "")
    elif unit is not None and unit != spec.unit:
        conv = conversion(spec.unit, unit)
        if conv is None:
            plan = (None, None, f"unknown_unit: {_short(unit)} is not a unit of {name} (canonical {spec.unit})")
        else:
            plan = (spec, conv, None)
    else:
        plan = (spec, None, None)
    if given is None or len(given) <= 64:  # a unit longer than any real one is not worth memory
        plans = rules.unit_plans
        flat = rules.flat_plans
        if len(plans) >= _PLANS_LIMIT:
            plans.clear()
            flat.clear()
        key = raw_name if given is None else (raw_name, given)
        plans[key] = plan
        spec, conv, _ = plan
        if spec is not None and isfinite(spec.lo) and isfinite(spec.hi):
            flat[key] = (name, spec.unit, spec.lo, spec.hi, spec.soft_lo, spec.soft_hi, conv, spec)
            if given is not None and conv is None and raw_name == name:  # then given == spec.unit
                rules.canonical_plans[name] = (spec.unit, spec.lo, spec.hi, spec.soft_lo, spec.soft_hi, spec)
    return plan


_PLANS_LIMIT = 10_000
