"""``train`` and ``evaluate``: fit both models on labelled history, measure them, register them.

Splits are by time (train, validation, test in that order) after a warm-up during
which the zones' baselines settle; held-out numbers are therefore about the
future of the training data, as in production.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from services.forecaster.classes import RISK_CLASSES
from services.forecaster.features import FeatureConfig
from services.forecaster.offline.dataset import ZoneLabels, metric_vocabulary, replay
from services.forecaster.offline.evaluation import classification_report, forecast_report, plots, prior_probs
from services.forecaster.offline.history import History
from services.forecaster.settings import ForecasterSettings
from shared.records import Risk
from shared.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)


def _split_points(
    history: History, warmup_s: float, fractions: tuple[float, float], step_ms: int
) -> tuple[int, int, int]:
    """Warm-up end, train end and validation end (= test start), on step boundaries."""
    start, end = history.start_ms, history.end_ms
    first = start + int(warmup_s * 1000)
    span = end - first
    if span <= 0:
        raise ValueError(
            f"history of {(end - start) / 3.6e6:.1f} h is shorter than the warm-up of {warmup_s / 3600:.1f} h"
        )
    points = (first, first + int(span * fractions[0]), first + int(span * (fractions[0] + fractions[1])))
    return tuple(p // step_ms * step_ms for p in points)  # type: ignore[return-value]


def _class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, np.sqrt(counts.sum() / (n_classes * np.maximum(counts, 1))), 0.0)
    return {i: float(min(max(v, 0.2), 20.0)) for i, v in enumerate(w)}


def train(
    history: History,
    settings: ForecasterSettings,
    model_dir: Path,
    *,
    warmup_s: float = 6 * 3600,
    fractions: tuple[float, float] = (0.6, 0.15),
    epochs: int = 40,
    seed: int = 7,
    season_s: int = 86400,
    promote: str | None = None,
    report_dir: Path | None = None,
) -> tuple[ModelVersion, dict[str, Any]]:
    """Train, evaluate on the held-out tail, save to the registry; returns the version and its report."""
    t0 = time.monotonic()
    predictor, report = fit(
        history, settings, warmup_s=warmup_s, fractions=fractions, epochs=epochs, seed=seed, season_s=season_s
    )
    registry = ModelRegistry(model_dir)
    meta: dict[str, Any] = {}
    with registry.create(settings.model_name, meta) as tmp:
        meta.update(model_metadata(predictor, report, tmp))
        # inside the version before it is sealed: a file added after would fail the sha256 check at every load
        write_report(report, tmp / "train-report.json")
    version = registry.last_created
    report["model"] = {"name": version.name, "version": version.version, "path": str(version.path)}
    if promote:
        registry.promote(version.name, version.version, promote)
        report["model"]["alias"] = promote
    if report_dir is not None:
        write_report(report, report_dir / "train-report.json")
    log.info("trained %s %s in %.1fs", version.name, version.version, time.monotonic() - t0)
    return version, report


def model_metadata(predictor: Any, report: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Save the predictor's files into ``directory``; returns the registry metadata of the version."""
    risk_rep, fc_rep = report["risk"], report["forecast"]
    meta = dict(predictor.save(directory))
    meta.update(
        kind="forecaster",
        metrics={
            "accuracy": risk_rep["model"]["accuracy"],
            "macro_f1": risk_rep["model"]["macro_f1"],
            "accuracy_class_prior": risk_rep["class_prior"]["accuracy"],
            "incident_auc": risk_rep["model"]["incident"]["auc"],
            "forecast_mae": fc_rep["clean"]["mae"],
            "forecast_mae_last_value": fc_rep["clean"]["mae_last_value"],
            "forecast_mae_seasonal_naive": fc_rep["clean"]["mae_seasonal_naive"],
            "interval_coverage_80": fc_rep["clean"]["interval_coverage_80"],
        },
        data=report["data"],
    )
    return meta


