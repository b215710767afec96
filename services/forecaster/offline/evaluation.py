"""Offline metrics of the forecaster, and their plots.

Risk: accuracy, precision/recall/F1 per class, macro F1, log loss, Brier score and
calibration (expected calibration error and a reliability curve of the incident
probability), against the class-prior baseline. Forecast: MAE of the median and
coverage of the 10-90 % interval, against the last-value and seasonal-naive
baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.forecaster.classes import RISK_CLASSES

EPS = 1e-12


def classification_report(y: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Metrics of class probabilities ``probs`` (n, C) against true classes ``y`` (n,)."""
    from sklearn import metrics as skm

    n, c = probs.shape
    labels = list(range(c))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0.0)
    per_class = {
        RISK_CLASSES[k]: {
            "precision": round(float(precision[k]), 4),
            "recall": round(float(recall[k]), 4),
            "f1": round(float(f1[k]), 4),
            "support": int(support[k]),
        }
        for k in labels
    }
    present = support > 0
    onehot = np.eye(c)[y]
    incident_p = 1.0 - probs[:, 0]
    incident_y = (y != 0).astype(np.int64)
    auc = float(skm.roc_auc_score(incident_y, incident_p)) if 0 < incident_y.sum() < n else float("nan")
    return {
        "n": int(n),
        "accuracy": round(float(skm.accuracy_score(y, pred)), 4),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 4),
        "log_loss": round(float(skm.log_loss(y, np.clip(probs, EPS, 1.0), labels=labels)), 4),
        "brier": round(float(np.mean(np.sum((probs - onehot) ** 2, axis=1))), 4),
        "incident": {"auc": round(auc, 4), "ece": calibration(incident_p, incident_y, bins)["ece"]},
        "per_class": per_class,
        "calibration": calibration(incident_p, incident_y, bins),
        "confusion": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }


def prior_probs(y_train: np.ndarray, n: int, n_classes: int = len(RISK_CLASSES)) -> np.ndarray:
    """The class-prior baseline: training class frequencies for every row."""
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64) + 1e-3
    return np.tile(counts / counts.sum(), (n, 1))


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability curve (equal-width bins) and expected calibration error of binary probabilities."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    curve = []
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        conf, acc, cnt = float(p[m].mean()), float(y[m].mean()), int(m.sum())
        ece += cnt / len(p) * abs(conf - acc)
        curve.append({"bin": b, "mean_p": round(conf, 4), "observed": round(acc, 4), "count": cnt})
    return {"ece": round(ece, 4), "curve": curve}


def forecast_report(
    actual: np.ndarray, q10: np.ndarray, q50: np.ndarray, q90: np.ndarray, last: np.ndarray, seasonal: np.ndarray
) -> dict[str, Any]:
    """MAE and interval coverage of the forecast against the naive baselines, on the same rows.

    MAE is also given scaled (divided by the mean absolute actual) so zones of
    different sizes weigh alike in one number.
    """
    ok = np.isfinite(actual) & np.isfinite(q50) & np.isfinite(last)
    has_season = ok & np.isfinite(seasonal)
    scale = np.mean(np.abs(actual[ok])) + EPS if ok.any() else 1.0

    def mae(pred: np.ndarray, mask: np.ndarray) -> float:
        return float(np.mean(np.abs(actual[mask] - pred[mask]))) if mask.any() else float("nan")

    inside = (actual >= q10) & (actual <= q90)
    out = {
        "n": int(ok.sum()),
        "mae": round(mae(q50, ok), 4),
        "mae_last_value": round(mae(last, ok), 4),
        "relative_mae": round(mae(q50, ok) / scale, 4),
        "relative_mae_last_value": round(mae(last, ok) / scale, 4),
        "interval_coverage_80": round(float(np.mean(inside[ok])) if ok.any() else float("nan"), 4),
        "mean_interval_width": round(float(np.mean((q90 - q10)[ok])) if ok.any() else float("nan"), 4),
        "n_seasonal": int(has_season.sum()),
        "mae_on_seasonal_rows": round(mae(q50, has_season), 4),
        "mae_seasonal_naive": round(mae(seasonal, has_season), 4),
    }
    return out


def plots(report: dict[str, Any], series: dict[str, np.ndarray] | None, out_dir: Path) -> list[str]:
    """Reliability curve, confusion matrix, per-class F1 and (optionally) one forecast band. Returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    risk = report["risk"]["model"]

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    curve = risk["calibration"]["curve"]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.plot([c["mean_p"] for c in curve], [c["observed"] for c in curve], "o-")
    ax.set(
        xlabel="predicted incident probability",
        ylabel="observed incident rate",
        title=f"calibration (ECE {risk['calibration']['ece']})",
    )
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=100)
    plt.close(fig)
    written.append("calibration.png")

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    conf = np.asarray(risk["confusion"], dtype=np.float64)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(RISK_CLASSES)), RISK_CLASSES, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(RISK_CLASSES)), RISK_CLASSES, fontsize=7)
    for i in range(len(RISK_CLASSES)):
        for j in range(len(RISK_CLASSES)):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised colour)")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=100)
    plt.close(fig)
    written.append("confusion.png")

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    names = [c for c, m in risk["per_class"].items() if m["support"]]
    ax.bar(names, [risk["per_class"][c]["f1"] for c in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.set_title(f"F1 per class (macro {risk['macro_f1']})")
    fig.tight_layout()
    fig.savefig(out_dir / "f1_per_class.png", dpi=100)
    plt.close(fig)
    written.append("f1_per_class.png")

    if series is not None and len(series.get("actual", [])):
        fig, ax = plt.subplots(figsize=(9, 3.5))
        x = np.arange(len(series["actual"]))
        ax.fill_between(x, series["q10"], series["q90"], alpha=0.3, label="10-90 % interval")
        ax.plot(x, series["q50"], lw=1, label="forecast median")
        ax.plot(x, series["actual"], lw=1, color="black", label="actual")
        if "incident" in series:
            ax.fill_between(
                x,
                0,
                1,
                where=series["incident"] > 0,
                color="red",
                alpha=0.1,
                transform=ax.get_xaxis_transform(),
                label="incident",
            )
        ax.set(title=series.get("title", "forecast"), xlabel="step")
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out_dir / "forecast.png", dpi=100)
        plt.close(fig)
        written.append("forecast.png")
    return written
