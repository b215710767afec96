"""Zone steps to risk records: the pure core shared by the Faust agent, offline evaluation and the benchmark.

:class:`ZoneProcessor` takes merged partials for a set of zone states, closes the
steps that are complete and runs both models on them, each once per micro-batch
whatever the number of zones and steps (a replay or a catch-up after downtime
closes many steps per zone in one batch).

Offline evaluation replays history through this same class, so serving and
evaluation produce the same numbers for the same inputs by construction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from services.forecaster.classes import RISK_CLASSES
from services.forecaster.features import FeatureConfig
from services.forecaster.losses import account_loss, incident_transition
from services.forecaster.partials import Partial
from services.forecaster.settings import ForecasterSettings
from services.forecaster.zonestate import Step, ZoneState
from shared.records import Risk


class Models(Protocol):
    """What the processor needs from a loaded model (see :class:`services.forecaster.model.Predictor`)."""

    config: FeatureConfig
    version: str

    def risk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def forecast(self, x: np.ndarray) -> np.ndarray: ...


#: Called for every closed step with the step and its forecast inputs ``{metric: (x, scale)}``;
#: offline dataset building records training rows through it.
StepHook = Callable[[Step, dict[str, tuple[np.ndarray, float]]], None]


class ZoneProcessor:
    def __init__(
        self,
        config: FeatureConfig,
        settings: ForecasterSettings,
        models: Models | None = None,
        on_step: StepHook | None = None,
        source_partitions: int = 1,
    ) -> None:
        self.config = config
        self.source_partitions = source_partitions
        self.settings = settings
        self.models = models
        self.on_step = on_step
        self.tariffs = settings.tariff_by_utility
        self.duplicates = 0
        self.late = 0
        self.model_seconds = 0.0  # time inside the two model calls, summed (the worker observes it per batch)

    def new_state(self, zone: str) -> ZoneState:
        return ZoneState(zone, self.config.step_ms)

    def ingest(self, states: dict[str, ZoneState], partials: Iterable[Partial]) -> set[str]:
        """Merge partials into their zones' states (created on first sight); returns the zones touched."""
        touched: set[str] = set()
        for partial in partials:
            zone = partial["zone"]
            state = states.get(zone)
            if state is None or state.step_ms != self.config.step_ms:
                # a model with another step length makes old state meaningless: start the zone afresh
                state = states[zone] = self.new_state(zone)
            late_before = state.late
            if state.ingest(partial):
                touched.add(zone)
            else:
                self.duplicates += 1
            self.late += state.late - late_before
        return touched

    def process(
        self, states: dict[str, ZoneState], partials: Iterable[Partial], source_wm: dict[str, int] | None = None
    ) -> list[Risk]:
        """Merge partials, then close what ``source_wm`` (source partition -> watermark) says is complete."""
        touched = self.ingest(states, partials)
        return self.close_ready(states, touched, source_wm)

    def use(self, models: Any) -> None:
        """Serve ``models`` from the next batch on, with the feature configuration they were trained with."""
        if models is not self.models:
            self.config = models.config
            self.models = models

    def close_ready(
        self,
        states: dict[str, ZoneState],
        zones: Iterable[str],
        source_wm: dict[str, int] | None = None,
        zone_wm: Mapping[str, dict[str, int] | None] | None = None,
    ) -> list[Risk]:
        """Close every complete step of ``zones``; one risk and one forecast model call for all of them.

        Features never depend on model outputs, so all steps close first. The
        forecast history of a step depends on whether the zone is in an incident
        (then it is frozen, so the forecast keeps describing the zone without the
        incident), which the risk call decides; each forecast depends only on its
        history. Losses of step *b* need the forecast made at *b-1* and are added last.
        ``zone_wm`` gives a zone its own source watermarks (a worker holding several partials
        partitions), instead of ``source_wm`` for all.
        """
        cfg = self.config
        steps: list[Step] = []
        for zone in zones:
            state = states[zone]
            closable = state.closable(
                zone_wm.get(zone) if zone_wm is not None else source_wm,
                self.source_partitions,
                lateness_ms=self.settings.lateness_s * 1000,
                max_open_steps=self.settings.max_open_steps,
            )
            steps.extend(state.close_step(b, cfg) for b in closable)
        if not steps:
            return []
        if self.models is not None:
            t0 = time.perf_counter()
            probs, contrib = self.models.risk(np.stack([s.features for s in steps]))
            self.model_seconds += time.perf_counter() - t0
        else:
            probs = contrib = None

        # incidents start/stop on the probability alone; while one runs the forecast history is frozen
        threshold = self.settings.incident_threshold
        incidents: list[dict[str, Any] | None] = []
        fc_rows: list[tuple[int, str, np.ndarray, float]] = []
        for i, step in enumerate(steps):
            state = states[step.zone]
            if probs is not None:
                p = probs[i]
                kind = RISK_CLASSES[1 + int(np.argmax(p[1:]))]
                state.incident = incident_transition(
                    state.incident, 1.0 - float(p[0]), kind, step.ts - cfg.step_ms, threshold
                )
            incidents.append(state.incident)
            state.remember(step, cfg, frozen=state.incident is not None)
            inputs: dict[str, tuple[np.ndarray, float]] = {}
            for metric in step.actual:
                got = state.forecast_input(metric, step, cfg)
                if got is not None:
                    inputs[metric] = got
                    fc_rows.append((i, metric, got[0], got[1]))
            if self.on_step is not None:
                self.on_step(step, inputs)

        forecasts: list[dict[str, list[float]]] = [{} for _ in steps]
        if fc_rows and self.models is not None:
            t0 = time.perf_counter()
            q = self.models.forecast(np.stack([r[2] for r in fc_rows]))
            self.model_seconds += time.perf_counter() - t0
            for (i, metric, _x, scale), qs in zip(fc_rows, q, strict=True):
                forecasts[i][metric] = [float((1.0 + v) * scale) for v in qs]

        # each step compares with the forecast made at the zone's previous step (this batch or before)
        out: list[Risk] = []
        for i, step in enumerate(steps):
            state = states[step.zone]
            step.expected = state.pending
            state.pending = forecasts[i]
            if probs is None:
                continue
            p = probs[i]
            metric = cfg.key_metric(step.utility)
            expected = step.expected.get(metric) if metric else None
            incident = incidents[i]
            incident, loss = account_loss(
                incident,
                state.incident_volume(incident),
                probability=1.0 - float(p[0]),
                incident_type=incident["type"] if incident else RISK_CLASSES[1 + int(np.argmax(p[1:]))],
                step_s=cfg.step_s,
                metric=metric,
                actual=step.actual.get(metric) if metric else None,
                expected=expected[1] if expected else None,
                unit=step.units.get(metric, "") if metric else "",
                tariff=self.tariffs.get(step.utility, 0.0),
                currency=self.settings.currency,
                horizon_s=cfg.horizon_steps * cfg.step_s,
            )
            state.set_incident_volume(incident)
            out.append(self._record(step, p, loss, contrib[i], forecasts[i]))
        return out

    def _record(
        self, step: Step, probs: np.ndarray, loss: dict[str, Any], contrib: np.ndarray, nxt: dict[str, list[float]]
    ) -> Risk:
        cfg = self.config
        forecast: dict[str, dict[str, float]] = {}
        for metric in sorted(set(step.actual) | set(nxt)):
            entry: dict[str, float] = {}
            if metric in nxt:
                lo, mid, hi = nxt[metric]
                entry.update(q10=lo, q50=mid, q90=hi, for_ts=float(step.ts + cfg.step_ms))
            if metric in step.actual:
                entry["actual"] = step.actual[metric]
                exp = step.expected.get(metric)
                if exp:
                    lo, mid, hi = exp
                    entry.update(expected=mid, expected_q10=lo, expected_q90=hi)
                    outside = step.actual[metric] < lo or step.actual[metric] > hi
                    entry["outside"] = 1.0 if outside else 0.0
                    entry["deviation"] = (step.actual[metric] - mid) / max(hi - lo, 1e-9)
            forecast[metric] = entry
        order = np.argsort(-np.abs(contrib))[: self.settings.top_features]
        names = self.config.risk_feature_names
        top = [
            {
                "feature": names[j],
                "contribution": round(float(contrib[j]), 5),
                "value": round(float(step.features[j]), 4),
            }
            for j in order
            if contrib[j] != 0.0
        ]
        return Risk(
            site=step.site,
            zone=step.zone,
            utility=step.utility,
            ts=step.ts,
            horizon_s=cfg.horizon_steps * cfg.step_s,
            probability=round(float(1.0 - probs[0]), 6),
            incident_type=RISK_CLASSES[int(np.argmax(probs))],
            class_probs={c: round(float(v), 6) for c, v in zip(RISK_CLASSES, probs, strict=True)},
            forecast=forecast,
            loss=loss,
            model_version=self.models.version if self.models else "",
            top_features=top,
        )
