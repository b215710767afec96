"""Named payload mappings: other systems' message formats turned into flowwatch readings.

A mapping (``mappings.yaml`` beside ``ranges.yaml``; more or replacements with
``FLOWWATCH_INGEST_MAPPINGS_FILE``) says where a message keeps its time and in which format
and zone, how sensor_id / site / zone / utility / asset are built from its fields and from
the MQTT topic's segments, and which fields are metrics — so one message can become many
readings. The doors apply it before readings.raw (HTTP ``?mapping=NAME``, MQTT by topic
filter, Kafka by source topic); the readings it makes then take the one validation path
like any native reading. Anything a mapping cannot read is a ``mapping_error`` naming the
mapping and the field.

Templates are text with ``{placeholders}``: a field path (``location``, ``sensors.pressure``),
an MQTT topic segment (``topic[2]``, ``topic[-1]``), or a channel group (scada-wide); an
optional filter ``|lower``, ``|upper`` or ``|slug`` (lower case, runs of other characters
than letters and digits as one ``-``). Text without braces is a literal.

:func:`load` validates every mapping at start; errors name the mapping and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import orjson
import yaml

from services.ingest import timeformats
from services.ingest.payloads import Item, key_of
from services.ingest.rules import ConfigError, Rules
from services.ingest.settings import DEFAULT_MAPPINGS_FILE
from services.ingest.validation import decode
from shared.records import UTILITIES

#: Most readings one message may become (a bound on what one input can cost).
MAX_READINGS_PER_MESSAGE = 10_000
IDENTITY_FIELDS = ("sensor_id", "site", "zone", "utility", "asset")
_READING_KEYS = frozenset({*IDENTITY_FIELDS, "values", "values_from", "exclude", "units", "quality", "quality_scale"})
_MAPPING_KEYS = frozenset({"description", "mqtt", "kafka", "ts", "defaults", "readings", "channels"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOPIC = re.compile(r"^topic\[(-?\d+)\]$")
_SLUG = re.compile(r"[^a-z0-9]+")
_FILTERS = {"lower": str.lower, "upper": str.upper, "slug": lambda s: _SLUG.sub("-", s.lower()).strip("-")}
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class MappingConfigError(ConfigError):
    """A mappings file that cannot be used; the message names the mapping and the key."""


class MappingError(ValueError):
    """A message the mapping cannot read; ``str()`` is the quarantine reason."""

    def __init__(self, mapping: str, where: str, detail: str) -> None:
        super().__init__(f"mapping_error: {mapping}: {where}: {detail}")
        self.mapping = mapping
        self.where = where


# --- templates and paths ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """One placeholder: a field path, a topic segment, or a channel group; with an optional filter."""

    text: str
    path: tuple[str, ...] = ()
    segment: int | None = None
    transform: str = ""


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[str | Ref, ...]
    literal: str | None = None  # the text, when the template has no placeholder (set by parse_template)
    # (prefix, ref, suffix) when the template is one placeholder between literals, the usual case
    # ("gas-{location|slug}"): rendered without the general loop (set by parse_template)
    one: tuple[str, Ref, str] | None = None


def parse_ref(text: str, where: str) -> Ref:
    body, _, transform = text.partition("|")
    body, transform = body.strip(), transform.strip()
    if transform and transform not in _FILTERS:
        raise MappingConfigError(f"{where}: unknown filter |{transform} (use {', '.join(_FILTERS)})")
    match = _TOPIC.match(body)
    if match:
        return Ref(text, segment=int(match.group(1)), transform=transform)
    path = tuple(body.split("."))
    if not body or not all(path):
        raise MappingConfigError(f"{where}: {text!r} is not a field path (a.b.c) nor topic[N]")
    return Ref(text, path=path, transform=transform)


def parse_template(raw: Any, where: str) -> Template:
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise MappingConfigError(f"{where}: expected text (a template), got {type(raw).__name__}")
    text = str(raw)
    parts: list[str | Ref] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(parse_ref(match.group(1), where))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    if any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
        raise MappingConfigError(f"{where}: unbalanced braces in {text!r}")
    parts = parts or [""]
    refs = [i for i, p in enumerate(parts) if isinstance(p, Ref)]
    one = None
    if len(refs) == 1:
        i = refs[0]
        one = ("".join(parts[:i]), parts[i], "".join(parts[i + 1 :]))  # type: ignore[arg-type]
    return Template(tuple(parts), parts[0] if len(parts) == 1 and isinstance(parts[0], str) else None, one)  # type: ignore[arg-type]


def lookup(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested objects; KeyError naming the first missing step."""
    node = obj
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(".".join(path[: i + 1]))
        node = node[key]
    return node


