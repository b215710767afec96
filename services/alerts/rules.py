"""Alert rules: conditions on an input record that fire (or resolve) an alert with templated labels.

A rule reads one *source* (``anomaly``, ``risk``, ``sensor_event``, ``quarantine``, ``report``, ``drift``),
checks its ``when`` conditions (all must hold) and renders labels and annotations
from the record's fields with ``str.format`` templates (``"{zone}"``,
``"{probability:.0%}"``, ``"{class_probs[leak]:.2f}"``). ``resolve_when`` conditions
resolve the same alert explicitly (a sensor that comes back); otherwise an alert
resolves after ``resolve_after`` without a new matching record.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from services.alerts.labels import fingerprint
from shared.records import Anomaly, DriftEvent, LeakReport, Risk, SensorEvent

#: Fields of the synthetic record a ``quarantine`` rule sees: readings quarantined per source per window.
QUARANTINE_FIELDS = ("source", "count", "window_s", "window_start", "ts")

SOURCES: dict[str, tuple[str, ...]] = {
    "anomaly": tuple(f.name for f in dataclasses.fields(Anomaly)),
    "risk": tuple(f.name for f in dataclasses.fields(Risk)),
    "sensor_event": tuple(f.name for f in dataclasses.fields(SensorEvent)),
    "quarantine": QUARANTINE_FIELDS,
    "report": tuple(f.name for f in dataclasses.fields(LeakReport)),
    "drift": tuple(f.name for f in dataclasses.fields(DriftEvent)),
}


def _regex_op(negate: bool) -> Callable[[Any, Any], bool]:
    def op(got: Any, pattern: Any) -> bool:
        hit = re.fullmatch(str(pattern), "" if got is None else str(got)) is not None
        return hit != negate

    return op


def _cmp(fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def op(got: Any, want: Any) -> bool:
        try:
            return bool(fn(got, want))
        except TypeError:
            return False

    return op


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": _cmp(operator.ge),
    "<=": _cmp(operator.le),
    ">": _cmp(operator.gt),
    "<": _cmp(operator.lt),
    "=~": _regex_op(False),
    "!~": _regex_op(True),
    "in": lambda got, want: got in want,
    "not in": lambda got, want: got not in want,
}
_COND_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s+(==|!=|>=|<=|>|<|=~|!~|not in|in)\s+(.+?)\s*$")
_MISSING = object()


class RuleError(ValueError):
    """A rule that cannot work; the message names the field."""


@dataclass(frozen=True)
class Condition:
    path: tuple[str, ...]
    op: str
    value: Any
    text: str
    value_path: tuple[str, ...] = ()
    # ``holds`` made for this condition's shape once: a field of the record (nearly every condition) is one
    # ``get``, where the general path walk checked ``isinstance(Mapping)`` per step; same results.
    check: Callable[[Mapping[str, Any]], bool] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", _checker(self))

    def holds(self, record: Mapping[str, Any]) -> bool:
        got = _lookup(record, self.path)
        if got is _MISSING:
            return False
        want = _lookup(record, self.value_path) if self.value_path else self.value
        return want is not _MISSING and _OPS[self.op](got, want)


def _checker(cond: Condition) -> Callable[[Mapping[str, Any]], bool]:
    """:meth:`Condition.holds` for a record that is a dict (as every record the rules see is)."""
    op = _OPS[cond.op]
    if len(cond.path) != 1 or len(cond.value_path) > 1:
        return cond.holds
    name = cond.path[0]
    if cond.value_path:
        other = cond.value_path[0]

        def against_field(record: Mapping[str, Any]) -> bool:
            got = record.get(name, _MISSING)
            if got is _MISSING:
                return False
            want = record.get(other, _MISSING)
            return want is not _MISSING and op(got, want)

        return against_field
    want = cond.value

    def against_value(record: Mapping[str, Any]) -> bool:
        got = record.get(name, _MISSING)
        return got is not _MISSING and op(got, want)

    return against_value


def _all_hold(conditions: tuple[Condition, ...]) -> Callable[[Mapping[str, Any]], bool]:
    """One call that is ``all(c.holds(record) for c in conditions)`` (in order, stopping at the first that fails)."""
    checks = tuple(c.check for c in conditions)
    if len(checks) == 1:
        return checks[0]

    def all_hold(record: Mapping[str, Any]) -> bool:
        for check in checks:
            if not check(record):
                return False
        return True

    return all_hold


def _lookup(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    got: Any = record
    for part in path:
        if not isinstance(got, Mapping) or part not in got:
            return _MISSING
        got = got[part]
    return got


def parse_condition(text: Any, fields: tuple[str, ...]) -> Condition:
    if not isinstance(text, str):
        raise RuleError(f"a condition is a string like 'probability >= 0.8', got {text!r}")
    m = _COND_RE.match(text)
    if not m:
        raise RuleError(f"cannot parse condition {text!r} (expected '<field> <op> <value>', ops: {', '.join(_OPS)})")
    path_text, op, raw = m.groups()
    path = tuple(path_text.split("."))
    if path[0] not in fields:
        raise RuleError(f"condition {text!r}: unknown field {path[0]!r} (known: {', '.join(fields)})")
    if re.fullmatch(r"[A-Za-z_][\w.]*", raw) and raw.split(".")[0] in fields and op not in ("=~", "!~"):
        # ``score >= threshold``: compare with another field of the same record.
        return Condition(path, op, None, text, tuple(raw.split(".")))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RuleError(f"condition {text!r}: cannot read value {raw!r}: {exc}") from None
    if op in ("in", "not in") and not isinstance(value, list):
        raise RuleError(f"condition {text!r}: '{op}' needs a list like [a, b]")
    if op in ("=~", "!~"):
        try:
            re.compile(str(value))
        except re.error as exc:
            raise RuleError(f"condition {text!r}: bad regular expression: {exc}") from None
    return Condition(path, op, value, text)


def check_template(template: Any, fields: tuple[str, ...]) -> str:
    """Validate a ``str.format`` template against the source's fields; returns it as a string."""
    if not isinstance(template, (str, int, float)):
        raise RuleError(f"template must be a string, got {type(template).__name__}")
    template = str(template)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise RuleError(f"template {template!r}: {exc}") from None
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        root = _root(field_name)
        if root == "" or root.isdigit():
            raise RuleError(f"template {template!r}: use named fields like {{zone}}, not positional ones")
        if root not in fields:
            raise RuleError(f"template {template!r}: unknown field {root!r} (known: {', '.join(fields)})")
    return template


