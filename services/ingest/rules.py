"""The validation rules: metric ranges and units from ``ranges.yaml`` plus the ingest settings.

:class:`Rules` is everything the pure validator needs, loaded once and shared by every
path (Kafka agent, HTTP, MQTT, the ``check`` command). A malformed config file fails at
start-up with the offending entry named, never at the first reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.ingest import metric_names
from services.ingest.settings import DEFAULT_RANGES_FILE, UNKNOWN_METRIC_POLICIES, IngestSettings
from services.ingest.units import CONVERSIONS, normalise_unit

#: Deepest nesting allowed at all (orjson reads 1024 levels but writes only 254).
MAX_JSON_DEPTH = 250


class ConfigError(ValueError):
    """The ranges file is not usable; the message names the entry."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A known metric: canonical unit, hard physical range, optional soft (usual) range."""

    name: str
    unit: str
    lo: float
    hi: float
    soft_lo: float
    soft_hi: float
    counter_of: tuple[str, ...] = ()  # a cumulative counter integrating these metrics

    def range_score(self, value: float) -> float:
        """1 inside the soft range, falling linearly to 0 at the hard limit."""
        if value < self.soft_lo:
            span = self.soft_lo - self.lo
            return 0.0 if span <= 0 else max(0.0, (value - self.lo) / span)
        if value > self.soft_hi:
            span = self.hi - self.soft_hi
            return 0.0 if span <= 0 else max(0.0, (self.hi - value) / span)
        return 1.0