@dataclass(slots=True)
class Context:
    """What templates read: the message, the MQTT topic's segments, channel groups."""

    mapping: str
    message: dict[str, Any]
    topic: list[str] | None = None
    groups: dict[str, str] = field(default_factory=dict)

    def ref(self, ref: Ref, where: str) -> Any:
        path = ref.path
        if len(path) == 1 and not self.groups:  # a top-level field, the usual case
            message = self.message
            key = path[0]
            if key in message:
                return message[key]
            raise MappingError(self.mapping, where, f"missing field {key}")
        if ref.segment is not None:
            if self.topic is None:
                raise MappingError(
                    self.mapping, where, f"{{{ref.text}}} needs an MQTT topic, and this message has none"
                )
            try:
                return self.topic[ref.segment]
            except IndexError:
                raise MappingError(self.mapping, where, f"the topic has no segment {ref.segment}") from None
        if len(ref.path) == 1 and ref.path[0] in self.groups:
            return self.groups[ref.path[0]]
        try:
            return lookup(self.message, ref.path)
        except KeyError as exc:
            raise MappingError(self.mapping, where, f"missing field {exc.args[0]}") from None

    def render(self, template: Template, where: str) -> str:
        literal = template.literal
        if literal is not None:
            return literal
        one = template.one
        if one is not None:
            return one[0] + self._text(one[1], where) + one[2]
        return "".join(part if isinstance(part, str) else self._text(part, where) for part in template.parts)

    def _text(self, ref: Ref, where: str) -> str:
        value = self.ref(ref, where)
        if type(value) is not str:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise MappingError(self.mapping, where, f"{{{ref.text}}} is {type(value).__name__}, not text")
            value = str(value)
        return filtered(ref.transform, value) if ref.transform else value


#: filter -> {text -> filtered text}
_FILTERED: dict[str, dict[str, str]] = {}


def filtered(transform: str, text: str) -> str:
    """``text`` through a template filter; memoised when short (a fleet repeats its station and building names)."""
    if len(text) > 80:
        return _FILTERS[transform](text)
    memo = _FILTERED.setdefault(transform, {})
    out = memo.get(text)
    if out is None:
        out = _FILTERS[transform](text)
        if len(memo) >= 16_384:
            memo.clear()
        memo[text] = out
    return out


def number(value: Any) -> Any:
    """Numbers sent as text (CSV cells, some gateways) read as numbers; anything else unchanged."""
    if type(value) is str:
        text = value.strip()
        if not text:
            return None  # an empty cell is a missing value
        try:
            parsed = float(text)
        except ValueError:
            return value  # validation names it (not_a_number)
        return parsed if math.isfinite(parsed) else value
    return value


# --- compiling: a mapping's readings as closures --------------------------------------------

#: Reads one value out of a message (and its MQTT topic's segments); raises MappingError naming the key.
Getter = Callable[[dict[str, Any], "list[str] | None"], Any]
#: Makes one native reading of a message, given its UTC epoch ms.
ReadingPlan = Callable[[dict[str, Any], "list[str] | None", int], dict[str, Any]]