#: Label sets remembered per rule (about 1 KB each, so ~20 MB at most) before the memory starts again.
IDENTITIES_KEPT = 20_000


def _values_of(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``tuple(record[n] for n in names)`` as one ``itemgetter`` call (which returns a bare value for one name)."""
    if not names:
        return lambda record: ()
    get = operator.itemgetter(*names)
    if len(names) > 1:
        return get  # type: ignore[return-value]
    return lambda record: (get(record),)


def _root(field_name: str) -> str:
    """The record field a template's replacement field starts with (``extra[a]`` and ``a.b`` read ``extra``, ``a``)."""
    return re.split(r"[.\[]", field_name, maxsplit=1)[0]


@dataclass(frozen=True)
class RateLimit:
    """At most ``max_alerts`` new alerts per ``per_s`` per rule and ``collapse_by`` labels; the rest fold into one."""

    max_alerts: int
    per_s: float
    collapse_by: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    name: str
    source: str
    when: tuple[Condition, ...]
    labels: dict[str, str]
    annotations: dict[str, str]
    resolve_after_s: float
    resolve_when: tuple[Condition, ...] = ()
    rate_limit: RateLimit | None = None
    # The fields the label templates read, and the labels and fingerprint already made from their values: a
    # sensor flagged again renders the same labels, and rendering and hashing them was most of evaluating it.
    label_fields: tuple[str, ...] = dataclasses.field(default=(), init=False, compare=False, repr=False)
    identities: dict[tuple[tuple[Any, ...], tuple[type, ...]], tuple[dict[str, str], str]] = dataclasses.field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    # ``when`` and ``resolve_when`` as one call each, and the label fields' values in one C call (made once)
    fires: Callable[[Mapping[str, Any]], bool] = dataclasses.field(init=False, compare=False, repr=False)
    resolves: Callable[[Mapping[str, Any]], bool] | None = dataclasses.field(init=False, compare=False, repr=False)
    label_values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = dataclasses.field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        fields = {_root(name) for t in self.labels.values() for _, name, _, _ in string.Formatter().parse(t) if name}
        object.__setattr__(self, "label_fields", tuple(sorted(fields)))
        object.__setattr__(self, "fires", _all_hold(self.when))
        object.__setattr__(self, "resolves", _all_hold(self.resolve_when) if self.resolve_when else None)
        object.__setattr__(self, "label_values", _values_of(self.label_fields))

    def _identity(self, record: Mapping[str, Any]) -> tuple[dict[str, str], str]:
        """The alert's labels and fingerprint for this record (KeyError/ValueError: cannot render)."""
        try:
            values = self.label_values(record)
            # with the types: 1, 1.0 and True are equal keys but render as "1", "1.0" and "True"
            key = (values, tuple(map(type, values)))
            known = self.identities.get(key)
        except (KeyError, TypeError):  # missing (rendering raises below) or unhashable: not cached
            key, known = None, None
        if known is None:
            labels = {"alertname": self.name, **self._render(self.labels, record)}
            known = (labels, fingerprint(labels))
            if key is not None:
                if len(self.identities) >= IDENTITIES_KEPT:  # bounded (pitfall 8)
                    self.identities.clear()
                self.identities[key] = known
        return known

    def _render(self, templates: Mapping[str, str], record: Mapping[str, Any]) -> dict[str, str]:
        out = {}
        for key, template in templates.items():
            value = template.format_map(record)
            if value != "":
                out[key] = value
        return out

    def evaluate(self, record: Mapping[str, Any]) -> Observation | None:
        """The alert this record fires or resolves, or None. Raises KeyError/ValueError on a record it cannot render."""
        fires = self.fires(record)
        if not fires and (self.resolves is None or not self.resolves(record)):
            return None
        labels, fp = self._identity(record)
        annotations = self._render(self.annotations, record) if fires else {}
        ts = record.get("ts")
        # positional, in the field order: fingerprint, rule, labels (a copy: the cached one must never change),
        # annotations, ts, resolve, resolve_after_s
        return Observation(
            fp,
            self.name,
            labels.copy(),
            annotations,
            int(ts) if isinstance(ts, (int, float)) else 0,
            not fires,
            self.resolve_after_s,
        )


@dataclass(slots=True)
class Observation:
    """One rule hit: the alert it names (by fingerprint) was seen firing, or should resolve."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ts: int
    resolve: bool = False
    resolve_after_s: float = 300.0
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        # Shallow and explicit: dataclasses.asdict deep-copies and was the hot spot of the state stage.
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "labels": self.labels,
            "annotations": self.annotations,
            "ts": self.ts,
            "resolve": self.resolve,
            "resolve_after_s": self.resolve_after_s,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        return cls(**{k: v for k, v in data.items() if k in _OBS_FIELDS})


def merge(observations: list[Observation]) -> list[Observation]:
    """Collapse a batch to one observation per fingerprint: the latest wins, counts add up.

    This is the first line of flood protection: 10,000 anomalies of one sensor in
    a batch travel on as one observation.
    """
    by_fp: dict[str, Observation] = {}
    for obs in observations:
        prev = by_fp.get(obs.fingerprint)
        if prev is None:
            by_fp[obs.fingerprint] = obs
        elif obs.ts >= prev.ts:
            obs.count += prev.count
            by_fp[obs.fingerprint] = obs
        else:
            prev.count += obs.count
    return list(by_fp.values())


_OBS_FIELDS = frozenset(f.name for f in dataclasses.fields(Observation))
