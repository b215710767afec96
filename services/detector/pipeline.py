"""One micro-batch of clean readings in, scores, anomalies, zone partials and new sensor states out.

Pure: no Kafka, no Faust. The agent hands over the decoded readings and a way to
read a sensor's stored state; it gets back everything to write and send. Readings
are grouped by model profile (and metric list) and each group is scored with a
few vectorised calls, whatever the number of sensors in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.detector import aggregates
from services.detector.model import AnomalyModel
from services.detector.profiles import Profile, ProfileSet
from services.detector.reasons import explain
from services.detector.state import pack, remap, unpack
from shared.records import Anomaly, Reading, Score

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    states: dict[str, bytes] = field(default_factory=dict)  # sensor_id -> new packed state
    last_index: dict[str, int] = field(default_factory=dict)  # sensor_id -> its last reading in the batch
    scores: list[Score] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    partials: dict[str, dict[str, dict]] = field(default_factory=dict)  # zone key -> window start -> partial
    bad_states: int = 0


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
        model = self.trained.get(profile.name)
        if model is not None:
            return model.metrics
        if profile.metrics:
            return profile.metrics
        return tuple(sorted(reading.values))


class Scorer:
    """Scores micro-batches; one per worker, shared by every profile."""

    def __init__(
        self,
        store: ModelStore,
        window_ms: int = 30_000,
        reason_metrics: int = 3,
        emit_scores: bool = True,
    ):
        self.store = store
        self.window_ms = window_ms
        self.reason_metrics = reason_metrics
        self.emit_scores = emit_scores

    def process(self, readings: list[Reading], load_state: Callable[[str], bytes | None]) -> BatchResult:
        result = BatchResult()
        groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        profiles: dict[str, Profile] = {}
        for i, r in enumerate(readings):
            profile = self.store.profiles.for_reading(r)
            profiles[profile.name] = profile
            groups.setdefault((profile.name, self.store.metrics_for(profile, r)), []).append(i)
            result.last_index[r.sensor_id] = i
        for (pname, metrics), rows in groups.items():
            self._score_group(profiles[pname], metrics, [readings[i] for i in rows], load_state, result)
        return result

    def _score_group(
        self,
        profile: Profile,
        metrics: tuple[str, ...],
        batch: list[Reading],
        load_state: Callable[[str], bytes | None],
        result: BatchResult,
    ) -> None:
        model = self.store.model_for(profile, metrics)
        layout = model.layout
        sensors: dict[str, int] = {}
        idx = np.fromiter(
            (sensors.setdefault(r.sensor_id, len(sensors)) for r in batch), dtype=np.int64, count=len(batch)
        )
        state = layout.empty(len(sensors))
        for sid, row in sensors.items():
            raw = load_state(sid)
            if raw is None:
                continue
            try:
                old_metrics, vec = unpack(raw)
                state[row] = remap(vec, old_metrics, metrics)
            except (ValueError, IndexError) as exc:  # a corrupt state must not stop the stream: start afresh
                result.bad_states += 1
                log.warning("state of sensor %s unreadable (%s); starting it afresh", sid, exc)
        x = np.array([[r.values.get(m, np.nan) for m in metrics] for r in batch], dtype=np.float64).reshape(
            len(batch), len(metrics)
        )
        ts = np.fromiter((r.ts for r in batch), dtype=np.float64, count=len(batch))
        feats = model.features(state, x, ts, idx)
        scored = model.score(state, feats, idx)
        for sid, row in sensors.items():
            result.states[sid] = pack(metrics, state[row])

        threshold = float(scored.threshold)
        top = self.reason_metrics
        tz = model.config.state.tz_offset_h
        window = self.window_ms
        for i, r in enumerate(batch):
            flagged = bool(scored.anomaly[i])
            contrib = scored.contributions[i]
            if self.emit_scores or flagged:
                best = np.argsort(-contrib)[:top]
                result.scores.append(
                    Score(
                        sensor_id=r.sensor_id,
                        ts=r.ts,
                        site=r.site,
                        zone=r.zone,
                        utility=r.utility,
                        asset=r.asset,
                        score=round(float(scored.score[i]), 4),
                        threshold=round(threshold, 4),
                        is_anomaly=flagged,
                        model=model.name,
                        model_version=model.version,
                        contributions={metrics[j]: round(float(contrib[j]), 3) for j in best if contrib[j] > 0},
                    )
                )
            if flagged:
                reason, tops = explain(metrics, feats[i], contrib, r.units, r.ts, tz, top)
                ratio = scored.score[i] / threshold if threshold > 0 else 0.0
                result.anomalies.append(
                    Anomaly(
                        sensor_id=r.sensor_id,
                        ts=r.ts,
                        site=r.site,
                        zone=r.zone,
                        utility=r.utility,
                        asset=r.asset,
                        score=round(float(scored.score[i]), 4),
                        threshold=round(threshold, 4),
                        model_version=model.version,
                        reason=reason,
                        top_metrics=tops,
                        values=dict(r.values),
                        severity="critical" if ratio >= 2.0 else "warning",
                    )
                )
            key = aggregates.zone_key(r.site, r.zone, r.utility)
            ws = str(aggregates.window_start(r.ts, window))
            partial = result.partials.setdefault(key, {}).setdefault(ws, {})
            aggregates.add_reading(partial, r.values, flagged, r.ts)
