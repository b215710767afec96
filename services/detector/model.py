"""The anomaly model: features -> detectors -> calibrated ensemble -> causal persistence.

One :class:`AnomalyModel` serves one *profile* (an asset kind or sensor group, or
the columns of a CSV offline). It holds everything scoring needs, calibrated on
normal data and saved together: the feature configuration, the scaler, the
fitted detectors with their thresholds, the ensemble threshold and the state at
the end of training. Streaming and offline scoring call the same methods.

Calibration is out-of-fold: training rows are cut into contiguous time blocks,
each block is scored by detectors fitted on the other blocks, and thresholds are
quantiles of those honest scores. A few hundred normal rows are all a test rig
gives us; in-sample scores of IsolationForest, LOF or K-Means on them would be
optimistic and the thresholds too tight.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
from threadpoolctl import ThreadpoolController

from services.detector import kernels
from services.detector.detectors import (
    BlockMaxDetector,
    Detector,
    EnvelopeDetector,
    Scaler,
    ZScoreDetector,
    make_detector,
    oof_scale,
)
from services.detector.numeric import nan_to_num
from services.detector.state import FEATURE_BLOCKS, Layout, RollingState, StateConfig, alpha, ewma_rows, occurrence

_POOLS: ThreadpoolController | None = None


def single_threaded() -> Any:
    """Limit BLAS/OpenMP pools to one thread for a block.

    The matrices are small, and thread pools on a busy 2-core machine cost far more in
    contention (K-Means 30x slower) than they win. The controller is built once: finding
    the native libraries takes milliseconds, more than scoring a micro-batch.
    """
    global _POOLS
    if _POOLS is None:
        _POOLS = ThreadpoolController()
    return _POOLS.limit(limits=1)


MODEL_FILE = "model.joblib"
META_FILE = "meta.json"
ALL_DETECTORS = ("zscore", "pca", "kmeans", "lof", "iforest", "flatline")
#: What an offline model (one CSV, one stream) runs unless a config says otherwise: see docs/detector.md
#: "Accuracy on real recordings" for how it was chosen.
OFFLINE_DETECTORS = ("recon", "envelope", "flatline", "shift")
#: Rule members: each flags on its own once its ratio reaches 1 (not averaged with the others).
#: flatline: a value stuck longer than it ever rests in normal operation; shift: a sustained level
#: shift against a baseline that follows slow drift (one stream's own units: offline models only);
#: envelope: a channel beyond its training range, or beyond its range for a pump's current state
#: (offline, like recon only with enough rows to have seen normal operation).
RULE_DETECTORS = ("flatline", "shift", "envelope")


@dataclass(frozen=True)
class ModelConfig:
    """What a profile's model looks at and how strict it is."""

    # feature blocks the learned detectors see (see state.FEATURE_BLOCKS)
    blocks: tuple[str, ...] = ("smooth", "spread", "z")
    detectors: tuple[str, ...] = ALL_DETECTORS
    # the statistical detector's threshold on |z| and which z it reads
    zscore_threshold: float = 2.5
    zscore_block: str = "z_tod"
    kmeans_percentile: float = 95.0
    # detector thresholds: this quantile of out-of-fold normal scores
    calib_quantile: float = 0.99
    # ensemble on-threshold: this quantile of smoothed out-of-fold normal scores, times margin
    alarm_quantile: float = 0.995
    margin: float = 1.1
    cv_folds: int = 5
    ratio_cap: float = 20.0  # one detector alone cannot carry the average beyond this
    # how member ratios combine: "mean" (calibrated average), "top2" (mean of the two most
    # alarmed members: a specialist is not drowned by the others), "max"
    fusion: str = "mean"
    score_halflife: float = 2.0  # causal smoothing of the ensemble score, in readings
    # The statistical mode (a profile with no trained model) has no calibration on normal data to stand on:
    # a fixed z threshold on the largest |z| of several metrics, against baselines that may be minutes old.
    # It flags nothing until a metric's baseline has seen statistical_warmup readings (a mean and sigma of
    # ten readings swing too much to judge a reading by) and needs a deviation that lasts: its score is
    # smoothed with statistical_halflife readings. On `make demo`'s first 30 minutes (bench/bench_demo_alarms.py)
    # this took false flags from 2.2 % to 0.5 % of the normal readings and kept every incident it found
    # beyond chance. A fitted model uses warmup and score_halflife, calibrated on its own scores.
    statistical_warmup: int = 60
    statistical_halflife: float = 8.0
    off_ratio: float = 0.9  # an episode ends when the smoothed score falls below off_ratio * threshold
    min_train_rows: int = 50
    # the reconstruction member needs this many training rows per metric: a few hundred rows of
    # a test rig do not hold its slow drifts, and a plane fitted on them flags the drift itself
    recon_rows_per_metric: int = 100
    # share of the scaled variance the reconstruction plane keeps: the finer the plane, the more a
    # broken relationship between channels shows in the residual (BATADAL: 0.995 -> 0.999 raised both
    # F1 and S; 0.998-0.9995 all did)
    recon_variance: float = 0.999
    # envelope: a channel this share of its training range beyond its (per actuator state) range flags
    envelope_margin: float = 0.15
    # rule members whose ratio lifts the smoothed score at once instead of through the smoothing
    # (BATADAL: the envelope's S 0.951 -> 0.958, F1 0.822 -> 0.831)
    immediate_rules: tuple[str, ...] = ("envelope",)
    max_train_rows: int = 20_000  # pooled profiles: an even sample of the time-ordered rows beyond this
    state: StateConfig = field(default_factory=StateConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        state = StateConfig(**data.pop("state", {}))
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples, "state": state})