def _getter(mapping: str, ref: Ref, where: str) -> Getter:
    """A closure reading ``ref`` (as :meth:`Context.ref` without channel groups) with its errors."""
    if ref.segment is not None:
        segment, text = ref.segment, ref.text

        def segment_of(message: dict[str, Any], topic: list[str] | None) -> Any:
            if topic is None:
                raise MappingError(mapping, where, f"{{{text}}} needs an MQTT topic, and this message has none")
            try:
                return topic[segment]
            except IndexError:
                raise MappingError(mapping, where, f"the topic has no segment {segment}") from None

        return segment_of
    path = ref.path
    if len(path) == 1:
        key = path[0]

        def field_of(message: dict[str, Any], topic: list[str] | None) -> Any:
            try:
                return message[key]
            except KeyError:
                raise MappingError(mapping, where, f"missing field {key}") from None

        return field_of

    def path_of(message: dict[str, Any], topic: list[str] | None) -> Any:
        try:
            return lookup(message, path)
        except KeyError as exc:
            raise MappingError(mapping, where, f"missing field {exc.args[0]}") from None

    return path_of


def _text_getter(mapping: str, ref: Ref, where: str, prefix: str = "", suffix: str = "") -> Getter:
    """A closure giving ``prefix`` + ``ref`` as text through its filter + ``suffix`` (as :meth:`Context.render`
    of a template with one placeholder)."""
    transform, text = ref.transform, ref.text
    affixed = bool(prefix or suffix)
    if ref.segment is None and len(ref.path) == 1:
        # A top-level field, the usual placeholder: one closure, no call per step.
        key = ref.path[0]
        memo = _FILTERED.setdefault(transform, {}) if transform else None

        def field_text(message: dict[str, Any], topic: list[str] | None) -> str:
            try:
                value = message[key]
            except KeyError:
                raise MappingError(mapping, where, f"missing field {key}") from None
            if type(value) is not str:
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise MappingError(mapping, where, f"{{{text}}} is {type(value).__name__}, not text")
                value = str(value)
            if memo is not None:
                hit = memo.get(value)
                value = hit if hit is not None else filtered(transform, value)
            return prefix + value + suffix if affixed else value

        return field_text
    get = _getter(mapping, ref, where)

    def text_of(message: dict[str, Any], topic: list[str] | None) -> str:
        value = get(message, topic)
        if type(value) is not str:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise MappingError(mapping, where, f"{{{text}}} is {type(value).__name__}, not text")
            value = str(value)
        value = filtered(transform, value) if transform else value
        return prefix + value + suffix if affixed else value

    return text_of


def _template_getter(mapping: str, template: Template, where: str) -> Getter:
    """A closure rendering ``template`` (as :meth:`Context.render`)."""
    literal = template.literal
    if literal is not None:
        return lambda message, topic: literal
    if template.one is not None:
        prefix, ref, suffix = template.one
        return _text_getter(mapping, ref, where, prefix, suffix)
    parts = tuple(
        (lambda message, topic, p=part: p) if isinstance(part, str) else _text_getter(mapping, part, where)
        for part in template.parts
    )
    return lambda message, topic: "".join(part(message, topic) for part in parts)


