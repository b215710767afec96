"""One micro-batch of clean readings in, scores, anomalies, zone partials and new sensor states out.

Pure: no Kafka, no Faust. The engine (services.detector.worker) hands over the decoded
readings and a way to read a sensor's stored state; it gets back everything to write and send. Readings
are grouped by model profile (and metric list) and each group is scored with a
few vectorised calls, whatever the number of sensors in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, count, pairwise, repeat
from operator import attrgetter, itemgetter, mod, sub
from typing import Any

import numpy as np

from services.detector import aggregates
from services.detector.model import AnomalyModel
from services.detector.profiles import Profile, ProfileSet
from services.detector.reasons import explain
from services.detector.state import Layout, pack, rebaseline, remap, unpack
from shared.mlops.monitor import DriftMonitor
from shared.records import Anomaly, Reading, Score

log = logging.getLogger(__name__)

#: ``extra`` field in which ingest names the cumulative counters of a reading that went down (reset, new meter).
COUNTER_RESETS = "counter_resets"


def counter_resets(reading: Reading, metrics: tuple[str, ...]) -> frozenset[str]:
    """The counters among ``metrics`` that ingest flagged as reset in ``reading`` (``extra.counter_resets``)."""
    extra = reading.extra
    flagged = extra.get(COUNTER_RESETS) if type(extra) is dict else None
    if type(flagged) is not list:
        return frozenset()
    return frozenset(m for m in flagged if type(m) is str and m in metrics)


@dataclass
class BatchResult:
    states: dict[str, Any] = field(default_factory=dict)  # sensor_id -> new state (packed bytes or (metrics, vector))
    scores: list[Score] = field(default_factory=list)  # every reading's, or only flagged ones (emit_scores off)
    scored: dict[str, int] = field(default_factory=dict)  # model name -> readings it scored
    flagged: dict[str, int] = field(default_factory=dict)  # model name -> readings it flagged
    anomalies: list[Anomaly] = field(default_factory=list)
    partials: dict[str, dict[str, dict]] = field(default_factory=dict)  # zone key -> window start -> partial
    bad_states: int = 0
    late: int = 0  # readings not newer than their sensor's newest: scored, state left alone


class ModelStore:
    """The model serving each profile: trained (from the registry) or statistical, swapped atomically."""

    def __init__(self, profiles: ProfileSet, zscore_threshold: float = 2.5):
        self.profiles = profiles
        self.zscore_threshold = zscore_threshold
        self.trained: dict[str, AnomalyModel] = {}
        self._statistical: dict[tuple[str, tuple[str, ...]], AnomalyModel] = {}

    def set_trained(self, profile: str, model: AnomalyModel) -> None:
        self.trained = {**self.trained, profile: model}  # new dict: a batch in flight keeps its view

    def model_for(self, profile: Profile, metrics: tuple[str, ...]) -> AnomalyModel:
        model = self.trained.get(profile.name)
        if model is not None:
            return model
        key = (profile.name, metrics)
        model = self._statistical.get(key)
        if model is None:
            model = AnomalyModel(metrics, profile.model_config(self.zscore_threshold), name=profile.name)
            if len(self._statistical) > 10_000:  # a catch-all profile fed ever new metric names
                self._statistical.clear()
            self._statistical[key] = model
        return model

    def metrics_for(self, profile: Profile, reading: Reading) -> tuple[str, ...]:
        metrics = self.fixed_metrics(profile)
        return tuple(sorted(reading.values)) if metrics is None else metrics

    def fixed_metrics(self, profile: Profile) -> tuple[str, ...] | None:
        """The metrics of every reading of ``profile``; None when they are each reading's own."""
        model = self.trained.get(profile.name)
        if model is not None:
            return model.metrics
        return profile.metrics or None