def fit(
    history: History,
    settings: ForecasterSettings,
    *,
    warmup_s: float = 6 * 3600,
    fractions: tuple[float, float] = (0.6, 0.15),
    epochs: int = 40,
    seed: int = 7,
    season_s: int = 86400,
) -> tuple[Any, dict[str, Any]]:
    """Fit both models (time splits: train, validation, test) and measure them on the test tail: ``(predictor,
    report)``. Nothing is registered."""
    import keras

    from services.forecaster.model import (
        Predictor,
        build_forecast_model,
        build_risk_model,
        fit_temperature,
        pinball_loss,
        set_seed,
    )

    t0 = time.monotonic()
    set_seed(seed)
    vocab = metric_vocabulary(history)
    cfg = FeatureConfig.from_settings(settings, vocab)
    first, train_end, val_end = _split_points(history, warmup_s, fractions, cfg.step_ms)
    rows, _risks, _states = replay(history, cfg, settings, None, season_s=season_s, record_from_ms=first)
    a = rows.arrays()
    step_start = a["risk_step"] * cfg.step_ms
    tr, va, te = step_start < train_end, (step_start >= train_end) & (step_start < val_end), step_start >= val_end
    if not tr.any() or not va.any() or not te.any():
        raise ValueError("history too short for a train/validation/test split")
    t_replay = time.monotonic() - t0

    x, y = a["risk_x"], a["risk_y"]
    risk_model = build_risk_model(x[tr], len(RISK_CLASSES))
    risk_model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    stop = keras.callbacks.EarlyStopping(patience=6, restore_best_weights=True)
    weights = _class_weights(y[tr], len(RISK_CLASSES))
    risk_model.fit(
        x[tr],
        y[tr],
        validation_data=(x[va], y[va]),
        epochs=epochs,
        batch_size=256,
        class_weight=weights,
        callbacks=[stop],
        verbose=0,
    )
    # Class weights help rare classes learn but inflate their probabilities; subtracting log(weight)
    # from the logits undoes that (logit adjustment), then a temperature fitted on validation calibrates.
    logit_bias = -np.log(np.maximum(np.array([weights[i] for i in range(len(RISK_CLASSES))]), 1e-6)).astype(np.float32)
    val_logits = np.asarray(risk_model(x[va], training=False)) + logit_bias
    temperature = fit_temperature(val_logits, y[va])

    fstep = a["fc_step"] * cfg.step_ms
    ftr = (fstep < train_end) & a["fc_clean"]
    fva = (fstep >= train_end) & (fstep < val_end) & a["fc_clean"]
    forecast_model = build_forecast_model(a["fc_x"].shape[1])
    forecast_model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=pinball_loss)
    forecast_model.fit(
        a["fc_x"][ftr],
        a["fc_y"][ftr],
        validation_data=(a["fc_x"][fva], a["fc_y"][fva]),
        epochs=epochs,
        batch_size=256,
        callbacks=[keras.callbacks.EarlyStopping(patience=6, restore_best_weights=True)],
        verbose=0,
    )
    predictor = Predictor(
        risk_model,
        forecast_model,
        cfg,
        temperature=temperature,
        feature_mean=x[tr].mean(axis=0).astype(np.float32),
        logit_bias=logit_bias,
    )
    t_fit = time.monotonic() - t0 - t_replay

    # held-out metrics on the test rows (teacher-forced history: the forecast model's own skill)
    probs, _ = predictor.risk(x[te])
    risk_rep = {
        "model": classification_report(y[te], probs),
        "class_prior": classification_report(y[te], prior_probs(y[tr], int(te.sum()))),
    }
    fte = fstep >= val_end
    q = predictor.forecast(a["fc_x"][fte])
    scale = a["fc_scale"][fte]
    qa = (1.0 + q) * scale[:, None]
    clean = a["fc_clean"][fte]
    fc_args = (a["fc_actual"][fte], qa[:, 0], qa[:, 1], qa[:, 2], a["fc_last"][fte], a["fc_seasonal"][fte])
    fc_rep = {
        "clean": forecast_report(*(v[clean] for v in fc_args)),
        "all": forecast_report(*fc_args),
    }
    report = {
        "kind": "train",
        "data": {
            "rows_train": int(tr.sum()),
            "rows_validation": int(va.sum()),
            "rows_test": int(te.sum()),
            "forecast_rows_train": int(ftr.sum()),
            "zones": int(history.frame["zone"].nunique()),
            "readings": len(history.frame),
            "incidents": len(history.labels),
            "class_counts_test": {
                RISK_CLASSES[k]: int(v) for k, v in enumerate(np.bincount(y[te], minlength=len(RISK_CLASSES)))
            },
            "start_ms": history.start_ms,
            "end_ms": history.end_ms,
            "warmup_end_ms": first,
            "train_end_ms": train_end,
            "test_start_ms": val_end,
        },
        "risk": risk_rep,
        "forecast": fc_rep,
        "temperature": temperature,
        "seconds": {"replay": round(t_replay, 2), "fit": round(t_fit, 2)},
    }
    return predictor, report


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def load_predictor(model_dir: Path, name: str, alias: str | None = None, version: str | None = None) -> Any:
    """The served model: ``version`` if given, else ``alias`` (falling back to the newest version)."""
    from services.forecaster.model import Predictor
    from shared.registry import RegistryError

    registry = ModelRegistry(model_dir)
    if version is not None:
        mv = registry.load(name, version=version)
    else:
        try:
            mv = registry.load(name, alias=alias) if alias else registry.load(name)
        except RegistryError:
            mv = registry.load(name)
    return Predictor.load(mv.path, mv.metadata, f"{mv.name}:{mv.version}"), mv


