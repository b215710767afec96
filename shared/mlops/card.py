"""The model card: the retrain report (data window, rows, label sources, metrics, decision) as ``card.json``
beside the model's files in its registry version, with PNG plots of the metrics and the drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

CARD = "card.json"
COUNTS = frozenset({"rows", "incidents", "verdicts", "n"})  # sizes of what was judged, not metrics to plot


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    path.write_bytes(orjson.dumps(report, option=opts))
    return path


def write_card(report: dict[str, Any], directory: Path) -> list[str]:
    """card.json and the plots into ``directory``; returns the files written (relative names)."""
    files = [write_json(report, directory / CARD).name]
    files += plot_metrics(report, directory)
    files += plot_drift(report, directory)
    return files


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(report: dict[str, Any], directory: Path) -> list[str]:
    """One panel per metric: candidate vs production, per profile."""
    cand = report.get("metrics", {}).get("candidate") or {}
    prod = report.get("metrics", {}).get("production") or {}
    names = sorted({m for p in cand.values() for m, v in p.items() if v is not None and m not in COUNTS})
    if not names:
        return []
    plt = _pyplot()
    profiles = sorted(cand)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, names, strict=False):
        xs = range(len(profiles))
        c = [cand[p].get(metric) or 0.0 for p in profiles]
        pr = [(prod.get(p) or {}).get(metric) or 0.0 for p in profiles]
        ax.bar([x - 0.2 for x in xs], pr, width=0.4, label="production", color="#999999")
        ax.bar([x + 0.2 for x in xs], c, width=0.4, label="candidate", color="#1f77b4")
        ax.set_xticks(list(xs), profiles, rotation=30, fontsize=8)
        ax.set_title(metric, fontsize=10)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{report.get('service', '')} retrain: {report.get('decision', '')}")
    fig.tight_layout()
    fig.savefig(directory / "metrics.png", dpi=80)
    plt.close(fig)
    return ["metrics.png"]


def plot_drift(report: dict[str, Any], directory: Path) -> list[str]:
    psi = (report.get("drift") or {}).get("psi") or {}
    items = sorted((f"{g}.{c}", v) for g, cols in psi.items() for c, v in cols.items() if v is not None)
    if not items:
        return []
    from shared.mlops.drift import DRIFT, MODERATE

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(items))))
    ax.barh(
        [k for k, _ in items], [v for _, v in items], color=["#d62728" if v >= DRIFT else "#1f77b4" for _, v in items]
    )
    ax.axvline(MODERATE, color="orange", linestyle="--", linewidth=1)
    ax.axvline(DRIFT, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI against the production model's training reference")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(directory / "drift.png", dpi=80)
    plt.close(fig)
    return ["drift.png"]


def card_reference(directory: Path, group: str) -> dict[str, Any]:
    """The training reference a version's card keeps for ``group`` (``{column: reference}``; empty without)."""
    try:
        card = orjson.loads((Path(directory) / CARD).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    ref = (card.get("reference") or {}).get(group) if isinstance(card, dict) else None
    return ref if isinstance(ref, dict) else {}


def versions_summary(registry: Any, name: str, profile: str | None = None, last: int = 5) -> dict[str, Any]:
    """The newest ``last`` versions of a model with what their cards say (decision, reasons, this profile's
    metrics, drift), and its aliases: what an API shows about a model's lifecycle."""
    aliases = registry.aliases(name)
    out = []
    for mv in registry.list(name)[-last:]:
        entry: dict[str, Any] = {
            "version": mv.version,
            "created": mv.metadata.get("created"),
            "aliases": sorted(a for a, v in aliases.items() if v == mv.version),
        }
        try:
            card = orjson.loads((mv.path / CARD).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            card = None
        if isinstance(card, dict):
            metrics = card.get("metrics") or {}
            key = profile if profile is not None else next(iter(metrics.get("candidate") or {}), None)
            drift = card.get("drift") or {}
            entry.update(
                decision=card.get("decision"),
                reasons=card.get("reasons", []),
                window={k: (card.get("data") or {}).get(k) for k in ("since", "until", "holdout_from", "rows")},
                metrics={w: (metrics.get(w) or {}).get(key) for w in ("candidate", "production")},
                drift={"level": drift.get("level"), "max_psi": drift.get("max_psi")},
            )
        out.append(entry)
    return {"aliases": aliases, "versions": out[::-1]}
