"""Ground truth for retraining, from four sources reduced to one shape: intervals of a zone (and, when known,
of some of its sensors) that were anomalous, and intervals an operator called a false alarm.

* ``labels``: the simulator's injected incidents (start, end, zone, sensors).
* ``feedback``: operators' verdicts on alerts. The verdict names the alert by fingerprint; its window is that
  alert's ``starts_at`` .. ``ends_at`` on the ``alerts`` topic (or, when the alert is not found there, the
  ``verdict_lookback_ms`` before the verdict). ``true_positive`` -> an incident, ``false_positive`` -> a false
  alarm. The alert's ``sensor`` and ``zone`` labels say where.
* ``reports``: public leak reports an operator confirmed — ``confirmed: true`` or ``status: confirmed`` on the
  record, or the console's triage (a ``true_positive`` verdict on ``feedback`` whose labels carry the
  ``report_id``) — the report's zone (its whole site when the reporter could not name a zone) was anomalous
  in the ``report_lookback_ms`` before the report.

Acknowledged episodes are not truth: an acknowledgement says an operator saw the alert, not that it was
real. A verdict on an episode (history's ``/verdict``) reaches ``feedback`` and is read as one.

Pure: lists of decoded records in, :class:`Truth` out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shared.records import Alert, Feedback, IncidentLabel

VERDICT_LOOKBACK_MS = 15 * 60_000
REPORT_LOOKBACK_MS = 60 * 60_000


@dataclass(frozen=True)
class Interval:
    start_ms: int
    end_ms: int
    zone: str
    sensors: tuple[str, ...] = ()  # empty: the whole zone
    kind: str = ""
    source: str = "labels"  # labels | verdict | report
    ident: str = ""
    site: str = ""  # with no zone and no sensors: the whole site (a public report names a locality, a site)

    def where(self, sensors: np.ndarray, zones: np.ndarray, sites: np.ndarray | None) -> np.ndarray:
        """Which rows (arrays of a long frame's sensor, zone and site) the interval is about, at any time."""
        if self.sensors:
            return np.isin(sensors, self.sensors)
        if self.zone or sites is None:
            return zones == self.zone
        return sites == self.site


@dataclass
class Truth:
    incidents: list[Interval] = field(default_factory=list)
    false_alarms: list[Interval] = field(default_factory=list)  # operators' false_positive verdicts
    counts: dict[str, int] = field(default_factory=dict)  # records used per source
    rejected: dict[str, int] = field(default_factory=dict)  # records per source that could not be used

    @property
    def sources(self) -> list[str]:
        return sorted(k for k, v in self.counts.items() if v)

    @property
    def verdicts(self) -> list[tuple[Interval, bool]]:
        """Operators' verdicts as (where and when, was it a real incident)."""
        return [(i, True) for i in self.incidents if i.source == "verdict"] + [(i, False) for i in self.false_alarms]

    def within(self, start_ms: int, end_ms: int) -> Truth:
        keep = lambda xs: [i for i in xs if i.end_ms > start_ms and i.start_ms < end_ms]  # noqa: E731
        return Truth(keep(self.incidents), keep(self.false_alarms), dict(self.counts), dict(self.rejected))

    def anomalous(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of a long frame (``sensor_id``, ``zone``, ``ts``) fall inside a known incident."""
        out = np.zeros(len(frame), dtype=bool)
        if not self.incidents or frame.empty:
            return out
        ts = frame["ts"].to_numpy(dtype=np.int64)
        sensors = frame["sensor_id"].astype(str).to_numpy()
        zones = frame["zone"].astype(str).to_numpy()
        sites = frame["site"].astype(str).to_numpy() if "site" in frame else None
        for inc in self.incidents:
            when = (ts >= inc.start_ms) & (ts < inc.end_ms)
            if not when.any():
                continue
            out |= when & inc.where(sensors, zones, sites)
        return out


def _alert_windows(alerts: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """fingerprint -> (first start, last end) over the alert's state changes (end 0 while it fires)."""
    out: dict[str, tuple[int, int]] = {}
    for raw in alerts:
        try:
            a = Alert.from_dict(raw)
        except (TypeError, ValueError):
            continue
        start, end = out.get(a.fingerprint, (a.starts_at, a.ends_at))
        out[a.fingerprint] = (min(start, a.starts_at) if start else a.starts_at, max(end, a.ends_at))
    return out


def assemble(
    labels: Iterable[dict[str, Any]] = (),
    feedback: Iterable[dict[str, Any]] = (),
    alerts: Iterable[dict[str, Any]] = (),
    reports: Iterable[dict[str, Any]] = (),
    *,
    verdict_lookback_ms: int = VERDICT_LOOKBACK_MS,
    report_lookback_ms: int = REPORT_LOOKBACK_MS,
) -> Truth:
    truth = Truth(
        counts={"labels": 0, "verdicts": 0, "reports": 0}, rejected={"labels": 0, "verdicts": 0, "reports": 0}
    )
    for raw in labels:
        try:
            lab = IncidentLabel.from_dict(raw)
            truth.incidents.append(
                Interval(
                    int(lab.start_ms),
                    int(lab.end_ms),
                    str(lab.zone),
                    tuple(map(str, lab.sensors)),
                    str(lab.type),
                    "labels",
                    str(lab.incident_id),
                )
            )
            truth.counts["labels"] += 1
        except (TypeError, ValueError):
            truth.rejected["labels"] += 1
    reports = [r for r in reports if isinstance(r, dict)]
    by_id = {str(r.get("id")): r for r in reports if r.get("id")}
    windows = _alert_windows(alerts)
    latest: dict[str, Feedback] = {}  # an operator may change their mind: the last verdict counts
    for raw in feedback:
        try:
            fb = Feedback.from_dict(raw)
            if fb.verdict not in ("true_positive", "false_positive") or not isinstance(fb.labels, dict):
                raise ValueError(fb.verdict)
            int(fb.ts)
        except (TypeError, ValueError):
            truth.rejected["verdicts"] += 1
            continue
        if fb.fingerprint not in latest or latest[fb.fingerprint].ts <= fb.ts:
            latest[fb.fingerprint] = fb
    for fp, fb in latest.items():
        report_id = str(fb.labels.get("report_id") or "")
        if report_id:  # the console's triage of a public report: the report says where and when
            report = by_id.get(report_id)
            if report is None or fb.verdict != "true_positive":
                truth.rejected["reports"] += 1
                continue
            reports.append({**report, "confirmed": True, "site": report.get("site") or fb.labels.get("site", "")})
            continue
        start, end = windows.get(fp, (0, 0))
        ts = int(fb.ts)
        if not start:
            start = ts - verdict_lookback_ms
        end = end if end > start else ts
        sensor = str(fb.labels.get("sensor") or fb.labels.get("sensor_id") or "")
        zone = str(fb.labels.get("zone") or "")
        if not sensor and not zone:
            truth.rejected["verdicts"] += 1
            continue
        iv = Interval(
            start, max(end, start + 1), zone, (sensor,) if sensor else (), fb.labels.get("kind", ""), "verdict", fp
        )
        (truth.incidents if fb.verdict == "true_positive" else truth.false_alarms).append(iv)
        truth.counts["verdicts"] += 1
    confirmed: dict[str, dict[str, Any]] = {}  # by id: a report confirmed twice (record and triage) counts once
    for i, r in enumerate(reports):
        if r.get("confirmed") is True or r.get("status") == "confirmed":
            confirmed[str(r.get("id") or f"#{i}")] = r
    for ident, r in confirmed.items():
        try:
            ts = int(r.get("ts") or r.get("received_ms"))
            zone, site = str(r.get("zone") or ""), str(r.get("site") or "")
            if not zone and not site:
                raise ValueError("a report with neither zone nor site")
        except (TypeError, ValueError):
            truth.rejected["reports"] += 1
            continue
        kind = str(r.get("kind") or "leak")
        truth.incidents.append(Interval(ts - report_lookback_ms, ts, zone, (), kind, "report", ident, site))
        truth.counts["reports"] += 1
    return truth