def evaluate_records(
    risks: list[Risk],
    labels: ZoneLabels,
    cfg: FeatureConfig,
    *,
    season_s: int = 86400,
    y_prior: np.ndarray | None = None,
    score_from_ms: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Metrics of served risk records against ground truth: exactly what serving produced.

    Records before ``score_from_ms`` are not scored; they only provide the history
    the seasonal-naive baseline looks back on.
    """
    y, probs = [], []
    series: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    first_step = score_from_ms // cfg.step_ms
    for r in risks:
        start = r.ts - cfg.step_ms
        cls, _active = labels.label(r.zone, start, r.ts, cfg.horizon_steps * cfg.step_ms)
        step = start // cfg.step_ms
        if step >= first_step:
            y.append(cls)
            probs.append([r.class_probs.get(c, 0.0) for c in RISK_CLASSES])
        for metric, f in r.forecast.items():
            if "actual" in f:
                series.setdefault((r.zone, metric), {})[step] = {**f, "incident": float(cls != 0)}
    y_arr = np.asarray(y, dtype=np.int64)
    p_arr = np.asarray(probs, dtype=np.float64)
    p_arr /= p_arr.sum(axis=1, keepdims=True)  # records carry probabilities rounded to 6 decimals
    prior_src = y_prior if y_prior is not None else y_arr
    risk = {
        "model": classification_report(y_arr, p_arr),
        "class_prior": classification_report(y_arr, prior_probs(prior_src, len(y_arr))),
    }

    season = max(1, season_s // cfg.step_s)
    cols: dict[str, list[float]] = {k: [] for k in ("actual", "q10", "q50", "q90", "last", "seasonal", "clean")}
    plot = None
    for (zone, metric), by_step in sorted(series.items()):
        for step, f in sorted(by_step.items()):
            if step < first_step or "expected" not in f or step - 1 not in by_step:
                continue
            cols["actual"].append(f["actual"])
            cols["q10"].append(f["expected_q10"])
            cols["q50"].append(f["expected"])
            cols["q90"].append(f["expected_q90"])
            cols["last"].append(by_step[step - 1]["actual"])
            cols["seasonal"].append(by_step[step - season]["actual"] if step - season in by_step else np.nan)
            cols["clean"].append(f["incident"] == 0.0)
        if plot is None and any(f["incident"] for f in by_step.values()):
            ordered = [f for _s, f in sorted(by_step.items()) if "expected" in f][-720:]
            plot = {
                "actual": np.array([f["actual"] for f in ordered]),
                "q10": np.array([f["expected_q10"] for f in ordered]),
                "q50": np.array([f["expected"] for f in ordered]),
                "q90": np.array([f["expected_q90"] for f in ordered]),
                "incident": np.array([f["incident"] for f in ordered]),
                "title": f"{zone} {metric}: forecast vs actual",
            }
    arr = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    clean = arr["clean"].astype(bool)
    args = [arr[k] for k in ("actual", "q10", "q50", "q90", "last", "seasonal")]
    forecast = {"clean": forecast_report(*(v[clean] for v in args)), "all": forecast_report(*args)}
    return {"risk": risk, "forecast": forecast}, plot


def evaluate(
    history: History,
    settings: ForecasterSettings,
    model_dir: Path,
    out_dir: Path,
    *,
    version: str | None = None,
    from_ms: int | None = None,
    warmup_s: float = 6 * 3600,
    season_s: int = 86400,
) -> dict[str, Any]:
    """Replay history through the serving pipeline with a registered model; write a JSON report and plots."""
    predictor, mv = load_predictor(model_dir, settings.model_name, settings.model_alias, version)
    cfg = predictor.config
    if from_ms is None:
        test_start = mv.metadata.get("data", {}).get("test_start_ms")
        from_ms = (
            test_start
            if test_start and history.start_ms < test_start < history.end_ms
            else history.start_ms + int(warmup_s * 1000)
        )
    t0 = time.monotonic()
    _rows, risks, _states = replay(
        history, cfg, settings, predictor, season_s=season_s, record_from_ms=from_ms - season_s * 1000
    )
    elapsed = time.monotonic() - t0
    labels = ZoneLabels(history.labels)
    report, series = evaluate_records(risks, labels, cfg, season_s=season_s, score_from_ms=from_ms)
    report.update(
        kind="evaluate",
        model={"name": mv.name, "version": mv.version},
        data={
            "from_ms": from_ms,
            "end_ms": history.end_ms,
            "records": report["risk"]["model"]["n"],
            "readings": len(history.frame),
        },
        seconds={"replay": round(elapsed, 2)},
    )
    report["plots"] = plots(report, series, out_dir)
    write_report(report, out_dir / "evaluation.json")
    return report


__all__ = ["evaluate", "evaluate_records", "fit", "load_predictor", "model_metadata", "train"]