class Scorer:
    """Scores micro-batches; one per worker, shared by every profile."""

    def __init__(
        self,
        store: ModelStore,
        window_ms: int = 30_000,
        reason_metrics: int = 3,
        emit_scores: bool = True,
        packed: bool = True,
        monitor: DriftMonitor | None = None,
    ):
        # packed=False: states come and go as (metrics, vector) and the caller packs them when it
        # persists them (the engine keeps them unpacked in memory between checkpoints)
        self.packed = packed
        self.store = store
        self.window_ms = window_ms
        self.reason_metrics = reason_metrics
        self.emit_scores = emit_scores
        self.monitor = monitor  # drift: each group's inputs and score, histogrammed (shared.mlops.monitor)

    def process(self, readings: list[Reading], load_state: Callable[[str], Any]) -> BatchResult:
        result = BatchResult()
        groups: dict[tuple[str, tuple[str, ...]], list[Reading]] = {}
        profiles: dict[str, Profile] = {}
        # profile (the object: two may share a name) -> its group, for a profile whose metrics are not each
        # reading's own: the common case then costs one profile lookup and one dict get per reading
        fixed: dict[int, list[Reading]] = {}
        store = self.store
        for_reading = store.profiles.for_reading
        for r in readings:
            profile = for_reading(r)
            group = fixed.get(id(profile))
            if group is None:
                metrics = store.fixed_metrics(profile)  # read once: a model promoted meanwhile changes both or neither
                key = (profile.name, tuple(sorted(r.values)) if metrics is None else metrics)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = []
                    profiles[profile.name] = profile
                if metrics is not None:
                    fixed[id(profile)] = group
            group.append(r)
        for (pname, metrics), batch in groups.items():
            self._score_with_resets(profiles[pname], metrics, batch, load_state, result)
        return result

    def _score_with_resets(
        self,
        profile: Profile,
        metrics: tuple[str, ...],
        batch: list[Reading],
        load_state: Callable[[str], Any],
        result: BatchResult,
    ) -> None:
        """A group, in segments at its counter resets: a counter's reset is not an anomaly, its old level no baseline.

        The batch is scored in segments, each reading with a reset starting one, and that sensor's
        statistics of the reset counters start afresh before it (:func:`~services.detector.state.rebaseline`):
        the counter warms up again from its new level. State updates are causal and exact whatever the
        batching, so the segments score every other reading as one batch would.
        """
        # extra comes from outside: any JSON (counter_resets reads only an object's list of names)
        if not any(map(_EXTRA, batch)):  # the common case: no reading says anything of its counters
            self._score_group(profile, metrics, batch, load_state, result)
            return
        extras = list(map(_EXTRA, batch))
        starts = [
            i for i, (r, extra) in enumerate(zip(batch, extras, strict=True)) if extra and counter_resets(r, metrics)
        ]
        if not starts:
            self._score_group(profile, metrics, batch, load_state, result)
            return
        bounds = sorted({0, *starts, len(batch)})
        carried: dict[str, Any] = {}  # states left by the earlier segments of this group

        for a, b in pairwise(bounds):
            segment = batch[a:b]
            first = segment[0]
            forget = counter_resets(first, metrics) if first.extra else frozenset()

            def load(sid: str, first: Reading = first, forget: frozenset[str] = forget) -> Any:
                raw = carried[sid] if sid in carried else load_state(sid)
                if forget and sid == first.sensor_id and raw is not None:
                    old, vector = raw if isinstance(raw, tuple) else unpack(raw)
                    raw = (metrics, rebaseline(remap(vector, old, metrics), metrics, forget))
                return raw

            self._score_group(profile, metrics, segment, load, result)
            for r in segment:
                carried[r.sensor_id] = result.states[r.sensor_id]

    def _score_group(
        self,
        profile: Profile,
        metrics: tuple[str, ...],
        batch: list[Reading],
        load_state: Callable[[str], Any],
        result: BatchResult,
    ) -> None:
        model = self.store.model_for(profile, metrics)
        layout = model.layout
        n = len(batch)
        # the readings' fields as columns (the Score of each reading is built from them in one C-level map)
        sids = [r.sensor_id for r in batch]
        stamps = [r.ts for r in batch]
        sites = [r.site for r in batch]
        zones = [r.zone for r in batch]
        utilities = [r.utility for r in batch]
        assets = [r.asset for r in batch]
        sensors = dict(zip(dict.fromkeys(sids), count()))  # the group's sensors (-> row) in order of first reading
        if len(sensors) == n:  # one reading per sensor (the common case): reading i is row i
            idx = np.arange(n, dtype=np.int64)
        else:
            idx = np.fromiter(map(sensors.__getitem__, sids), dtype=np.int64, count=n)
        state = self._load(layout, metrics, sensors, load_state, result)
        x = _values(batch, metrics)
        ts = np.fromiter(stamps, dtype=np.float64, count=n)
        late = np.zeros(n, dtype=bool)
        feats = model.features(state, x, ts, idx, late)
        scored = model.score(state, feats, idx, late)
        result.late += int(late.sum())
        result.scored[model.name] = result.scored.get(model.name, 0) + n
        flag_rows = np.flatnonzero(scored.anomaly).tolist()
        result.flagged[model.name] = result.flagged.get(model.name, 0) + len(flag_rows)
        states = result.states
        if self.packed:
            states.update(zip(sensors, map(pack, repeat(metrics), state), strict=True))
        else:
            # copies: a view would keep the batch's whole matrix alive
            states.update(zip(sensors, zip(repeat(metrics), map(np.ndarray.copy, state)), strict=True))
        if self.monitor is not None:
            # the score as retrain's reference holds it: the reading's own ensemble score in thresholds
            columns = {m: x[:, j] for j, m in enumerate(metrics)}
            columns["score"] = scored.raw / scored.threshold if scored.threshold > 0 else scored.raw
            self.monitor.observe(profile.name, ts, columns)

        threshold = float(scored.threshold)
        top = min(self.reason_metrics, len(metrics))
        tz = model.config.state.tz_offset_h
        contrib = scored.contributions
        score_list = np.round(scored.score, 4).tolist()
        thr = round(threshold, 4)
        version, name = model.version, model.name
        emit = self.emit_scores
        # the top contributions of each scored reading: of every reading, or only of the flagged ones
        pick = slice(None) if emit else flag_rows
        if len(metrics):
            picked = contrib[pick]
            best = np.argsort(-picked, axis=1)[:, :top]
            shares = np.round(np.take_along_axis(picked, best, axis=1), 3)
            contributions = _dicts(np.array(metrics, dtype=object)[best].tolist(), shares.tolist(), top)
            for i in np.flatnonzero(~(shares > 0).all(axis=1)).tolist():  # a share of 0 (or NaN) is not a contribution
                contributions[i] = {m: c for m, c in contributions[i].items() if c > 0}
        else:
            contributions = [{} for _ in range(n if emit else len(flag_rows))]
        flags = [False] * n
        for i in flag_rows:
            flags[i] = True
        if emit:
            result.scores.extend(
                map(
                    Score,
                    sids,
                    stamps,
                    sites,
                    zones,
                    utilities,
                    assets,
                    score_list,
                    repeat(thr),
                    flags,
                    repeat(name),
                    repeat(version),
                    contributions,
                )
            )
        else:
            result.scores.extend(
                Score(
                    sids[i],
                    stamps[i],
                    sites[i],
                    zones[i],
                    utilities[i],
                    assets[i],
                    score_list[i],
                    thr,
                    True,
                    name,
                    version,
                    c,
                )
                for i, c in zip(flag_rows, contributions, strict=True)
            )
        for i in flag_rows:
            r = batch[i]
            reason, tops = explain(metrics, feats[i], contrib[i], r.units, r.ts, tz, top)
            ratio = score_list[i] / threshold if threshold > 0 else 0.0
            result.anomalies.append(
                Anomaly(
                    sensor_id=r.sensor_id,
                    ts=r.ts,
                    site=r.site,
                    zone=r.zone,
                    utility=r.utility,
                    asset=r.asset,
                    score=score_list[i],
                    threshold=thr,
                    model_version=version,
                    reason=reason,
                    top_metrics=tops,
                    values=dict(r.values),
                    severity="critical" if ratio >= 2.0 else "warning",
                )
            )
        window = self.window_ms
        cells = list(zip(sites, zones, utilities, map(sub, stamps, map(mod, stamps, repeat(window))), strict=True))
        self._aggregate(cells, metrics, x, scored.anomaly, ts, result)

    def _load(
        self,
        layout: Layout,
        metrics: tuple[str, ...],
        sensors: dict[str, int],
        load_state: Callable[[str], Any],
        result: BatchResult,
    ) -> np.ndarray:
        """The group's state matrix (a row per sensor) from their stored states in any form: unpacked or packed,
        kept for other metrics or by an older layout, corrupt (counted in ``bad_states``) or none (a fresh row)."""
        width = layout.width
        rows: list[int] = []
        vectors: list[np.ndarray] = []
        for sid, row in sensors.items():
            raw = load_state(sid)
            if raw is None:
                continue
            try:
                old_metrics, vec = raw if isinstance(raw, tuple) else unpack(raw)
                if old_metrics != metrics or len(vec) != width:
                    vec = remap(vec, old_metrics, metrics)
            except (ValueError, IndexError) as exc:  # a corrupt state must not stop the stream: start afresh
                result.bad_states += 1
                log.warning("state of sensor %s unreadable (%s); starting it afresh", sid, exc)
                continue
            rows.append(row)
            vectors.append(vec)
        if len(rows) == len(sensors):  # every sensor has a state (the steady case): copied straight into the matrix
            state = np.empty((len(rows), width))  # (no fresh rows to initialise)
            np.concatenate(vectors, out=state.reshape(-1))
            return state
        state = layout.empty(len(sensors))
        if rows:
            state[rows] = vectors  # one copy into the matrix, not one numpy call per sensor
        return state

    def _aggregate(
        self,
        cells: list[tuple[str, str, str, int]],
        metrics: tuple[str, ...],
        x: np.ndarray,
        flags: np.ndarray,
        ts: np.ndarray,
        result: BatchResult,
    ) -> None:
        """Zone/window partials of a group: one reduction per statistic over all cells at once.

        ``cells`` holds each reading's (site, zone, utility, window start).
        """
        # a cell's code is its first reading's position: codes in order of first reading, one hash a reading
        first: dict[tuple[str, str, str, int], int] = {}
        codes = np.fromiter(map(first.setdefault, cells, count()), dtype=np.int64, count=len(cells))
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_codes)) + 1))
        sub = x[order]
        seen = ~np.isnan(sub)
        counts = np.add.reduceat(seen, starts, axis=0)
        sums = np.add.reduceat(np.where(seen, sub, 0.0), starts, axis=0)
        mins = np.minimum.reduceat(np.where(seen, sub, np.inf), starts, axis=0)
        maxs = np.maximum.reduceat(np.where(seen, sub, -np.inf), starts, axis=0)
        n = np.diff(np.append(starts, len(cells)))
        flagged = np.add.reduceat(flags[order].astype(np.int64), starts)
        last_ts = np.maximum.reduceat(ts[order], starts)
        for c, code in enumerate(sorted_codes[starts].tolist()):
            site, zone, utility, ws = cells[code]
            key = aggregates.zone_key(site, zone, utility)
            partial = {
                "n": int(n[c]),
                "anomalies": int(flagged[c]),
                "ts": int(last_ts[c]),
                "m": {
                    m: [int(counts[c, j]), float(sums[c, j]), float(mins[c, j]), float(maxs[c, j])]
                    for j, m in enumerate(metrics)
                    if counts[c, j]
                },
            }
            cell = result.partials.setdefault(key, {})
            wkey = str(ws)
            cell[wkey] = aggregates.merge(cell[wkey], partial) if wkey in cell else partial


