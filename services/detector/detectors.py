"""Anomaly detectors over feature rows: every one scores a matrix at once, higher is more anomalous.

Each detector is fitted on standardised features of normal operation and keeps
the threshold calibrated for it (``threshold``), so a score divided by its
threshold is comparable across detectors: 1.0 means "as unusual as the
calibration quantile of normal data". The ensemble averages those ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.detector.numeric import nan_to_num

# scikit-learn is imported by the detectors that use it, when one is built or scored: a model of only the
# offline detectors (what `detector score` loads) then starts without its ~2 CPU s of imports
if TYPE_CHECKING:
    from sklearn.cluster import KMeans
    from sklearn.neighbors import LocalOutlierFactor


@dataclass
class Scaler:
    """Centre and scale per feature, with a floor so a near-constant feature cannot explode."""

    rel_floor: float = 0.01
    abs_floor: float = 1e-6
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))

    def fit(self, x: np.ndarray) -> Scaler:
        self.center = np.median(x, axis=0)
        std = x.std(axis=0)
        iqr = np.subtract(*np.percentile(x, [75, 25], axis=0)) / 1.349
        floor = np.maximum(self.rel_floor * np.abs(self.center), self.abs_floor)
        # the larger of std and IQR: robust to a few outliers, yet honest about heavy tails
        self.scale = np.maximum(np.maximum(std, iqr), floor)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.center) / self.scale


class Detector:
    """Base: ``fit`` on normal rows, ``score`` rows, ``threshold`` set by calibration."""

    name = "detector"
    needs_fit = True
    threshold: float = 1.0

    def fit(self, x: np.ndarray) -> Detector:
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ZScoreDetector(Detector):
    """Largest absolute z-score of a row against the rolling state; needs no training."""

    name = "zscore"
    needs_fit = False

    def __init__(self, threshold: float = 2.5):
        self.threshold = threshold

    def score(self, z: np.ndarray) -> np.ndarray:
        return np.abs(z).max(axis=1) if z.shape[1] else np.zeros(len(z))


class IsolationForestDetector(Detector):
    name = "iforest"

    def __init__(self, n_estimators: int = 64, max_samples: int | str = "auto", seed: int = 0):
        from sklearn.ensemble import IsolationForest

        self.model = IsolationForest(n_estimators=n_estimators, max_samples=max_samples, random_state=seed)

    def fit(self, x: np.ndarray) -> IsolationForestDetector:
        self.model.fit(x)
        self._denominator: float | None = None
        self.__dict__.pop("_flat", None)  # the same forest object, refitted: its trees are new
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """``-score_samples``: 2^(-mean path length / c(n)), higher is more anomalous.

        Every tree is walked in one compiled loop (:func:`kernels.forest_run`, bit-identical to the trees' own
        ``apply``): 1.6 ms for 2,000 rows where scikit-learn's trees one by one take 5.3, and ~6 µs a call into a
        tree saved for a small batch (scikit-learn's ``score_samples`` dispatches each tree through joblib, which
        for a 2,000-row micro-batch costs more than the trees themselves). Rows with NaN (a tree may send a missing
        value left) send their batch tree by tree through each fitted tree's ``apply``; a fitted forest lacking the
        arrays it needs, to ``score_samples``.
        """
        forest = self.model
        if not all(
            hasattr(forest, a) for a in ("_decision_path_lengths", "_average_path_length_per_tree", "_max_samples")
        ):
            return -forest.score_samples(x)
        xs = np.ascontiguousarray(x, dtype=np.float32)
        flat = self._flat_trees()
        # the walk reads the columns its trees split on unchecked: a row narrower than the fit goes to scikit-learn
        wide_enough = xs.shape[1] >= getattr(forest, "n_features_in_", xs.shape[1])
        if flat is not None and len(xs) and wide_enough and not np.isnan(xs).any():
            from services.detector import kernels

            depths = np.empty(len(xs))
            kernels.forest_run(xs, *flat, depths)
        else:
            depths = self._depths(xs)
        denominator = getattr(self, "_denominator", None)
        if denominator is None:  # a constant of the fitted forest (a model loaded from disk has none yet)
            from sklearn.ensemble._iforest import _average_path_length

            denominator = self._denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])[0]
        if denominator == 0:
            return np.ones(len(xs))
        return 2.0 ** (-depths / denominator)

    def _depths(self, xs: np.ndarray) -> np.ndarray:
        """Per row the sum over trees of its leaf's path length, tree by tree through scikit-learn's trees."""
        forest = self.model
        path_lengths, avg_lengths = forest._decision_path_lengths, forest._average_path_length_per_tree
        depths = np.zeros(len(xs))
        all_features = forest._max_features == xs.shape[1]
        for tree, features, dpl, apl in zip(
            forest.estimators_, forest.estimators_features_, path_lengths, avg_lengths, strict=True
        ):
            # the fitted tree's own apply (what ``tree.apply(..., check_input=False)`` ends in): scikit-learn's
            # checks around it cost ~90 µs a tree, 64 trees a micro-batch however small
            leaves = tree.tree_.apply(xs if all_features else np.ascontiguousarray(xs[:, features]))
            depths += dpl[leaves] + apl[leaves] - 1.0
        return depths

    def _flat_trees(self) -> tuple[np.ndarray, ...] | None:
        """The fitted trees as :func:`kernels.forest_run` reads them, built once per fitted forest (not pickled)."""
        flat = self.__dict__.get("_flat")
        if flat is not None and flat[0] is self.model:
            return flat[1]
        forest, built = self.model, None
        try:
            roots, steps, child, column, threshold, value = [], [], [], [], [], []
            offset = 0
            for tree, features, dpl, apl in zip(
                forest.estimators_,
                forest.estimators_features_,
                forest._decision_path_lengths,
                forest._average_path_length_per_tree,
                strict=True,
            ):
                t = tree.tree_
                leaf = t.children_left == -1
                ids = np.arange(t.node_count)
                pairs = np.empty((t.node_count, 2), dtype=np.int64)  # a leaf is its own two children
                pairs[:, 0] = np.where(leaf, ids, t.children_left) + offset
                pairs[:, 1] = np.where(leaf, ids, t.children_right) + offset
                # a node's feature indexes the tree's own columns: map it to the row's (a leaf's is never compared)
                column.append(np.where(leaf, 0, np.asarray(features)[np.where(leaf, 0, t.feature)]))
                # float32 rows against the largest float32 not above the float64 threshold: the same answer
                wide = np.where(leaf, 0.0, t.threshold)
                narrow = wide.astype(np.float32)
                over = narrow.astype(np.float64) > wide
                narrow[over] = np.nextafter(narrow[over], np.float32(-np.inf))
                threshold.append(narrow)
                child.append(pairs.reshape(-1))
                value.append(dpl + apl - 1.0)
                roots.append(offset)
                steps.append(t.max_depth)
                offset += t.node_count
            if offset >= 2**31:
                raise ValueError("more nodes than int32 indexes")
            from services.detector.kernels import FOREST_DTYPES

            arrays = (roots, steps, np.concatenate(child), np.concatenate(column), np.concatenate(threshold))
            built = tuple(
                np.ascontiguousarray(a, dtype=t)
                for a, t in zip((*arrays, np.concatenate(value)), FOREST_DTYPES, strict=True)
            )
        except (AttributeError, ValueError):
            built = None  # a forest this walk does not reproduce: scikit-learn's own trees
        self._flat = (forest, built)
        return built

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_flat"}


class KMeansDetector(Detector):
    """Distance to the nearest centroid of normal operating modes."""

    name = "kmeans"

    def __init__(self, clusters: int = 8, percentile: float = 95.0, seed: int = 0):
        self.clusters = clusters
        self.percentile = percentile
        self.seed = seed
        self.model: KMeans | None = None

    def fit(self, x: np.ndarray) -> KMeansDetector:
        from sklearn.cluster import KMeans

        k = max(1, min(self.clusters, len(x) // 10))
        self.model = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(x)
        self.threshold = float(np.percentile(self.score(x), self.percentile))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        assert self.model is not None
        xs = np.ascontiguousarray(x, dtype=np.float64)  # the C-ordered float64 array ``transform``'s checks make
        centres = self.model.cluster_centers_
        if centres.dtype != np.float64:
            return self.model._transform(xs).min(axis=1)
        # scikit-learn's ``euclidean_distances`` for float64, the same operations in the same order, less its checks
        # and array-API dispatch: ~0.12 ms a call, a third of a 10-reading batch's scoring (sqrt is monotonic, so
        # the nearest centre is the same before and after it)
        distances = -2 * (xs @ centres.T)
        distances += np.einsum("ij,ij->i", xs, xs)[:, None]
        distances += np.einsum("ij,ij->i", centres, centres)[None, :]
        np.maximum(distances, 0, out=distances)
        return np.sqrt(distances).min(axis=1)


class LOFDetector(Detector):
    """Local outlier factor in novelty mode: density of a row relative to its normal neighbours."""

    name = "lof"

    def __init__(self, neighbours: int = 10, max_samples: int = 1000):
        self.neighbours = neighbours
        self.max_samples = max_samples
        self.model: LocalOutlierFactor | None = None

    def fit(self, x: np.ndarray) -> LOFDetector:
        # Every scored row searches its neighbours in the reference set: an even sample of
        # 1,000 normal rows and 10 neighbours, searched brute force (one BLAS product), score
        # a micro-batch several times faster than 20 neighbours in a tree over all rows.
        if len(x) > self.max_samples:
            x = x[np.linspace(0, len(x) - 1, self.max_samples).astype(np.int64)]
        from sklearn.neighbors import LocalOutlierFactor

        self.model = LocalOutlierFactor(
            n_neighbors=min(self.neighbours, len(x) - 1), novelty=True, algorithm="brute"
        ).fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        """``-score_samples``, computed from one BLAS product and a compiled neighbour selection.

        scikit-learn's brute-force search (``ArgKmin``) cost ~12 µs a row here, more than the rest of the
        ensemble together; the product of the rows with the reference set and :func:`kernels.lof_run` give
        the same scores to float rounding (the same squared distances, summed in another order). Falls back
        to ``score_samples`` for a fitted model this does not reproduce (another metric, sparse input).
        """
        assert self.model is not None
        ref = self._reference()
        if ref is None:
            return -self.model.score_samples(x)
        from services.detector import kernels

        yt, yy, kdist, lrd, k = ref
        xs = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty(len(xs))
        if len(xs):
            kernels.lof_run(xs @ yt, np.einsum("ij,ij->i", xs, xs), yy, kdist, lrd, k, out)
        return out

    def _reference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None:
        """The fitted reference set as the kernel reads it, built once per fitted model (not pickled)."""
        ref = self.__dict__.get("_ref")
        if ref is not None and ref[0] is self.model:
            return ref[1]
        model, fast = self.model, None
        fit_x = getattr(model, "_fit_X", None)
        if (
            isinstance(fit_x, np.ndarray)
            and fit_x.dtype == np.float64
            and getattr(model, "effective_metric_", None) == "euclidean"
            and hasattr(model, "_lrd")
            and hasattr(model, "_distances_fit_X_")
        ):
            k = int(model.n_neighbors_)
            fast = (
                np.ascontiguousarray(fit_x.T),
                np.einsum("ij,ij->i", fit_x, fit_x),
                np.ascontiguousarray(model._distances_fit_X_[:, k - 1], dtype=np.float64),
                np.ascontiguousarray(model._lrd, dtype=np.float64),
                k,
            )
        self._ref = (model, fast)
        return fast

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_ref"}


class PCADetector(Detector):
    """PCA on standardised features: Hotelling's T² inside the model plane, Q (SPE) off it.

    The score is the larger of T² and Q, each divided by its own calibrated limit,
    so it crosses 1.0 when either statistic does.
    """

    name = "pca"

    def __init__(self, variance: float = 0.9, max_components: int | None = None):
        self.variance = variance
        self.max_components = max_components
        self.mean = np.zeros(0)
        self.components = np.zeros((0, 0))
        self.eigvals = np.ones(0)
        self.t2_limit = 1.0
        self.q_limit = 1.0

    def fit(self, x: np.ndarray) -> PCADetector:
        self.mean = x.mean(axis=0)
        xc = x - self.mean
        _, sv, vt = np.linalg.svd(xc, full_matrices=False)
        eig = sv**2 / max(len(x) - 1, 1)
        ratio = np.cumsum(eig) / max(eig.sum(), 1e-12)
        k = int(np.searchsorted(ratio, self.variance) + 1)
        k = min(k, self.max_components or k, len(eig) - 1 if len(eig) > 1 else 1)
        self.components = vt[:k]
        self.eigvals = np.maximum(eig[:k], 1e-9)
        t2, q = self.statistics(x)
        self.t2_limit = float(max(np.quantile(t2, 0.99), 1e-9))
        self.q_limit = float(max(np.quantile(q, 0.99), 1e-9))
        return self

    def statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xc = x - self.mean
        t = xc @ self.components.T
        t2 = (t * t / self.eigvals).sum(axis=1)
        resid = xc - t @ self.components
        return t2, (resid * resid).sum(axis=1)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        xc = x - self.mean
        return xc - (xc @ self.components.T) @ self.components

    def score(self, x: np.ndarray) -> np.ndarray:
        t2, q = self.statistics(x)
        return np.maximum(t2 / self.t2_limit, q / self.q_limit)


class ReconstructionDetector(Detector):
    """Squared reconstruction error (PCA's Q) of the raw values of one stream's channels.

    Relationships between channels: in a water network a tank level, the pumps filling it
    and the pressures around it move together; a reading that breaks the pattern leaves the
    plane of normal operation even when each channel is within its own range. The values are
    scaled with a floor of ``rel_floor`` of each channel's level so that a channel at a
    fixed set point (or recorded at a coarser resolution later) does not explode, and the
    plane keeps ``variance`` of the scaled variance: fine structure, for the residual to mean
    something. Reads the ``value`` block of full feature rows (``block``, ``metrics``).
    """

    name = "recon"
    raw_features = True

    def __init__(self, block: int = 0, metrics: int = 0, variance: float = 0.995, rel_floor: float = 0.02):
        self.cols = np.arange(block * metrics, (block + 1) * metrics)
        self.scaler = Scaler(rel_floor=rel_floor, abs_floor=1e-3)
        self.pca = PCADetector(variance=variance)

    def fit(self, feats: np.ndarray) -> ReconstructionDetector:
        x = feats[:, self.cols]
        self.scaler.center = x.mean(axis=0)
        self.scaler.scale = np.maximum(x.std(axis=0), np.maximum(self.scaler.rel_floor * np.abs(x.mean(axis=0)), 1e-3))
        self.pca.fit(self.scaler.transform(x))
        return self

    def score(self, feats: np.ndarray) -> np.ndarray:
        r = self.pca.residuals(nan_to_num(self.scaler.transform(feats[:, self.cols])))
        return (r * r).sum(axis=1)


class EnvelopeDetector(Detector):
    """How far a reading's channels leave the envelope normal operation kept them in, per actuator state.

    A year of SCADA history shows every channel's range; the control logic narrows it further:
    a tank level never exceeded 4.5 m while its pump ran (the pump stops before), so a level of
    4.8 m with the pump still on is an attack or a failed controller even though 4.8 m is an
    ordinary level with the pump off. Per channel the envelope is its training [min, max];
    for every two-state channel (a pump or valve status, each state held in at least
    ``min_share`` of the rows) each channel also gets its [min, max] per state. The score is the
    largest excess beyond the envelopes that apply, in units of the channel's training range
    (floored at ``rel_floor`` of its level, so a channel held at a set point, or recorded at a
    coarser resolution later, cannot explode); the threshold is ``margin`` of that range.
    Reads the ``value`` block of full feature rows (``block``, ``metrics``).
    """

    name = "envelope"
    raw_features = True

    def __init__(
        self, block: int = 0, metrics: int = 0, margin: float = 0.15, min_share: float = 0.05, rel_floor: float = 0.02
    ):
        self.cols = np.arange(block * metrics, (block + 1) * metrics)
        self.threshold = margin
        self.min_share = min_share
        self.rel_floor = rel_floor
        self.lo = self.hi = np.zeros(0)
        self.unit = np.ones(0)
        self.states = np.zeros(0, dtype=np.int64)  # the two-state channels
        self.state_values = np.zeros((0, 2))
        self.state_lo = self.state_hi = np.zeros((0, 2, 0))

    def fit(self, x: np.ndarray) -> EnvelopeDetector:
        """Fit on raw values ``(n, metrics)`` of normal operation (NaN: missing)."""
        self.lo, self.hi = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
        level = np.abs(np.nanmean(x, axis=0))
        self.unit = np.maximum(self.hi - self.lo, np.maximum(self.rel_floor * level, 1e-3))
        states, values, los, his = [], [], [], []
        for j in range(x.shape[1]):
            seen = x[np.isfinite(x[:, j]), j]
            distinct, counts = np.unique(seen, return_counts=True)
            if len(distinct) != 2 or counts.min() < self.min_share * len(x):
                continue
            per_state = [x[x[:, j] == v] for v in distinct]
            states.append(j)
            values.append(distinct)
            los.append([np.nanmin(p, axis=0) for p in per_state])
            his.append([np.nanmax(p, axis=0) for p in per_state])
        m = x.shape[1]
        self.states = np.asarray(states, dtype=np.int64)
        self.state_values = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        self.state_lo = np.asarray(los, dtype=np.float64).reshape(-1, 2, m)
        self.state_hi = np.asarray(his, dtype=np.float64).reshape(-1, 2, m)
        return self

    def excess(self, x: np.ndarray) -> np.ndarray:
        """Per reading and channel, the excess beyond every envelope that applies, in range units."""
        out = np.maximum(self.lo - x, x - self.hi)
        for k, j in enumerate(self.states):
            for s in (0, 1):
                here = x[:, j] == self.state_values[k, s]
                if here.any():
                    sub = x[here]
                    beyond = np.maximum(self.state_lo[k, s] - sub, sub - self.state_hi[k, s])
                    out[here] = np.maximum(out[here], beyond)
        return nan_to_num(np.maximum(out, 0.0) / self.unit)

    def score(self, feats: np.ndarray) -> np.ndarray:
        if not len(self.cols):
            return np.zeros(len(feats))
        return self.excess(feats[:, self.cols]).max(axis=1)


class BlockMaxDetector(Detector):
    """Largest absolute value of one per-metric feature block, against a fixed limit.

    Serves the rule members (flatline, level shift), whose features are already in
    calibrated units: the flatline block is a still run over its learnt limit, the shift
    block a level change over its learnt unit.
    """

    needs_fit = False

    def __init__(self, name: str, block: int, metrics: int, threshold: float):
        self.name = name
        self.cols = np.arange(block * metrics, (block + 1) * metrics)
        self.threshold = threshold

    def score(self, feats: np.ndarray) -> np.ndarray:
        return np.abs(feats[:, self.cols]).max(axis=1) if len(self.cols) else np.zeros(len(feats))


def oof_scale(levels: np.ndarray, folds: int = 5, quantile: float = 0.99) -> np.ndarray:
    """Per column: spread times the largest held-out deviation across contiguous blocks of normal time.

    Each block is compared with the mean and spread of the others; the ``quantile`` of
    those out-of-fold |z| says how far normal operation wanders between blocks, so a
    column that drifts gets a unit large enough to hold its drift.
    """
    sd = np.maximum(levels.std(axis=0), 1e-9 + 1e-6 * np.abs(levels.mean(axis=0)))
    blocks = np.array_split(np.arange(len(levels)), max(2, folds))
    oof = np.zeros_like(levels)
    for hold in blocks:
        rest = np.setdiff1d(np.arange(len(levels)), hold)
        mu, s = levels[rest].mean(axis=0), np.maximum(levels[rest].std(axis=0), 1e-9)
        oof[hold] = np.abs((levels[hold] - mu) / s)
    return sd * np.maximum(np.quantile(oof, quantile, axis=0), 1.0)


def make_detector(name: str, **params: object) -> Detector:
    kinds: dict[str, type[Detector]] = {
        "zscore": ZScoreDetector,
        "iforest": IsolationForestDetector,
        "kmeans": KMeansDetector,
        "lof": LOFDetector,
        "pca": PCADetector,
        "recon": ReconstructionDetector,
        "envelope": EnvelopeDetector,
    }
    if name not in kinds:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(kinds)}")
    return kinds[name](**params)  # type: ignore[arg-type]