def _compile_reading(mapping: str, spec: ReadingSpec) -> ReadingPlan:
    """One reading of a mapping as a closure: the same dict, keys in the same order, the same errors."""
    # The reading starts as a copy of a dict holding the literal fields, with every key in its final
    # order (identity, ts, values, units, quality: as the mapping wrote them before it was compiled).
    base: dict[str, Any] = {name: t.literal for name, t in spec.identity.items()}
    base |= {"ts": 0, "values": None}
    if spec.units:
        base["units"] = None
    if spec.quality is not None:
        base["quality"] = None
    identity = tuple(
        (name, _template_getter(mapping, t, name)) for name, t in spec.identity.items() if t.literal is None
    )
    values_from = _getter(mapping, spec.values_from, "values_from") if spec.values_from is not None else None
    source_text = spec.values_from.text if spec.values_from is not None else ""
    exclude = spec.exclude
    fields = tuple((metric, _getter(mapping, ref, f"values.{metric}")) for metric, ref in spec.values.items())
    units = tuple((metric, _template_getter(mapping, t, f"units.{metric}")) for metric, t in spec.units.items())
    quality = _getter(mapping, spec.quality, "quality") if spec.quality is not None else None
    quality_text = spec.quality.text if spec.quality is not None else ""
    scale = spec.quality_scale

    def reading_of(message: dict[str, Any], topic: list[str] | None, ts: int) -> dict[str, Any]:
        reading = base.copy()
        for name, get in identity:
            reading[name] = get(message, topic)
        reading["ts"] = ts
        if values_from is not None:
            source = values_from(message, topic)
            if not isinstance(source, dict):
                why = f"expected an object of metrics, got {type(source).__name__}"
                raise MappingError(mapping, source_text, why)
            if exclude:
                values = {k: v if type(v) is not str else number(v) for k, v in source.items() if k not in exclude}
            elif str not in map(type, source.values()):  # numbers as sent, the usual case: a copy in C
                values = dict(source)
            else:
                values = {k: v if type(v) is not str else number(v) for k, v in source.items()}
        else:
            values = {}
        for metric, get in fields:
            values[metric] = number(get(message, topic))
        reading["values"] = values
        if units:
            reading["units"] = {metric: get(message, topic) for metric, get in units}
        if quality is not None:
            value = number(quality(message, topic))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MappingError(mapping, quality_text, f"quality must be a number, got {type(value).__name__}")
            reading["quality"] = value / scale
        return reading

    return reading_of


def _size_bound(specs: tuple[ReadingSpec, ...]) -> tuple[int, int] | None:
    """``(fixed, per_byte)``: the native JSON of any reading of ``specs`` that a message of ``n`` bytes (decoded
    within the depth limit) becomes is at most ``fixed + per_byte * n`` bytes and no deeper than the limit.

    So the Kafka source door can hand such a reading on without writing it (:func:`expand`, ``lazy``). Each value a
    reading takes from the message is written in at most 8 times the bytes it took there (a number: at most 24
    characters, from at least 3 — ``1e5`` -> ``100000.0``, ``"1"`` -> ``1.0``, ``0`` -> ``"0"``; text at most 3
    times, a case filter's longest expansion, as orjson escapes no more than JSON text must), each such value at
    most the whole message; literal text at most 6 times its UTF-8 (``\\u00XX`` escapes); ``ts`` an integer of 64
    bits (the caller checks), ``quality`` a float. None when a reading can nest deeper than its message (a metric
    read from a top-level field sits one level deeper than it did; ``values_from`` members sit where they did) or
    holds an MQTT topic's segment.
    """
    fixed = 64  # braces, and ts (20 digits at most) and quality (24 characters at most)
    refs = 0
    for spec in specs:
        if any(len(ref.path) < 2 for ref in spec.values.values()):
            return None
        templates = [*spec.identity.values(), *spec.units.values()]
        if any(isinstance(part, Ref) and part.segment is not None for t in templates for part in t.parts):
            return None  # an MQTT topic's segment is not in the message (and the Kafka door has no topic)
        names = [*spec.identity, *spec.values, *spec.units, "ts", "values", "units", "quality"]
        literal = sum(len(part.encode()) for t in templates for part in t.parts if isinstance(part, str))
        literal += sum(len(name.encode()) for name in names)
        fixed += 6 * literal + 8 * len(names) + 4 * len(templates)
        refs += sum(1 for t in templates for part in t.parts if isinstance(part, Ref))
        refs += len(spec.values) + (spec.values_from is not None) + (spec.quality is not None)
    return fixed, 8 * refs


