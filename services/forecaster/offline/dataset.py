"""Replay labelled history through the serving pipeline to get training rows (and evaluation outputs).

Stage 1 (:func:`partials.fold`) and stage 2 (:class:`pipeline.ZoneProcessor`) run
exactly as in the service, batch by batch in delivery order, so a model trained
on these rows sees the features it will see in production.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.forecaster.classes import CLASS_INDEX, risk_class
from services.forecaster.features import FeatureConfig
from services.forecaster.offline.history import History
from services.forecaster.partials import fold
from services.forecaster.pipeline import Models, ZoneProcessor
from services.forecaster.settings import ForecasterSettings
from services.forecaster.zonestate import Step, ZoneState
from shared.records import IncidentLabel, Risk

REPLAY_BATCH = 2000


class ZoneLabels:
    """Incident intervals per zone, to label a zone step with its risk class over the horizon."""

    def __init__(self, labels: Iterable[IncidentLabel]) -> None:
        by_zone: dict[str, list[tuple[int, int, int]]] = {}
        for lab in labels:
            by_zone.setdefault(lab.zone, []).append((lab.start_ms, lab.end_ms, CLASS_INDEX[risk_class(lab.type)]))
        self.by_zone = {z: sorted(v) for z, v in by_zone.items()}
        self.starts = {z: [iv[0] for iv in v] for z, v in self.by_zone.items()}

    def label(self, zone: str, start_ms: int, end_ms: int, horizon_ms: int) -> tuple[int, bool]:
        """``(class index, active now)`` for a step ``[start_ms, end_ms)``: the incident under way, else the next
        one starting within the horizon, else none (0)."""
        ivs = self.by_zone.get(zone)
        if not ivs:
            return 0, False
        hi = bisect.bisect_left(self.starts[zone], end_ms + horizon_ms)
        upcoming = None
        for s, e, c in ivs[:hi]:
            if s < end_ms and e > start_ms:
                return c, True
            if s >= end_ms and upcoming is None:
                upcoming = c
        return (upcoming, False) if upcoming is not None else (0, False)


def replay_batches(
    history: History, step_ms: int, batch: int = REPLAY_BATCH
) -> Iterator[tuple[list[dict[str, Any]], dict[str, int]]]:
    """Stage 1 over history: ``(partials, watermarks)`` per batch of ``batch`` readings (one source partition)."""
    buf: list[tuple[dict[str, Any], int, int]] = []
    for offset, reading in enumerate(history.readings()):
        buf.append((reading, 0, offset))
        if len(buf) >= batch:
            folded = fold(buf, step_ms)
            yield list(folded.partials.values()), folded.watermarks
            buf = []
    if buf:
        folded = fold(buf, step_ms)
        yield list(folded.partials.values()), folded.watermarks


@dataclass
class Rows:
    """Training/evaluation rows gathered during a replay."""

    risk_x: list[np.ndarray] = field(default_factory=list)
    risk_y: list[int] = field(default_factory=list)
    risk_active: list[bool] = field(default_factory=list)
    risk_key: list[tuple[str, int]] = field(default_factory=list)  # (zone, step)
    fc_x: list[np.ndarray] = field(default_factory=list)
    fc_y: list[float] = field(default_factory=list)  # target in scaled space
    fc_scale: list[float] = field(default_factory=list)
    fc_actual: list[float] = field(default_factory=list)
    fc_last: list[float] = field(default_factory=list)  # naive baseline: last value
    fc_seasonal: list[float] = field(default_factory=list)  # seasonal naive (NaN before one season of history)
    fc_clean: list[bool] = field(default_factory=list)  # no incident in the zone at the target step
    fc_key: list[tuple[str, int, str]] = field(default_factory=list)  # (zone, target step, metric)

    def arrays(self) -> dict[str, np.ndarray]:
        n_risk = len(self.risk_x[0]) if self.risk_x else 0
        n_fc = len(self.fc_x[0]) if self.fc_x else 0
        return {
            "risk_x": np.stack(self.risk_x) if self.risk_x else np.zeros((0, n_risk), np.float32),
            "risk_y": np.asarray(self.risk_y, dtype=np.int64),
            "risk_active": np.asarray(self.risk_active, dtype=bool),
            "risk_step": np.asarray([k[1] for k in self.risk_key], dtype=np.int64),
            "fc_x": np.stack(self.fc_x) if self.fc_x else np.zeros((0, n_fc), np.float32),
            "fc_y": np.asarray(self.fc_y, dtype=np.float32),
            "fc_scale": np.asarray(self.fc_scale, dtype=np.float64),
            "fc_actual": np.asarray(self.fc_actual, dtype=np.float64),
            "fc_last": np.asarray(self.fc_last, dtype=np.float64),
            "fc_seasonal": np.asarray(self.fc_seasonal, dtype=np.float64),
            "fc_clean": np.asarray(self.fc_clean, dtype=bool),
            "fc_step": np.asarray([k[1] for k in self.fc_key], dtype=np.int64),
        }


class Recorder:
    """The step hook that turns closed steps into labelled rows."""

    def __init__(self, cfg: FeatureConfig, labels: ZoneLabels, season_s: int, record_from_step: int = 0) -> None:
        self.cfg = cfg
        self.labels = labels
        self.season_steps = max(1, season_s // cfg.step_s)
        self.record_from_step = record_from_step
        self.rows = Rows()
        self.prev_inputs: dict[str, tuple[int, dict[str, tuple[np.ndarray, float]]]] = {}
        self.actuals: dict[tuple[str, str], dict[int, float]] = {}

    def __call__(self, step: Step, inputs: dict[str, tuple[np.ndarray, float]]) -> None:
        cfg = self.cfg
        start = step.step * cfg.step_ms
        cls, active = self.labels.label(step.zone, start, start + cfg.step_ms, cfg.horizon_steps * cfg.step_ms)
        for metric, value in step.actual.items():
            series = self.actuals.setdefault((step.zone, metric), {})
            series[step.step] = value
            # bounded: keep a little more than one season
            if len(series) > self.season_steps + 64:
                for old in sorted(series)[: len(series) - self.season_steps - 64]:
                    del series[old]
        if step.step >= self.record_from_step:
            r = self.rows
            r.risk_x.append(step.features)
            r.risk_y.append(cls)
            r.risk_active.append(active)
            r.risk_key.append((step.zone, step.step))
            prev = self.prev_inputs.get(step.zone)
            if prev is not None and prev[0] == step.step - 1:
                for metric, (x, scale) in prev[1].items():
                    if metric not in step.actual:
                        continue
                    actual = step.actual[metric]
                    series = self.actuals[(step.zone, metric)]
                    r.fc_x.append(x)
                    r.fc_y.append(actual / scale - 1.0)
                    r.fc_scale.append(scale)
                    r.fc_actual.append(actual)
                    r.fc_last.append(series.get(step.step - 1, np.nan))
                    r.fc_seasonal.append(series.get(step.step - self.season_steps, np.nan))
                    r.fc_clean.append(not active)
                    r.fc_key.append((step.zone, step.step, metric))
        self.prev_inputs[step.zone] = (step.step, inputs)


def replay(
    history: History,
    cfg: FeatureConfig,
    settings: ForecasterSettings,
    models: Models | None = None,
    *,
    season_s: int = 86400,
    record_from_ms: int | None = None,
    states: dict[str, ZoneState] | None = None,
) -> tuple[Rows, list[Risk], dict[str, ZoneState]]:
    """Run history through stages 1 and 2; rows are recorded for steps starting at ``record_from_ms``."""
    first = (record_from_ms // cfg.step_ms) if record_from_ms is not None else 0
    recorder = Recorder(cfg, ZoneLabels(history.labels), season_s, first)
    processor = ZoneProcessor(cfg, settings, models, on_step=recorder)
    states = {} if states is None else states
    risks: list[Risk] = []
    marks: dict[str, int] = {}
    for partials, wm in replay_batches(history, cfg.step_ms):
        for p, ts in wm.items():
            marks[p] = max(ts, marks.get(p, -1))
        risks.extend(processor.process(states, partials, marks))
    return recorder.rows, [r for r in risks if (r.ts - cfg.step_ms) >= first * cfg.step_ms], states


def metric_vocabulary(history: History) -> tuple[str, ...]:
    """Utility-qualified metrics present in the history (``water.flow``...), sorted."""
    f = history.frame
    found = set()
    for metric in history.metric_columns:
        present = f.loc[f[metric].notna(), "utility"].astype(str).unique()
        found.update(f"{u}.{metric}" for u in present)
    return tuple(sorted(found))