@dataclass(frozen=True)
class Rules:
    """Everything validation needs; build with :meth:`load`."""

    metrics: Mapping[str, MetricSpec]
    aliases: Mapping[str, str] = field(default_factory=dict)
    expected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    w_completeness: float = 0.4
    w_range: float = 0.3
    w_staleness: float = 0.3
    max_future_ms: int = 300_000
    max_age_ms: int = 7 * 24 * 3_600_000
    stale_after_ms: int = 300_000
    quality_threshold: float = 0.5
    max_metrics: int = 64
    max_line_bytes: int = 64 * 1024
    max_json_depth: int = 32
    max_field_chars: int = 200
    max_extra_bytes: int = 16 * 1024
    lateness_ms: int = 3_600_000
    dedup_memory: int = 64
    strict_unknown: bool = False  # unknown metrics quarantined (`unknown_metric`) instead of accepted and flagged
    #: Derived from ``metrics`` (set in __post_init__): the cumulative counters, and metric -> its counter.
    counters: frozenset[str] = field(init=False, default=frozenset())
    counter_twin: Mapping[str, str] = field(init=False, default_factory=dict)
    #: Derived from the weights (set in __post_init__): the quality score when every part of it is 1, and the same
    #: before it is clamped and rounded (what a device's own quality multiplies).
    full_quality: float = field(init=False, default=1.0)
    full_score: float = field(init=False, default=1.0)
    #: Two memos as plain attributes for the hot path, where a property or a method is a call per reading. The plans
    #: of :attr:`unit_plans` that accept a number into a known metric, flat: same key -> (canonical name, unit, lo,
    #: hi, soft_lo, soft_hi, (scale, offset) or None, spec); and :meth:`expected_for`'s (utility, asset) -> metrics
    #: (a kind not looked up yet: absent).
    flat_plans: dict[str | tuple[str, str], Any] = field(init=False, repr=False, compare=False, default_factory=dict)
    #: A third, for the usual reading: a metric's canonical name, sent in its canonical unit (no conversion) ->
    #: (unit, lo, hi, soft_lo, soft_hi, spec); filled by ``validation.unit_plan`` beside :attr:`flat_plans`, and
    #: bounded by the metrics of the ranges file (nothing else is its own canonical name with a spec).
    canonical_plans: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)
    #: A device's own quality -> the quality of a complete, fresh reading within its usual ranges that sent it
    #: (``quality.device_scaled(full_score, q)``; a fleet sends a few values): filled by validation, bounded.
    full_scaled: dict[float, float] = field(init=False, repr=False, compare=False, default_factory=dict)
    expected_known: dict[tuple[str, str], frozenset[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    @classmethod
    def load(cls, settings: IngestSettings | None = None) -> Rules:
        settings = settings or IngestSettings()
        data = load_ranges_file(settings.ranges_file)
        return cls.from_mapping(data, settings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], settings: IngestSettings | None = None) -> Rules:
        settings = settings or IngestSettings()
        metrics = _parse_metrics(data.get("metrics") or {})
        aliases = _parse_aliases(data.get("aliases") or {}, metrics)
        expected = _parse_assets(data.get("assets") or {})
        weights = data.get("quality_weights") or {}
        if not isinstance(weights, Mapping):
            raise ConfigError("quality_weights: expected a mapping")
        w = {k: _number(weights.get(k, d), f"quality_weights.{k}") for k, d in _DEFAULT_WEIGHTS.items()}
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ConfigError(f"quality_weights: need non-negative weights with a positive sum, got {w}")
        total = sum(w.values())
        if settings.dedup_memory < 1:
            raise ConfigError("FLOWWATCH_INGEST_DEDUP_MEMORY must be at least 1")
        if settings.unknown_metrics not in UNKNOWN_METRIC_POLICIES:
            raise ConfigError(
                f"FLOWWATCH_INGEST_UNKNOWN_METRICS must be one of {', '.join(UNKNOWN_METRIC_POLICIES)}, "
                f"got {settings.unknown_metrics!r}"
            )
        if not 2 <= settings.max_json_depth <= MAX_JSON_DEPTH:
            # orjson writes 254 levels at most; a clean reading nests its input one level deeper.
            raise ConfigError(f"FLOWWATCH_INGEST_MAX_JSON_DEPTH must be within 2..{MAX_JSON_DEPTH}")
        return cls(
            metrics=metrics,
            aliases=aliases,
            expected=expected,
            w_completeness=w["completeness"] / total,
            w_range=w["range"] / total,
            w_staleness=w["staleness"] / total,
            max_future_ms=int(settings.max_future_s * 1000),
            max_age_ms=int(settings.max_age_s * 1000),
            stale_after_ms=int(settings.stale_after_s * 1000),
            quality_threshold=settings.quality_threshold,
            max_metrics=settings.max_metrics,
            max_line_bytes=settings.max_line_bytes,
            max_json_depth=settings.max_json_depth,
            max_field_chars=settings.max_field_chars,
            max_extra_bytes=settings.max_extra_bytes,
            lateness_ms=int(settings.lateness_s * 1000),
            dedup_memory=settings.dedup_memory,
            strict_unknown=settings.unknown_metrics == "strict",
        )

    def __post_init__(self) -> None:
        # Memo tables for the hot path; bounded so arbitrary input cannot grow them forever.
        object.__setattr__(self, "_names", {})
        object.__setattr__(self, "_named_units", {})
        object.__setattr__(self, "_unit_plans", {})
        twins = {of: spec.name for spec in self.metrics.values() for of in spec.counter_of}
        object.__setattr__(self, "counter_twin", twins)
        object.__setattr__(self, "counters", frozenset(s.name for s in self.metrics.values() if s.counter_of))
        object.__setattr__(self, "_units_of", {name: spec.unit for name, spec in self.metrics.items()})
        # The quality score of a complete, fresh reading within its usual ranges and without a device quality: every
        # part 1 (quality.quality_score's arithmetic, worked out once; validation takes it without the call).
        full = self.w_completeness * 1.0 + self.w_range * 1.0 + self.w_staleness * 1.0
        object.__setattr__(self, "full_score", full)
        full = (1.0 if full >= 1.0 else 0.0) if not 0.0 < full < 1.0 else round(full, 4)
        object.__setattr__(self, "full_quality", full)

    @property
    def valid_names(self) -> dict[str, str]:
        """Memo of metric spellings already seen and valid -> canonical name (the hot path's first look)."""
        return self._names  # type: ignore[attr-defined]

    @property
    def named_units(self) -> dict[str, str]:
        """Memo of unit-suffixed spellings -> the unit their name gives (``"pressure_psi"`` -> ``"psi"``)."""
        return self._named_units  # type: ignore[attr-defined]

    @property
    def unit_plans(self) -> dict[str | tuple[str, str], Any]:
        """Memo of metric spelling (no unit sent) or (spelling, unit sent) -> what validation does with it
        (``validation.unit_plan``)."""
        return self._unit_plans  # type: ignore[attr-defined]

    def canonical_name(self, name: str) -> str:
        """The metric name a device's spelling stands for (``"Temp"`` -> ``"temperature"``,
        ``"pressure_psi"`` -> ``"pressure"`` with its unit in :attr:`named_units`); name must be valid."""
        names: dict[str, str] = self._names  # type: ignore[attr-defined]
        hit = names.get(name)
        if hit is None:
            folded = name.strip().lower()
            hit = self.aliases.get(folded, folded)
            unit = None
            if hit not in self.metrics:
                units_of: dict[str, str] = self._units_of  # type: ignore[attr-defined]
                parsed = metric_names.parse(name.strip(), units_of, self.aliases, self.counter_twin)
                if parsed is not None:
                    hit, unit = parsed
            if len(names) < _MEMO_LIMIT:
                names[name] = hit
                if unit is not None:
                    self.named_units[name] = unit
            elif unit is not None:
                # Memo full: the unit must still reach this reading (read back from the name each time).
                self.named_units.pop(next(iter(self.named_units)), None)
                self.named_units[name] = unit
        return hit

    def expected_for(self, utility: str, asset: str) -> frozenset[str]:
        """The metrics a healthy device of this kind sends (empty: unknown kind, counts as complete)."""
        memo = self.expected_known
        hit = memo.get((utility, asset))
        if hit is None:
            hit = frozenset(self.expected.get(f"{utility}/{asset}") or self.expected.get(asset) or ())
            if len(memo) < _MEMO_LIMIT:
                memo[(utility, asset)] = hit
        return hit


_MEMO_LIMIT = 10_000
_DEFAULT_WEIGHTS = {"completeness": 0.4, "range": 0.3, "staleness": 0.3}


def load_ranges_file(path: Path | str | None) -> dict[str, Any]:
    """The default ranges, overlaid with ``path`` when it is another file."""
    with open(DEFAULT_RANGES_FILE) as fh:
        base = yaml.safe_load(fh) or {}
    if not path or Path(path).resolve() == DEFAULT_RANGES_FILE.resolve():
        return base
    try:
        with open(path) as fh:
            override = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read ranges file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"ranges file {path} is not valid YAML: {exc}") from None
    if not isinstance(override, Mapping):
        raise ConfigError(f"ranges file {path}: expected a mapping at the top level")
    merged = dict(base)
    for section in ("metrics", "aliases", "assets"):
        if section in override:
            given = override[section] or {}
            if not isinstance(given, Mapping):
                raise ConfigError(f"ranges file {path}: `{section}` must be a mapping")
            merged[section] = {**(base.get(section) or {}), **given}
    if "quality_weights" in override:
        merged["quality_weights"] = override["quality_weights"]
    return merged


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _parse_metrics(raw: Any) -> dict[str, MetricSpec]:
    if not isinstance(raw, Mapping):
        raise ConfigError("metrics: expected a mapping of metric -> {unit, min, max}")
    out: dict[str, MetricSpec] = {}
    for name, spec in raw.items():
        where = f"metrics.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected {{unit, min, max}}")
        unit = spec.get("unit")
        if not isinstance(unit, str):
            raise ConfigError(f"{where}.unit: expected a unit string")
        if normalise_unit(unit) not in CONVERSIONS:
            raise ConfigError(f"{where}.unit: no conversions known for canonical unit {unit!r}")
        lo, hi = _number(spec.get("min"), f"{where}.min"), _number(spec.get("max"), f"{where}.max")
        if lo >= hi:
            raise ConfigError(f"{where}: min {lo} must be below max {hi}")
        soft = spec.get("soft", [lo, hi])
        if not isinstance(soft, (list, tuple)) or len(soft) != 2:
            raise ConfigError(f"{where}.soft: expected [low, high]")
        s_lo, s_hi = _number(soft[0], f"{where}.soft[0]"), _number(soft[1], f"{where}.soft[1]")
        if not lo <= s_lo <= s_hi <= hi:
            raise ConfigError(f"{where}.soft: [{s_lo}, {s_hi}] must lie within [{lo}, {hi}]")
        counter_of = spec.get("counter_of", [])
        if not isinstance(counter_of, (list, tuple)) or not all(isinstance(n, str) for n in counter_of):
            raise ConfigError(f"{where}.counter_of: expected a list of metric names")
        key = str(name).strip().lower()
        out[key] = MetricSpec(key, unit, lo, hi, s_lo, s_hi, tuple(n.strip().lower() for n in counter_of))
    for spec in out.values():
        for of in spec.counter_of:
            if of not in out:
                raise ConfigError(f"metrics.{spec.name}.counter_of: {of!r} is not a metric in `metrics`")
    return out


def _parse_aliases(raw: Any, metrics: Mapping[str, MetricSpec]) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise ConfigError("aliases: expected a mapping of alias -> metric")
    out: dict[str, str] = {}
    for alias, target in raw.items():
        target_key = str(target).strip().lower()
        if target_key not in metrics:
            raise ConfigError(f"aliases.{alias}: {target!r} is not a metric in `metrics`")
        out[str(alias).strip().lower()] = target_key
    return out


def _parse_assets(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ConfigError("assets: expected a mapping of asset -> [metrics]")
    out: dict[str, tuple[str, ...]] = {}
    for asset, names in raw.items():
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"assets.{asset}: expected a list of metric names")
        out[str(asset).strip().lower()] = tuple(n.strip().lower() for n in names)
    return out