@dataclass
class Scored:
    """Scores of a batch of readings, row-aligned with the input."""

    score: np.ndarray  # smoothed ensemble score (the one compared with threshold)
    raw: np.ndarray  # ensemble score of the reading alone
    anomaly: np.ndarray  # bool, after hysteresis
    members: dict[str, np.ndarray]  # each detector's score / its threshold
    contributions: np.ndarray  # (n, metrics), rows sum to 1
    threshold: float


class AnomalyModel:
    """A fitted (or purely statistical) model for one profile's metrics."""

    def __init__(self, metrics: tuple[str, ...] | list[str], config: ModelConfig | None = None, name: str = "default"):
        self.metrics = tuple(metrics)
        self.config = config or ModelConfig()
        self.name = name
        self.rolling = self._rolling(statistical=True)
        self.scaler: Scaler | None = None
        self.detectors: list[Detector] = [ZScoreDetector(self.config.zscore_threshold)]
        self.threshold = 1.0
        self.rules: list[Detector] = (
            [BlockMaxDetector("flatline", FEATURE_BLOCKS.index("flat"), len(self.metrics), 1.0)]
            if "flatline" in self.config.detectors
            else []
        )
        self.initial_state = self.rolling.layout.empty(1)
        self.version = "statistical"
        self.trained_rows = 0
        self.fitted_at = 0.0
        m = len(self.metrics)
        pos = {b: i for i, b in enumerate(FEATURE_BLOCKS)}
        self._cols = np.concatenate([np.arange(pos[b] * m, (pos[b] + 1) * m) for b in self.config.blocks])
        self._z_cols = np.arange(pos[self.config.zscore_block] * m, (pos[self.config.zscore_block] + 1) * m)
        self._a_score = alpha(self.config.statistical_halflife)

    def _rolling(self, statistical: bool) -> RollingState:
        """The rolling state of the statistical mode (its longer warm-up) or of a fitted model."""
        state = self.config.state
        if statistical and self.config.statistical_warmup > state.warmup:
            state = replace(state, warmup=self.config.statistical_warmup)
        rolling = RollingState(self.metrics, state)
        rolling.track_shift = "shift" in self.config.detectors
        return rolling

    # ------------------------------------------------------------------ properties
    @property
    def trained(self) -> bool:
        return self.scaler is not None

    @property
    def layout(self) -> Layout:
        return self.rolling.layout

    def block(self, features: np.ndarray, name: str) -> np.ndarray:
        i, m = FEATURE_BLOCKS.index(name), len(self.metrics)
        return features[:, i * m : (i + 1) * m]

    # ------------------------------------------------------------------ fitting
    def fit(self, x: np.ndarray, ts_ms: np.ndarray, sensor_idx: np.ndarray | None = None) -> AnomalyModel:
        with single_threaded():
            return self._fit(x, ts_ms, sensor_idx)

    def _fit(self, x: np.ndarray, ts_ms: np.ndarray, sensor_idx: np.ndarray | None = None) -> AnomalyModel:
        """Fit on normal rows (``x`` is ``(n, metrics)``); ``sensor_idx`` pools several sensors' streams.

        Rows of one sensor must be in time order. The first readings of each sensor,
        while its rolling state is still young, are not used for training.
        """
        cfg = self.config
        # a fitted model leaves the statistical mode's warm-up and smoothing behind: it calibrates its own
        self.rolling = self._rolling(statistical=False)
        self._a_score = alpha(cfg.score_halflife)
        idx = np.zeros(len(x), dtype=np.int64) if sensor_idx is None else np.asarray(sensor_idx, dtype=np.int64)
        n_sensors = int(idx.max()) + 1 if len(idx) else 1
        state = self.rolling.layout.empty(n_sensors)
        feats = self.rolling.run(state, x, ts_ms.astype(np.float64), idx)
        per_sensor = np.bincount(idx, minlength=n_sensors)
        skip = min(max(cfg.state.warmup, int(3 * cfg.state.short_halflife)), int(per_sensor.min()) // 5)
        keep = occurrence(idx) >= skip
        if "z_tod" in cfg.blocks:
            # Until a sensor has a day behind it, its hour-of-day baseline is not there yet and
            # z_tod is the plain z, which swings with the daily cycle: training on those rows would
            # teach the model that large deviations are normal.
            first = np.full(n_sensors, np.inf)
            np.minimum.at(first, idx, ts_ms.astype(np.float64))
            settled = ts_ms >= first[idx] + 86_400_000
            if settled.sum() >= cfg.min_train_rows:
                keep &= settled
        # time order across sensors, so that the calibration folds are blocks of time
        order = np.flatnonzero(keep)[np.argsort(ts_ms[keep], kind="stable")]
        feats, idx = feats[order], idx[order]
        if len(feats) < cfg.min_train_rows:
            raise ValueError(f"need at least {cfg.min_train_rows + skip} training rows, got {len(x)}")
        if len(feats) > cfg.max_train_rows:
            pick = np.linspace(0, len(feats) - 1, cfg.max_train_rows).astype(np.int64)
            feats, idx = feats[pick], idx[pick]
        rules = self._fit_rules(x[order] if sensor_idx is None else None, len(feats))
        if (
            "envelope" in cfg.detectors
            and sensor_idx is None
            and len(feats) >= cfg.recon_rows_per_metric * len(self.metrics)
        ):
            envelope = EnvelopeDetector(FEATURE_BLOCKS.index("value"), len(self.metrics), cfg.envelope_margin)
            rules.append(envelope.fit(x[order]))
        learned = [d for d in cfg.detectors if d != "zscore" and d not in RULE_DETECTORS]
        if len(feats) < cfg.recon_rows_per_metric * len(self.metrics):
            learned = [d for d in learned if d != "recon"]
        z_members = ["zscore"] if "zscore" in cfg.detectors else []
        self.scaler = Scaler().fit(feats[:, self._cols])
        xs = self.scaler.transform(feats[:, self._cols])

        # out-of-fold member scores for calibration
        folds = np.array_split(np.arange(len(xs)), max(2, cfg.cv_folds))
        oof = {name: np.empty(len(xs)) for name in learned}
        for hold in folds:
            keep = np.setdiff1d(np.arange(len(xs)), hold)
            scaler = Scaler().fit(feats[keep][:, self._cols])
            xk, xh = scaler.transform(feats[keep][:, self._cols]), scaler.transform(feats[hold][:, self._cols])
            for name in learned:
                det = self._new_detector(name)
                if getattr(det, "raw_features", False):
                    oof[name][hold] = det.fit(feats[keep]).score(feats[hold])
                else:
                    oof[name][hold] = det.fit(xk).score(xh)

        self.detectors = [ZScoreDetector(cfg.zscore_threshold)] if z_members else []
        for name in learned:
            det = self._new_detector(name)
            det = det.fit(feats) if getattr(det, "raw_features", False) else det.fit(xs)
            if name != "kmeans":  # K-Means keeps its percentile threshold, as specified
                det.threshold = float(max(np.quantile(oof[name], cfg.calib_quantile), 1e-9))
            else:
                det.threshold = float(max(np.percentile(oof[name], cfg.kmeans_percentile), 1e-9))
            self.detectors.append(det)

        ratios = [np.minimum(oof[d.name] / d.threshold, cfg.ratio_cap) for d in self.detectors if d.name in oof]
        if z_members:
            z = ZScoreDetector(cfg.zscore_threshold)
            ratios.append(np.minimum(z.score(feats[:, self._z_cols]) / z.threshold, cfg.ratio_cap))
        raw = self.fuse(np.vstack(ratios)) if ratios else np.zeros(len(feats))
        smoothed = self._smooth_sequences(raw, idx)
        self.rules = rules
        # only rule members: they flag at their own limit, so the ensemble threshold is 1
        self.threshold = float(max(np.quantile(smoothed, cfg.alarm_quantile) * cfg.margin, 1e-9)) if ratios else 1.0
        self.initial_state = state[:1] if sensor_idx is None else self.layout.empty(1)
        self.trained_rows = len(x)
        self.fitted_at = time.time()
        self.version = f"fit-{int(self.fitted_at)}"
        return self

    def _fit_rules(self, x: np.ndarray | None, rows: int) -> list[Detector]:
        """The rule members this config asks for; ``shift`` learns its per-metric unit from the training levels.

        The unit of a metric is its training spread times the largest deviation a held-out
        block of training time showed against the other blocks (99th percentile), so a metric
        that drifts in normal operation (a warming motor) needs a larger shift to count.
        """
        cfg = self.config
        rules: list[Detector] = []
        if "flatline" in cfg.detectors:
            rules.append(BlockMaxDetector("flatline", FEATURE_BLOCKS.index("flat"), len(self.metrics), 1.0))
        if "shift" in cfg.detectors and x is not None and rows >= 2 * cfg.cv_folds:
            levels = ewma_rows(x, alpha(cfg.state.shift_smooth_halflife))
            # a drift in normal operation leaves the following baseline behind by its slope times
            # the baseline's lag: the unit must hold that too, or a warming motor stays flagged
            lag = np.abs(levels - ewma_rows(levels, alpha(cfg.state.shift_halflife)))
            burn = min(len(lag) // 2, int(cfg.state.shift_halflife))
            self.rolling.shift_scale = np.maximum(
                oof_scale(levels, cfg.cv_folds, cfg.calib_quantile),
                np.quantile(lag[burn:], cfg.calib_quantile, axis=0),
            )
            if cfg.state.shift_trend_r2 > 0:
                t = np.arange(len(levels), dtype=np.float64) - (len(levels) - 1) / 2
                dev = levels - levels.mean(axis=0)
                slope = (t @ dev) / max(float(t @ t), 1.0)
                r2 = (slope**2 * float(t @ t)) / np.maximum((dev * dev).sum(axis=0), 1e-12)
                self.rolling.shift_drift = np.where(r2 >= cfg.state.shift_trend_r2, slope, 0.0)
            rules.append(
                BlockMaxDetector("shift", FEATURE_BLOCKS.index("shift"), len(self.metrics), cfg.state.shift_freeze)
            )
        return rules

    def fuse(self, ratios: np.ndarray) -> np.ndarray:
        """Combine member ratios (``(members, n)``) into one score per row."""
        how = self.config.fusion
        if how == "max" or len(ratios) == 1:
            return ratios.max(axis=0)
        if how == "top2":
            return np.sort(ratios, axis=0)[-2:].mean(axis=0)
        return ratios.mean(axis=0)

    def _new_detector(self, name: str) -> Detector:
        if name == "kmeans":
            return make_detector(name, percentile=self.config.kmeans_percentile)
        if name == "recon":
            return make_detector(
                name,
                block=FEATURE_BLOCKS.index("value"),
                metrics=len(self.metrics),
                variance=self.config.recon_variance,
            )
        return make_detector(name)

    def _smooth_sequences(self, raw: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The causal score smoothing applied to training scores, per sensor."""
        state = np.zeros((int(idx.max()) + 1 if len(idx) else 1, self.layout.width))
        keep = self.threshold
        self.threshold = np.inf  # smoothing only; no flags wanted here
        try:
            smoothed, _ = self._persist(state, raw, idx)
        finally:
            self.threshold = keep
        return smoothed

    # ------------------------------------------------------------------ scoring
    def features(
        self, state: np.ndarray, x: np.ndarray, ts_ms: np.ndarray, idx: np.ndarray, late: np.ndarray | None = None
    ) -> np.ndarray:
        """Feature rows (updating ``state``); see :meth:`RollingState.run` for ``late``."""
        return self.rolling.run(state, x, ts_ms.astype(np.float64), idx, late)

    def member_scores(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        """Each detector's score divided by its threshold (1.0 = its calibrated limit)."""
        cap = self.config.ratio_cap
        out: dict[str, np.ndarray] = {}
        xs = None
        if self.scaler is not None:
            # an absurd reading (1e300) must give a large score, not an exception inside scikit-learn
            xs = np.clip(nan_to_num(self.scaler.transform(feats[:, self._cols]), nan=0.0), -1e6, 1e6)
        for det in self.detectors:
            if isinstance(det, ZScoreDetector):
                s = det.score(feats[:, self._z_cols])
            elif getattr(det, "raw_features", False):
                s = det.score(feats)
            else:
                s = det.score(xs)
            out[det.name] = np.minimum(nan_to_num(s / det.threshold, nan=cap, posinf=cap), cap)
        return out

    def rule_scores(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        """Each rule member's score / its threshold: 1.0 flags on its own."""
        cap = self.config.ratio_cap
        return {r.name: np.minimum(nan_to_num(r.score(feats) / r.threshold), cap) for r in getattr(self, "rules", [])}

    def contributions(self, feats: np.ndarray) -> np.ndarray:
        """Share of each metric in the row's deviation (rows sum to 1)."""
        m = len(self.metrics)
        if m == 0:
            return np.zeros((len(feats), 0))
        if self.scaler is not None:
            dev = self.scaler.transform(feats[:, self._cols]) ** 2
            per_metric = dev.reshape(len(feats), -1, m).sum(axis=1)
        else:
            per_metric = feats[:, self._z_cols] ** 2
        per_metric = nan_to_num(per_metric)
        if getattr(self, "rules", None) and any(r.name == "flatline" for r in self.rules):
            # a stuck metric explains the flag, however ordinary its value
            flat = self.block(feats, "flat")
            per_metric = per_metric + np.where(flat >= 1, flat * (per_metric.sum(axis=1, keepdims=True) + 1.0), 0.0)
        total = per_metric.sum(axis=1, keepdims=True)
        return np.where(total > 0, per_metric / np.where(total > 0, total, 1.0), 1.0 / m)

    def score(self, state: np.ndarray, feats: np.ndarray, idx: np.ndarray, late: np.ndarray | None = None) -> Scored:
        """Ensemble score, causal smoothing and hysteresis for feature rows (updates ``state``).

        A ``late`` reading is smoothed against its sensor's current score but leaves it as it was.
        """
        # only the scaled members (PCA, K-Means, LOF, IsolationForest) reach BLAS/OpenMP; limiting the pools costs
        # ~0.1 ms a call (each library's thread count set and restored), most of a small batch's statistical scoring
        with single_threaded() if self.scaler is not None else contextlib.nullcontext():
            members = self.member_scores(feats)
        raw = self.fuse(np.vstack(list(members.values()))) if members else np.zeros(len(feats))
        rules = self.rule_scores(feats)
        floor = None
        if rules:
            # a rule at its limit weighs as much as the ensemble at its threshold
            raw = np.maximum(raw, np.vstack(list(rules.values())).max(axis=0) * self.threshold)
            members.update(rules)
            now = [rules[r] for r in self.config.immediate_rules if r in rules]
            if now:
                # a hard limit crossed (a range never seen) flags at once; the score then eases out as usual
                floor = np.vstack(now).max(axis=0) * self.threshold
        smoothed, flags = self._persist(state, raw, idx, late, floor)
        return Scored(smoothed, raw, flags, members, self.contributions(feats), self.threshold)

    def _persist(
        self,
        state: np.ndarray,
        raw: np.ndarray,
        idx: np.ndarray,
        late: np.ndarray | None = None,
        floor: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed scores and flags per reading, in order (the compiled twin of :meth:`_persist_reference`).

        ``floor`` lifts the smoothed score at once (then it decays as usual).
        """
        n = len(raw)
        smoothed, flags = np.empty(n), np.zeros(n, dtype=bool)
        if n == 0:
            return smoothed, flags
        if state.dtype != np.float64 or not state.flags.c_contiguous:
            raise ValueError("state must be a C-contiguous float64 matrix (it is updated in place)")
        kernels.persist_run(
            state,
            np.ascontiguousarray(raw, dtype=np.float64),
            np.ascontiguousarray(idx, dtype=np.int64),
            late if late is not None else flags,
            late is not None,
            np.ascontiguousarray(floor, dtype=np.float64) if floor is not None else raw,
            floor is not None,
            float(self._a_score),
            float(self.threshold),
            float(self.threshold * self.config.off_ratio),
            smoothed,
            flags,
        )
        return smoothed, flags

    def _persist_reference(
        self,
        state: np.ndarray,
        raw: np.ndarray,
        idx: np.ndarray,
        late: np.ndarray | None = None,
        floor: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_persist` in numpy rounds: the reference the kernel is tested against."""
        lay, a = self.layout, self._a_score
        on, off = self.threshold, self.threshold * self.config.off_ratio
        smoothed, flags = np.empty(len(raw)), np.zeros(len(raw), dtype=bool)
        occ = occurrence(idx)
        for j in range(int(occ.max()) + 1 if len(idx) else 0):
            pick = np.flatnonzero(occ == j)
            rows = idx[pick]
            prev = state[rows, lay.SCORE]
            fresh = state[rows, lay.SCORED] == 0
            s = np.where(fresh, raw[pick], prev + a * (raw[pick] - prev))
            if floor is not None:
                s = np.maximum(s, floor[pick])
            was = state[rows, lay.FLAG] > 0
            flag = np.where(was, s >= off, s >= on)
            keep = ~late[pick] if late is not None else slice(None)
            state[rows[keep], lay.SCORE] = s[keep]
            state[rows[keep], lay.FLAG] = flag[keep]
            state[rows[keep], lay.SCORED] += 1
            smoothed[pick], flags[pick] = s, flag
        return smoothed, flags

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "metrics": list(self.metrics),
            "trained": self.trained,
            "trained_rows": self.trained_rows,
            "fitted_at": self.fitted_at,
            "threshold": self.threshold,
            "detectors": {d.name: d.threshold for d in self.detectors},
            "config": self.config.to_dict(),
        }

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, directory / MODEL_FILE, compress=3)
        (directory / META_FILE).write_bytes(orjson.dumps(self.meta(), option=orjson.OPT_INDENT_2))
        return directory

    @staticmethod
    def load(directory: Path | str) -> AnomalyModel:
        path = Path(directory) / MODEL_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {MODEL_FILE} in {directory}; run `python -m services.detector fit` first")
        model = joblib.load(path)
        if not isinstance(model, AnomalyModel):
            raise TypeError(f"{path} does not hold an AnomalyModel")
        return model
