"""Drift of inputs against the training reference kept with a model: the population stability index (PSI).

The reference is the training data's decile edges and the share of rows between them, per group (a profile)
and column (a metric or the score). PSI = sum((p - q) * ln(p / q)) over those bins, with ``q`` the
reference shares and ``p`` the recent window's. Conventional thresholds, used here:

* PSI < 0.1 — stable;
* 0.1 <= PSI < 0.25 — moderate shift (reported);
* PSI >= 0.25 — drift: ``retrain --if-drifted`` retrains, and the report flags it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10
MODERATE = 0.1
DRIFT = 0.25
_EPS = 1e-4
MIN_ROWS = 50  # fewer finite values than this: no reference, no verdict


def reference(values: np.ndarray, bins: int = BINS) -> dict[str, Any] | None:
    """Decile edges and shares of ``values`` (NaN ignored); None when there are too few."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < MIN_ROWS:
        return None
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / len(v)).tolist(), "rows": len(v)}


def psi(ref: dict[str, Any], values: np.ndarray) -> float | None:
    """PSI of ``values`` against a :func:`reference`; None when there are too few values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < MIN_ROWS:
        return None
    edges = np.asarray(ref["edges"], dtype=np.float64)
    return psi_counts(ref, np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1))


def psi_counts(ref: dict[str, Any], counts: np.ndarray) -> float | None:
    """PSI of a histogram over the reference's bins (what the workers keep instead of the values)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n < MIN_ROWS:
        return None
    q = np.maximum(np.asarray(ref["shares"], dtype=np.float64), _EPS)
    p = np.maximum(counts / n, _EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def level(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "drift" if value >= DRIFT else "moderate" if value >= MODERATE else "stable"


def compare(references: dict[str, dict[str, Any]], recent: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """PSI per group and column of ``recent`` against ``references`` (both ``{group: {column: ...}}``)."""
    out: dict[str, dict[str, float | None]] = {}
    for group, cols in recent.items():
        refs = references.get(group) or {}
        for col, values in cols.items():
            if col in refs and refs[col] is not None:
                out.setdefault(group, {})[col] = psi(refs[col], values)
    worst = max((v for g in out.values() for v in g.values() if v is not None), default=None)
    drifted = sorted(f"{g}.{c}" for g, cols in out.items() for c, v in cols.items() if v is not None and v >= DRIFT)
    return {"psi": out, "max_psi": worst, "level": level(worst), "drifted": drifted, "threshold": DRIFT}


def references(groups: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {g: {c: r for c, v in cols.items() if (r := reference(v)) is not None} for g, cols in groups.items()}
