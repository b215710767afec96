"""The promotion gate: a candidate replaces production only when it is better and no profile gets worse.

For every profile the candidate was judged on, and every rule whose metric both models have:

1. **Floor**: the candidate's value must reach the rule's absolute floor (a minimum when higher is
   better, a maximum otherwise), whatever production does.
2. **No regression**: it may not be worse than production on the same window by more than the rule's
   margin: ``max(margin, margin_rel * |production|)``.
   A rule with a ``support`` is not judged for a profile whose count of that name (incidents, verdicts) is
   under ``min_support`` — too few to tell skill from luck — and the decision says so (``not judged: ...``
   in its reasons): such a rule neither blocks nor passes silently. What must hold however small the
   support is a rule without one (the detector's ``incidents_caught``: no fewer incidents caught).
3. **Better**: at least one rule of one profile must improve by more than ``min_gain`` (a copy of
   production is not promoted). Without a production model the candidate is compared with what the
   service runs without one (the detector's statistical z-score; for the forecaster, nothing: floors only).

The rules are data (:class:`GateConfig`, JSON with ``--gate FILE``), documented in docs/mlops.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Metrics = dict[str, dict[str, float | None]]  # profile -> metric -> value (None: not measurable here)


@dataclass(frozen=True)
class Rule:
    metric: str
    higher_is_better: bool = True
    floor: float | None = None
    margin: float = 0.0
    margin_rel: float = 0.0
    # judged only where the profile's count ``support`` (e.g. incidents in the held-out window) reaches
    # ``min_support``: a recall over two incidents moves by halves and would decide on noise
    support: str | None = None
    min_support: int = 0

    def allowed(self, production: float) -> float:
        return max(self.margin, self.margin_rel * abs(production))

    def gain(self, candidate: float, production: float) -> float:
        """How much better the candidate is (negative: worse)."""
        return candidate - production if self.higher_is_better else production - candidate


@dataclass(frozen=True)
class GateConfig:
    rules: tuple[Rule, ...]
    min_gain: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: GateConfig | None = None) -> GateConfig:
        """Rules by metric name; a dict for a metric already in ``base`` overrides only the fields it gives."""
        rules = {r.metric: r for r in (base.rules if base else ())}
        for item in data.get("rules", []):
            if not isinstance(item, dict) or "metric" not in item:
                raise ValueError(f"gate rule {item!r}: needs a metric")
            unknown = set(item) - set(Rule.__dataclass_fields__)
            if unknown:
                raise ValueError(f"gate rule {item['metric']!r}: unknown fields {sorted(unknown)}")
            old = asdict(rules[item["metric"]]) if item["metric"] in rules else {}
            rules[item["metric"]] = Rule(**{**old, **item})
        return cls(tuple(rules.values()), float(data.get("min_gain", base.min_gain if base else 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [asdict(r) for r in self.rules], "min_gain": self.min_gain}


@dataclass
class Decision:
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)  # rules skipped for too little support, and why

    @property
    def name(self) -> str:
        return "promoted" if self.promoted else "rejected"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def decide(candidate: Metrics, production: Metrics | None, config: GateConfig) -> Decision:
    """Apply the gate; ``reasons`` say why it was rejected (or, when promoted, what improved)."""
    blocked: list[str] = []
    gains: list[str] = []
    skipped: list[str] = []
    judged = 0
    for profile in sorted(candidate):
        cand = candidate[profile]
        prod = (production or {}).get(profile) or {}
        for rule in config.rules:
            c = cand.get(rule.metric)
            if c is None:
                continue
            if rule.support is not None and (cand.get(rule.support) or 0) < rule.min_support:
                p = prod.get(rule.metric)
                was = f" (production {_fmt(p)})" if p is not None else ""
                skipped.append(
                    f"not judged: {profile}: {rule.metric} {_fmt(c)}{was} on {cand.get(rule.support) or 0} "
                    f"{rule.support}, under the {rule.min_support} needed"
                )
                continue
            judged += 1
            if rule.floor is not None and (c < rule.floor if rule.higher_is_better else c > rule.floor):
                side = "below the floor" if rule.higher_is_better else "above the ceiling"
                blocked.append(f"{profile}: {rule.metric} {_fmt(c)} is {side} {_fmt(rule.floor)}")
            p = prod.get(rule.metric)
            if p is None:
                continue
            gain = rule.gain(c, p)
            if gain < -rule.allowed(p):
                blocked.append(
                    f"{profile}: {rule.metric} {_fmt(c)} is worse than production's {_fmt(p)} "
                    f"by more than the margin {_fmt(rule.allowed(p))}"
                )
            elif gain > config.min_gain:
                gains.append(f"{profile}: {rule.metric} {_fmt(p)} -> {_fmt(c)}")
    if not judged:
        why = "no metric could be measured on the held-out window (no rows, or no ground truth)"
        return Decision(False, [why, *skipped], [], skipped)
    if blocked:
        return Decision(False, blocked + skipped, gains, skipped)
    if production and not gains:
        why = f"not better than production on any metric by more than {config.min_gain}"
        return Decision(False, [why, *skipped], [], skipped)
    reasons = gains or ["no production model to compare with; every floor is met"]
    return Decision(True, reasons + skipped, gains, skipped)
