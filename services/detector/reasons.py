"""Sentences a person on call can read: why a reading was flagged, in the metric's own units."""

from __future__ import annotations

import numpy as np

from services.detector.state import FEATURE_BLOCKS

SIGMA = "\N{GREEK SMALL LETTER SIGMA}"
TIMES = "\N{MULTIPLICATION SIGN}"


def fmt(v: float) -> str:
    """312, 48.2, 0.215: three significant figures without scientific notation for common ranges."""
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01 or a == 0:
        return f"{v:.3g}"
    return f"{v:.2e}"


def _block(row: np.ndarray, m: int, name: str) -> np.ndarray:
    i = FEATURE_BLOCKS.index(name)
    return row[i * m : (i + 1) * m]


def explain(
    metrics: tuple[str, ...],
    row: np.ndarray,
    contributions: np.ndarray,
    units: dict[str, str],
    ts_ms: int,
    tz_offset_h: int = 0,
    top: int = 3,
) -> tuple[str, list[dict]]:
    """``(reason, top_metrics)`` for one feature row; the metrics that contributed most come first."""
    m = len(metrics)
    value, z, z_tod = _block(row, m, "value"), _block(row, m, "z"), _block(row, m, "z_tod")
    base, spread_rel, delta_z = _block(row, m, "base"), _block(row, m, "spread_rel"), _block(row, m, "delta_z")
    flat = _block(row, m, "flat")
    hour = (int(ts_ms // 3_600_000) + tz_offset_h) % 24
    order = np.argsort(-contributions)[:top]
    sentences: list[str] = []
    tops: list[dict] = []
    for j in order:
        if contributions[j] <= 0 and tops:
            break
        name, unit = metrics[j], units.get(metrics[j], "")
        u = f" {unit}" if unit else ""
        zt, tod = float(z_tod[j]), bool(z_tod[j] != z[j])
        usual = f"its usual {fmt(base[j])}{u} for {hour:02d}:00" if tod else f"its recent {fmt(base[j])}{u}"
        if flat[j] >= 1:
            text = f"{name} has stayed at {fmt(value[j])}{u} {flat[j]:.1f}{TIMES} longer than it ever rests (stuck sensor?)"
        elif abs(zt) >= 2:
            text = f"{name} {fmt(value[j])}{u} is {abs(zt):.1f}{SIGMA} {'above' if zt > 0 else 'below'} {usual}"
        elif spread_rel[j] >= 2:
            text = f"{name} fluctuates {spread_rel[j]:.1f}{TIMES} more than usual around {fmt(value[j])}{u}"
        elif abs(delta_z[j]) >= 3:
            text = f"{name} {'jumped' if delta_z[j] > 0 else 'dropped'} to {fmt(value[j])}{u} in one reading ({abs(delta_z[j]):.1f}{SIGMA})"
        elif sentences and contributions[j] < 0.25:
            continue  # a minor contributor with nothing unusual of its own adds noise, not information
        else:
            text = f"{name} {fmt(value[j])}{u} is unusual together with the other metrics ({usual})"
        sentences.append(text)
        tops.append(
            {
                "metric": name,
                "value": float(value[j]),
                "usual": float(base[j]),
                "z": round(zt, 2),
                "contribution": round(float(contributions[j]), 3),
                "unit": unit,
            }
        )
    return "; ".join(sentences), tops