_EXTRA = attrgetter("extra")
_VALUES = attrgetter("values")


def _dicts(keys: list[list[str]], values: list[list[float]], width: int) -> list[dict[str, float]]:
    """A dict of each row's keys and values (rows ``width`` long): the usual widths built as dict displays."""
    if width == 3:
        return [{a: x, b: y, c: z} for (a, b, c), (x, y, z) in zip(keys, values, strict=True)]
    if width == 2:
        return [{a: x, b: y} for (a, b), (x, y) in zip(keys, values, strict=True)]
    if width == 1:
        return [{a: x} for (a,), (x,) in zip(keys, values, strict=True)]
    return list(map(dict, map(zip, keys, values)))


def _values(batch: list[Reading], metrics: tuple[str, ...]) -> np.ndarray:
    """The ``(readings, metrics)`` matrix of the readings' values, NaN where a reading lacks a metric."""
    n, m = len(batch), len(metrics)
    if m:
        # each reading's values in one C call; a reading without one of the metrics takes the general way
        values = map(itemgetter(*metrics), map(_VALUES, batch))
        try:
            return np.fromiter(values if m == 1 else chain.from_iterable(values), np.float64, n * m).reshape(n, m)
        except (KeyError, TypeError, ValueError):
            pass
    nan = np.nan
    return np.array([r.values.get(k, nan) for r in batch for k in metrics], dtype=np.float64).reshape(n, m)
