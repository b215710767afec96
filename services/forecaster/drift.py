"""The forecaster's drift watch, per zone, fed with the risk records of each stage-2 batch (one value per zone
and closed step, never per reading):

* **forecast error** — ADWIN (:mod:`shared.mlops.adwin`) on the key metric's error
  ``|actual - expected| / max(|actual|, |expected|)`` (0 = perfect, 1 = off by the whole value). A change ADWIN
  finds that raises the mean error by more than :data:`ERROR_RISE` (relative) and :data:`ERROR_STEP`
  (absolute) turns the zone ``drifted``; a change that brings it back down turns it ``stable``. A new model
  version starts every zone's window afresh (its errors are a new stream).
* **inputs** — the PSI of the zone's key-metric totals per step over the drift window against a warm-up
  reference (:class:`shared.mlops.monitor.DriftMonitor`). The forecaster's model card keeps the readings'
  levels per utility, not per zone totals, so the zone's own first day is its reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from services.forecaster.settings import ForecasterSettings
from shared.limits import LabelSet
from shared.metrics import Gauge
from shared.mlops.adwin import Adwin, Change
from shared.mlops.monitor import DRIFTED, DriftMonitor, drift_event
from shared.records import DriftEvent, Risk

SERVICE = "forecaster"
ERROR_RISE = 0.5  # the error's mean must grow by half of what it was ...
ERROR_STEP = 0.01  # ... and by at least one percent of the value

ERROR_MEAN = Gauge(
    "flowwatch_forecaster_error_mean", "Mean relative forecast error over the zone's ADWIN window", ["zone"]
)


def relative_error(actual: float, expected: float) -> float:
    scale = max(abs(actual), abs(expected))
    return abs(actual - expected) / scale if scale > 0 else 0.0


class ForecastDrift:
    def __init__(self, fs: ForecasterSettings, labels: LabelSet | None = None) -> None:
        self.window_s = fs.drift_window_s
        self.labels = labels or LabelSet(fs.metric_zones)
        self.monitor = DriftMonitor(
            SERVICE,
            fs.drift_window_s * 1000,
            fs.drift_reference_s * 1000,
            fs.drift_bucket_s * 1000,
            no_warmup=(),
            labels=self.labels,
        )
        self.adwins: dict[str, Adwin] = {}
        self.status: dict[str, str] = {}
        self.version = ""
        self.pending: list[DriftEvent] = []
        self.model_name = fs.model_name

    def observe(self, risks: Iterable[Risk], key_metric: dict[str, str]) -> None:
        """The risk records of one batch (in step order per zone)."""
        per_zone: dict[str, tuple[list[int], list[float], str]] = {}
        for risk in risks:
            if risk.model_version != self.version:
                self.version = risk.model_version
                self.adwins.clear()  # a new model's errors are a new stream
            metric = key_metric.get(risk.utility)
            entry = risk.forecast.get(metric or "") or {}
            actual, expected = entry.get("actual"), entry.get("expected")
            if actual is None:
                continue
            ts, values, _ = per_zone.setdefault(risk.zone, ([], [], metric or ""))
            ts.append(risk.ts)
            values.append(float(actual))
            if expected is not None:
                self._error(risk, relative_error(float(actual), float(expected)))
        for zone, (ts, values, metric) in per_zone.items():
            self.monitor.observe(zone, np.asarray(ts), {metric: np.asarray(values)})

    def _error(self, risk: Risk, err: float) -> None:
        zone = risk.zone
        adwin = self.adwins.get(zone)
        if adwin is None:
            if len(self.adwins) >= self.monitor.max_groups:
                return
            adwin = self.adwins[zone] = Adwin()
        change = adwin.update(err)
        if self.labels.admit(zone):
            ERROR_MEAN.labels(zone).set(adwin.mean)
        if change is None:
            return
        turned = self._turn(zone, change)
        if turned:
            self.status[zone] = turned
            if self.labels.admit(zone):
                DRIFTED.labels(SERVICE, zone, "adwin").set(1.0 if turned == "drifted" else 0.0)
            self.pending.append(
                DriftEvent(
                    service=SERVICE,
                    group=zone,
                    kind="adwin",
                    status=turned,
                    value=round(change.after, 5),
                    before=round(change.before, 5),
                    threshold=ERROR_RISE,
                    ts=risk.ts,
                    model=self.model_name,
                    version=risk.model_version,
                    rows=adwin.width,
                    site=risk.site,
                    zone=zone,
                    utility=risk.utility,
                    emitted_at=int(time.time() * 1000),
                )
            )

    def _turn(self, zone: str, change: Change) -> str | None:
        grew = change.after >= change.before * (1 + ERROR_RISE) and change.after - change.before >= ERROR_STEP
        if grew and self.status.get(zone) != "drifted":
            return "drifted"
        if not change.increase and self.status.get(zone) == "drifted":
            return "stable"
        return None

    def take_events(self) -> list[DriftEvent]:
        """The ADWIN transitions since the last call and the PSI transitions of an evaluation now."""
        out, self.pending = self.pending, []
        for t in self.monitor.evaluate():
            out.append(drift_event(SERVICE, t, self.model_name, self.version, self.window_s, zone=t.group))
        return out