# --- the mapping ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadingSpec:
    identity: dict[str, Template]
    values: dict[str, Ref]  # metric name as sent -> field path
    values_from: Ref | None  # an object whose every member is a metric
    exclude: frozenset[str]
    units: dict[str, Template]
    quality: Ref | None
    quality_scale: float


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Wide rows: columns matching ``pattern`` are channels, grouped into one reading per sensor_id."""

    pattern: re.Pattern[str]
    lookups: dict[str, dict[str, str]]  # group -> {value as matched -> value used}
    reading: dict[str, Template]
    units: dict[str, str]  # metric -> the unit its channels are in


@dataclass(frozen=True, slots=True)
class PayloadMapping:
    name: str
    description: str
    mqtt: tuple[str, ...]
    kafka: tuple[str, ...]
    ts_field: tuple[str, ...]
    ts_format: str
    tz: tzinfo
    readings: tuple[ReadingSpec, ...]
    channels: ChannelSpec | None

    # The mapping compiled once into a plan of closures (see :func:`_compile_reading`): the spec is
    # not interpreted again per message. Not a field: two equal mappings compare equal.
    _plans: tuple[ReadingPlan, ...] = field(default=(), init=False, compare=False, repr=False)
    _ts: Callable[[Any], int] = field(default=int, init=False, compare=False, repr=False)
    # (fixed, per_byte) of _size_bound; None for channels (scada-wide) and readings that can nest deeper
    _bound: tuple[int, int] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        plans = tuple(_compile_reading(self.name, spec) for spec in self.readings)
        object.__setattr__(self, "_plans", plans)
        object.__setattr__(self, "_ts", timeformats.parser(self.ts_format, self.tz))
        object.__setattr__(self, "_bound", _size_bound(self.readings) if self.channels is None else None)

    def within(self, message_bytes: int, max_bytes: int) -> bool:
        """True when every reading a message of ``message_bytes`` (decoded within the limits) becomes is, written
        as JSON, within ``max_bytes`` and the depth limit, for a 64-bit ``ts`` (see :func:`_size_bound`)."""
        bound = self._bound
        return bound is not None and bound[0] + bound[1] * message_bytes <= max_bytes

    def apply(self, message: Any, topic: str | None = None) -> list[dict[str, Any]]:
        """The native readings of one decoded message; :class:`MappingError` when it cannot be read."""
        if not isinstance(message, dict):
            raise MappingError(self.name, "message", f"expected a JSON object, got {type(message).__name__}")
        ts_field = self.ts_field
        try:
            raw_ts = message[ts_field[0]] if len(ts_field) == 1 else lookup(message, ts_field)
        except KeyError as exc:
            missing = exc.args[0] if len(ts_field) > 1 else ts_field[0]
            raise MappingError(self.name, ".".join(ts_field), f"missing field {missing}") from None
        try:
            ts = self._ts(raw_ts)
        except (timeformats.TimeFormatError, OverflowError, ValueError) as exc:
            raise MappingError(self.name, ".".join(ts_field), str(exc)) from None
        segments = topic.split("/") if topic is not None else None
        out = [plan(message, segments, ts) for plan in self._plans]
        if self.channels is not None:
            ctx = Context(self.name, message, segments)
            out.extend(self._channels(self.channels, ctx, ts))
        if len(out) > MAX_READINGS_PER_MESSAGE:
            raise MappingError(self.name, "message", f"{len(out)} readings (limit {MAX_READINGS_PER_MESSAGE})")
        return out

    def _channels(self, spec: ChannelSpec, ctx: Context, ts: int) -> Iterator[dict[str, Any]]:
        grouped: dict[str, dict[str, Any]] = {}
        for column, cell in ctx.message.items():
            match = spec.pattern.match(column) if isinstance(column, str) else None
            if match is None:
                continue
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            for group, table in spec.lookups.items():
                if group in groups:
                    groups[group] = table.get(groups[group], groups[group])
            ctx.groups = groups
            reading = {name: ctx.render(t, f"channels.{column}.{name}") for name, t in spec.reading.items()}
            current = grouped.get(reading["sensor_id"])
            if current is None:
                current = grouped[reading["sensor_id"]] = {**reading, "ts": ts, "values": {}, "units": {}}
            metric = groups["metric"]
            current["values"][metric] = number(cell)
            if metric in spec.units:
                current["units"][metric] = spec.units[metric]
        ctx.groups = {}
        yield from grouped.values()


#: The integers orjson writes (a mapped reading's ts must be one to be left unwritten).
_INT_LO, _INT_HI = -(2**63), 2**64


def expand(
    mapping: PayloadMapping, raw: bytes, rules: Rules, topic: str | None = None, lazy: bool = False
) -> tuple[list[Item], list[str], Any]:
    """``(readings, [], message)``: the readings (native JSON, keyed by sensor_id) one message becomes, or
    ``([], reasons, message)`` when it cannot; ``message`` is the decoded message (None when not decoded).

    The message is decoded within the same limits as a native reading (``too_large``,
    ``too_deep``, ``malformed_json``, ...), so a mapped door is no wider than the native one.

    ``lazy`` (the Kafka source door, which hands most readings to the pipeline as dicts): readings known to be
    within the size and depth limits without writing them (:meth:`PayloadMapping.within`) get ``value`` None;
    :func:`services.ingest.payloads.written` writes one when it has to travel as bytes after all.
    """
    message, error = decode(raw, rules.max_line_bytes, rules.max_json_depth)
    if error is not None:
        return [], [error], None
    try:
        readings = mapping.apply(message, topic)
    except MappingError as exc:
        return [], [str(exc)], message
    limit = rules.max_field_chars
    if lazy and readings and mapping.within(len(raw), rules.max_line_bytes) and _INT_LO <= readings[0]["ts"] < _INT_HI:
        return [Item(None, key_of(r, limit), None, 0, r) for r in readings], [], message
    # Everything in a mapped reading came out of decode (orjson-writable) or is text or a number made here.
    return [Item(orjson.dumps(r), key_of(r, limit), None, 0, r) for r in readings], [], message


def table(known: Mapping[str, PayloadMapping]) -> str:
    """The mappings as a markdown table (``python -m services.ingest mappings``, the README and docs/ingest.md)."""
    lines = [
        "| mapping | time (field, format, zone) | MQTT topic filters | Kafka source topics | readings per message | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mp in known.values():
        per = str(len(mp.readings)) if mp.channels is None else "one per asset (channels)"
        mqtt = ", ".join(f"`{f}`" for f in mp.mqtt) or "-"
        kafka = ", ".join(f"`{t}`" for t in mp.kafka) or "-"
        lines.append(
            f"| `{mp.name}` | `{'.'.join(mp.ts_field)}`, `{mp.ts_format}`, {mp.tz} | {mqtt} | {kafka} | {per} | {mp.description} |"
        )
    return "\n".join(lines)


# --- loading and validation --------------------------------------------------------------


def load(path: Path | str | None = None) -> dict[str, PayloadMapping]:
    """The built-in mappings, plus (or replaced by name by) those of ``path``; validated."""
    raw = _read(DEFAULT_MAPPINGS_FILE)
    if path and Path(path).resolve() != DEFAULT_MAPPINGS_FILE.resolve():
        raw.update(_read(Path(path)))
    return from_mapping(raw)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise MappingConfigError(f"cannot read mappings file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise MappingConfigError(f"mappings file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("mappings") or {}, Mapping):
        raise MappingConfigError(f"mappings file {path}: expected `mappings:` with a mapping of name -> mapping")
    return dict(data.get("mappings") or {})


def from_mapping(raw: Mapping[str, Any]) -> dict[str, PayloadMapping]:
    out = {str(name): _parse(str(name), spec) for name, spec in raw.items()}
    seen: dict[str, str] = {}
    for m in out.values():
        for door, names in (("mqtt", m.mqtt), ("kafka", m.kafka)):
            for n in names:
                other = seen.setdefault(f"{door}:{n}", m.name)
                if other != m.name:
                    raise MappingConfigError(f"mappings.{m.name}.{door}: {n!r} is already routed to mapping {other}")
    return out


def _parse(name: str, spec: Any) -> PayloadMapping:
    where = f"mappings.{name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
        raise MappingConfigError(f"{where}: a mapping name is lower-case letters, digits, - and _ (at most 64)")
    if not isinstance(spec, Mapping):
        raise MappingConfigError(f"{where}: expected a mapping with ts and readings or channels")
    _no_unknown_keys(spec, _MAPPING_KEYS, where)
    ts = spec.get("ts")
    if not isinstance(ts, Mapping) or not isinstance(ts.get("field"), str):
        raise MappingConfigError(f"{where}.ts: expected {{field: <path>, format: <format>, tz: <zone>}}")
    _no_unknown_keys(ts, frozenset({"field", "format", "tz"}), f"{where}.ts")
    fmt = str(ts.get("format", "iso"))
    try:
        timeformats.check_format(fmt)
    except ValueError as exc:
        raise MappingConfigError(f"{where}.ts.format: {exc}") from None
    try:
        tz = timeformats.zone(str(ts.get("tz", "UTC")))
    except ValueError as exc:
        raise MappingConfigError(f"{where}.ts.tz: {exc}") from None
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise MappingConfigError(f"{where}.defaults: expected a mapping of field -> template")
    _no_unknown_keys(defaults, frozenset(IDENTITY_FIELDS), f"{where}.defaults")
    readings_raw = spec.get("readings") or []
    if not isinstance(readings_raw, list):
        raise MappingConfigError(f"{where}.readings: expected a list of readings")
    readings = tuple(
        _parse_reading({**defaults, **r} if isinstance(r, Mapping) else r, f"{where}.readings[{i}]")
        for i, r in enumerate(readings_raw)
    )
    channels = _parse_channels(spec["channels"], defaults, f"{where}.channels") if "channels" in spec else None
    if not readings and channels is None:
        raise MappingConfigError(f"{where}: needs `readings` (a list) or `channels`")
    return PayloadMapping(
        name=name,
        description=str(spec.get("description", "")),
        mqtt=tuple(_mqtt_filter(f, f"{where}.mqtt") for f in _names(spec.get("mqtt"), f"{where}.mqtt")),
        kafka=tuple(_kafka_topic(t, f"{where}.kafka") for t in _names(spec.get("kafka"), f"{where}.kafka")),
        ts_field=_field(ts["field"], f"{where}.ts.field").path,
        ts_format=fmt,
        tz=tz,
        readings=readings,
        channels=channels,
    )


def _parse_reading(raw: Any, where: str) -> ReadingSpec:
    if not isinstance(raw, Mapping):
        raise MappingConfigError(f"{where}: expected a mapping")
    _no_unknown_keys(raw, _READING_KEYS, where)
    identity = _identity(raw, where)
    values_raw = raw.get("values") or {}
    if not isinstance(values_raw, Mapping):
        raise MappingConfigError(f"{where}.values: expected a mapping of metric -> field path")
    values = {str(k): _field(v, f"{where}.values.{k}") for k, v in values_raw.items()}
    values_from = _field(raw["values_from"], f"{where}.values_from") if "values_from" in raw else None
    if not values and values_from is None:
        raise MappingConfigError(f"{where}: needs `values` (metric -> field) or `values_from` (an object of metrics)")
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise MappingConfigError(f"{where}.exclude: expected a list of member names")
    units_raw = raw.get("units") or {}
    if not isinstance(units_raw, Mapping):
        raise MappingConfigError(f"{where}.units: expected a mapping of metric -> unit template")
    units = {str(k): parse_template(v, f"{where}.units.{k}") for k, v in units_raw.items()}
    scale = raw.get("quality_scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise MappingConfigError(f"{where}.quality_scale: expected a positive number")
    quality = _field(raw["quality"], f"{where}.quality") if "quality" in raw else None
    return ReadingSpec(identity, values, values_from, frozenset(exclude), units, quality, float(scale))


def _identity(raw: Mapping[str, Any], where: str) -> dict[str, Template]:
    identity = {f: parse_template(raw[f], f"{where}.{f}") for f in IDENTITY_FIELDS if f in raw}
    if "sensor_id" not in identity:
        raise MappingConfigError(f"{where}.sensor_id: required (a template)")
    utility = identity.get("utility")
    if utility is not None and utility.literal is not None and utility.literal not in UTILITIES:
        raise MappingConfigError(f"{where}.utility: {utility.literal!r} is not one of {', '.join(UTILITIES)}")
    return identity


def _parse_channels(raw: Any, defaults: Mapping[str, Any], where: str) -> ChannelSpec:
    if not isinstance(raw, Mapping):
        raise MappingConfigError(f"{where}: expected {{pattern, lookups, reading}}")
    _no_unknown_keys(raw, frozenset({"pattern", "lookups", "reading", "units"}), where)
    try:
        pattern = re.compile(str(raw.get("pattern", "")))
    except re.error as exc:
        raise MappingConfigError(f"{where}.pattern: not a regular expression: {exc}") from None
    if "metric" not in pattern.groupindex:
        raise MappingConfigError(f"{where}.pattern: needs a named group (?P<metric>...)")
    lookups_raw = raw.get("lookups") or {}
    if not isinstance(lookups_raw, Mapping) or not all(isinstance(t, Mapping) for t in lookups_raw.values()):
        raise MappingConfigError(f"{where}.lookups: expected group -> {{matched -> value}}")
    for group in lookups_raw:
        if group not in pattern.groupindex:
            raise MappingConfigError(f"{where}.lookups.{group}: not a named group of the pattern")
    lookups = {str(g): {str(k): str(v) for k, v in t.items()} for g, t in lookups_raw.items()}
    reading_raw = {**defaults, **(raw.get("reading") or {})}
    _no_unknown_keys(reading_raw, frozenset(IDENTITY_FIELDS), f"{where}.reading")
    units = raw.get("units") or {}
    if not isinstance(units, Mapping) or not all(isinstance(u, str) for u in units.values()):
        raise MappingConfigError(f"{where}.units: expected metric -> unit")
    return ChannelSpec(
        pattern, lookups, _identity(reading_raw, f"{where}.reading"), {str(k): v for k, v in units.items()}
    )


def _field(raw: Any, where: str) -> Ref:
    if not isinstance(raw, str):
        raise MappingConfigError(f"{where}: expected a field path (a.b.c)")
    ref = parse_ref(raw, where)
    if ref.segment is not None or ref.transform:
        raise MappingConfigError(f"{where}: expected a field path (a.b.c), got {raw!r}")
    return ref


def _names(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise MappingConfigError(f"{where}: expected a list of names")
    return raw


def _mqtt_filter(text: str, where: str) -> str:
    levels = text.split("/")
    bad = any(
        ("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+") for i, lv in enumerate(levels)
    )
    if bad or len(text.encode()) > 65535:
        raise MappingConfigError(f"{where}: {text!r} is not an MQTT topic filter (+ a whole level, # the last)")
    return text


def _kafka_topic(text: str, where: str) -> str:
    if not _KAFKA_TOPIC.match(text) or text in (".", ".."):
        raise MappingConfigError(f"{where}: {text!r} is not a Kafka topic name")
    return text


def _no_unknown_keys(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise MappingConfigError(f"{where}.{key}: unknown key (expected one of {', '.join(sorted(allowed))})")
