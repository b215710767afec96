"""The quality score of a reading: how much a downstream model should trust it, 0..1.

Three parts, weighted in ``ranges.yaml``:

* completeness: the share of the metrics this kind of asset normally sends that are present;
* range: how far inside its usual (soft) range each value is, the worst metric counting —
  a value drifting towards its physical limit is more likely a fault than a reading;
* staleness: readings that arrive long after they were taken matter less for live scoring.

The device's own quality (payload ``quality``) multiplies the result.
"""

from __future__ import annotations

from services.ingest.rules import Rules


def completeness(values: dict[str, float], expected: frozenset[str]) -> float:
    if not expected:
        return 1.0
    return len(expected.intersection(values)) / len(expected)


def range_score(values: dict[str, float], rules: Rules) -> float:
    worst = 1.0
    specs = rules.metrics
    for name, value in values.items():
        spec = specs.get(name)
        if spec is not None:
            score = spec.range_score(value)
            if score < worst:
                worst = score
    return worst


def staleness(ts: int, received_ms: int, rules: Rules) -> float:
    age = received_ms - ts
    if age <= rules.stale_after_ms or rules.max_age_ms <= 0:
        return 1.0
    span = rules.max_age_ms - rules.stale_after_ms
    if span <= 0:
        return 0.0
    return max(0.0, 1.0 - (age - rules.stale_after_ms) / span)


def quality_score(
    values: dict[str, float],
    utility: str,
    asset: str,
    ts: int,
    received_ms: int,
    device_quality: float | None,
    rules: Rules,
    in_range: float | None = None,
) -> float:
    """``in_range``: :func:`range_score` of ``values`` when the caller has it (validation works it out).

    Once per reading: the usual cases of :func:`completeness` and :func:`staleness` are inlined
    (the same arithmetic, without two calls).
    """
    expected = rules.expected_for(utility, asset)
    if values.keys() >= expected:  # a healthy device sends them all: no set built (issubset would build one)
        complete = 1.0
    else:
        complete = len(expected.intersection(values)) / len(expected)
    if received_ms - ts <= rules.stale_after_ms or rules.max_age_ms <= 0:
        fresh = 1.0
    else:
        fresh = staleness(ts, received_ms, rules)
    score = (
        rules.w_completeness * complete
        + rules.w_range * (range_score(values, rules) if in_range is None else in_range)
        + rules.w_staleness * fresh
    )
    if device_quality is not None:
        return device_scaled(score, device_quality)
    # min(1.0, max(0.0, score)) without the calls (score is finite; -0.0 becomes 0.0 as max() made it)
    if not 0.0 < score < 1.0:
        return 1.0 if score >= 1.0 else 0.0
    return _rounded(score)


def device_scaled(score: float, device_quality: float) -> float:
    """:func:`quality_score`'s last step when the device sent its own quality: the parts' ``score`` times it, in 0..1,
    rounded. Validation calls it alone for a complete, fresh reading within its usual ranges (``rules.full_score``)."""
    score *= float(device_quality)
    if not 0.0 < score < 1.0:
        return 1.0 if score >= 1.0 else 0.0
    return _rounded(score)


_ROUNDED: dict[float, float] = {}


def _rounded(score: float) -> float:
    """``round(score, 4)``, memoised: most readings of a fleet share a few scores, and round() of a
    float to 4 places is a decimal conversion (~0.3 us); a look-up is a tenth of that."""
    hit = _ROUNDED.get(score)
    if hit is None:
        hit = round(score, 4)
        if len(_ROUNDED) >= 4096:
            _ROUNDED.clear()
        _ROUNDED[score] = hit
    return hit
