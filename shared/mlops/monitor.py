"""Drift in a running worker: what a model sees now against what it was trained on, kept cheap.

Per *group* (the detector's profiles, the forecaster's zones) and *column* (an input metric, the score), the
worker keeps a histogram over the reference's bins (:mod:`shared.mlops.drift`: decile edges of the training
data) in buckets of event time — the sketch: a batch costs one ``searchsorted`` and one ``bincount`` per
column, never a per-reading Python step. A timer (:meth:`DriftMonitor.evaluate`) sums the buckets of the
last ``window_ms`` of event time and computes the PSI per column; a group's level is its largest column.

References, per column:

* the model's card (``reference`` written by ``retrain``: what the model was trained on) — preferred;
* otherwise a **warm-up reference**: the first ``reference_ms`` of event time the worker sees under the
  current model (a uniform subsample of at most ``sample_cap`` values), so a worker without a trained model,
  or a column the card does not cover, still notices when the world moves away from what it first saw.

A new model version (:meth:`set_reference`) starts the group afresh. A group turns ``drifted`` when its
largest PSI reaches :data:`~shared.mlops.drift.DRIFT` (0.25) and ``stable`` again only under
:data:`~shared.mlops.drift.MODERATE` (0.1): a PSI hovering at the threshold does not flap. Each turn is a
:class:`Transition` for the service to publish on the ``drift`` topic.

Thread-safe (one lock): the detector observes from its scoring thread, the timer evaluates on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.codec import dumps
from shared.limits import LabelSet
from shared.metrics import EVENTS_OUT, Counter, Gauge
from shared.mlops import drift as driftmod
from shared.mlops.drift import DRIFT, MODERATE
from shared.records import DriftEvent
from shared.topics import DRIFT as DRIFT_TOPIC

log = logging.getLogger(__name__)

DRIFT_PSI = Gauge(
    "flowwatch_model_drift_psi",
    "PSI of a model's input or score over the drift window against its reference (NaN: too few values yet)",
    ["service", "group", "column"],
)
DRIFTED = Gauge("flowwatch_model_drifted", "1 while a group (profile or zone) is drifted", ["service", "group", "kind"])
DRIFT_EVENTS = Counter("flowwatch_model_drift_events_total", "Drift transitions published", ["service", "status"])


NO_CARD = "none (only a model card gives this column a reference)"
TOO_FEW = f"none (fewer than {driftmod.MIN_ROWS} values in the warm-up)"
#: share of a group's columns that must have moved for the group to count as drifted (see group_level)
QUORUM = 0.5


def group_level(psis: list[float], quorum: float = QUORUM) -> float:
    """The PSI at least ``quorum`` of the columns reach: the median with the default. A regime change moves
    most of what a model reads; one column on its own slow cycle (a gas density, a conductivity) or one
    recalibrated sensor shows in its own gauge but does not call the whole model drifted."""
    ranked = sorted(psis, reverse=True)
    return ranked[max(0, math.ceil(quorum * len(ranked)) - 1)]


@dataclass
class Transition:
    """A group turned ``drifted`` or back to ``stable``."""

    group: str
    status: str
    value: float
    columns: dict[str, float | None]
    references: dict[str, str]  # column -> where its reference came from
    rows: int
    ts: int  # newest event time of the group


@dataclass
class _Column:
    ref: dict[str, Any] | None = None
    source: str = ""
    buckets: dict[int, np.ndarray] = field(default_factory=dict)  # bucket index -> counts per bin
    sample: list[np.ndarray] = field(default_factory=list)
    kept: int = 0
    stride: int = 1
    skip: int = 0  # values to pass over before the next kept one (the stride's phase)
    counting_from: int | None = None  # event time of the first value counted against the reference
    since: int | None = None  # event time the column was first seen: its warm-up starts there


@dataclass
class _Group:
    columns: dict[str, _Column] = field(default_factory=dict)
    last_ts: int = 0
    status: str = "unknown"
    psi: dict[str, float | None] = field(default_factory=dict)
    rows: int = 0


class DriftMonitor:
    def __init__(
        self,
        service: str,
        window_ms: int,
        reference_ms: int,
        bucket_ms: int,
        *,
        sample_cap: int = 20_000,
        max_groups: int = 1000,
        publish_gauges: bool = True,
        quorum: float = QUORUM,
        no_warmup: tuple[str, ...] = ("score",),
        labels: LabelSet | None = None,
    ) -> None:
        if bucket_ms <= 0 or window_ms < bucket_ms:
            raise ValueError("the drift window must hold at least one bucket")
        self.service = service
        self.window_ms = window_ms
        self.reference_ms = reference_ms
        self.bucket_ms = bucket_ms
        self.sample_cap = sample_cap
        self.max_groups = max_groups
        self.publish_gauges = publish_gauges
        self.quorum = quorum
        self.labels = labels  # group ids that may become metric label values (zones come from the data)
        self.no_warmup = frozenset(no_warmup)
        self.groups: dict[str, _Group] = {}
        self.cards: dict[str, tuple[dict[str, Any], str]] = {}  # group -> (column -> reference, source)
        self.refused_groups = 0
        self._lock = threading.Lock()

    # -- references ---------------------------------------------------------------------------------------------

    def set_reference(self, group: str, references: dict[str, Any] | None, source: str) -> None:
        """The model serving ``group`` changed: its card's references (``{column: reference}``, may be empty)
        replace what was kept; columns without one learn a warm-up reference again."""
        with self._lock:
            self.cards[group] = (dict(references or {}), source)
            self.groups.pop(group, None)

    def _group(self, name: str) -> _Group | None:
        g = self.groups.get(name)
        if g is None:
            if len(self.groups) >= self.max_groups:
                self.refused_groups += 1
                return None
            g = self.groups[name] = _Group()
        return g

    def _column(self, g: _Group, group: str, name: str) -> _Column:
        col = g.columns.get(name)
        if col is None:
            refs, source = self.cards.get(group, ({}, ""))
            ref = refs.get(name)
            if ref:
                col = _Column(ref, source)
            else:
                col = _Column(None, NO_CARD if name in self.no_warmup else "")
            g.columns[name] = col
        return col

    # -- the hot path ---------------------------------------------------------------------------------------------

    def observe(self, group: str, ts: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """One batch of a group: event times and the values of each column (NaN: absent)."""
        ts = np.asarray(ts, dtype=np.int64)
        if not len(ts):
            return
        with self._lock:
            g = self._group(group)
            if g is None:
                return
            lo, hi = int(ts.min()), int(ts.max())
            g.last_ts = max(g.last_ts, hi)
            bucket = ts // self.bucket_ms
            for name, values in columns.items():
                col = self._column(g, group, name)
                v = np.asarray(values, dtype=np.float64)
                ok = np.isfinite(v)
                if col.ref is None:
                    if col.source:  # no reference to be had: not from a card, not from a warm-up
                        continue
                    if col.since is None:
                        col.since = lo
                    reference_end = col.since + self.reference_ms
                    self._keep(col, v[ok & (ts < reference_end)])
                    if g.last_ts < reference_end:
                        continue
                    self._finish_warmup(col)  # too few values over the whole period: no reference, ever
                    if col.ref is None:
                        continue
                    ok &= ts >= reference_end  # the rest of the batch is already judged against it
                self._count(col, v[ok], bucket[ok])
            self._expire(g)

    def _count(self, col: _Column, v: np.ndarray, bucket: np.ndarray) -> None:
        if not len(v):
            return
        assert col.ref is not None
        if col.counting_from is None:
            col.counting_from = int(bucket.min()) * self.bucket_ms
        nbins = len(col.ref["shares"])
        bins = np.searchsorted(np.asarray(col.ref["edges"], dtype=np.float64), v, side="right")
        # the buckets present, not the range between them: a backfilled reading years old costs one bucket
        # (expired at once), not an array the width of the years
        present, which = np.unique(bucket, return_inverse=True)
        flat = np.bincount(which * nbins + bins, minlength=len(present) * nbins)
        for b, counts in zip(present.tolist(), flat.reshape(-1, nbins), strict=True):
            have = col.buckets.get(b)
            col.buckets[b] = counts if have is None else have + counts

    def _keep(self, col: _Column, v: np.ndarray) -> None:
        """A uniform subsample in time of at most ``sample_cap`` values: every ``stride``-th value, the stride
        doubling (and the kept values halving) whenever the cap is reached."""
        if not len(v):
            return
        picked = v[col.skip :: col.stride]
        col.skip = (col.skip - len(v)) % col.stride
        col.sample.append(picked)
        col.kept += len(picked)
        while col.kept > self.sample_cap:
            allv = np.concatenate(col.sample)[::2]
            col.sample, col.kept = [allv], len(allv)
            col.stride *= 2
            col.skip = 0

    def _finish_warmup(self, col: _Column) -> None:
        values = np.concatenate(col.sample) if col.sample else np.zeros(0)
        col.ref = driftmod.reference(values)
        col.source = "warm-up" if col.ref is not None else TOO_FEW
        col.sample, col.kept = [], 0

    def _expire(self, g: _Group) -> None:
        oldest = (g.last_ts - self.window_ms) // self.bucket_ms
        for col in g.columns.values():
            for b in [b for b in col.buckets if b < oldest]:
                del col.buckets[b]

    # -- the timer ------------------------------------------------------------------------------------------------

    def evaluate(self) -> list[Transition]:
        """PSI per group and column over the window; the groups whose level turned (gauges set too)."""
        out: list[Transition] = []
        with self._lock:
            for name, g in self.groups.items():
                first = (g.last_ts - self.window_ms) // self.bucket_ms + 1  # whole buckets inside the window
                psi: dict[str, float | None] = {}
                rows = 0
                for cname, col in g.columns.items():
                    if col.ref is None or col.counting_from is None:
                        continue
                    if g.last_ts - col.counting_from < self.window_ms - self.bucket_ms:
                        psi[cname] = None  # a window not yet full would compare part of a day with a whole one
                        continue
                    kept = [c for b, c in col.buckets.items() if b >= first]
                    counts = np.sum(kept, axis=0) if kept else np.zeros(len(col.ref["shares"]))
                    rows = max(rows, int(counts.sum()))
                    psi[cname] = driftmod.psi_counts(col.ref, counts)
                g.psi, g.rows = psi, rows
                known = [v for v in psi.values() if v is not None]
                gauges = self.publish_gauges and (self.labels is None or self.labels.admit(name))
                if gauges:
                    for cname, v in psi.items():
                        DRIFT_PSI.labels(self.service, name, cname).set(float("nan") if v is None else v)
                if not known:
                    continue
                worst = group_level(known, self.quorum)
                turned = None
                if worst >= DRIFT and g.status != "drifted":
                    turned = "drifted"
                elif worst < MODERATE and g.status == "drifted":
                    turned = "stable"
                elif g.status == "unknown" and worst < DRIFT:
                    g.status = "stable"  # a first verdict of no drift is not news
                if turned:
                    g.status = turned
                    refs = {c: col.source for c, col in g.columns.items() if col.ref is not None}
                    out.append(Transition(name, turned, round(worst, 4), psi, refs, rows, g.last_ts))
                if gauges:
                    DRIFTED.labels(self.service, name, "psi").set(1.0 if g.status == "drifted" else 0.0)
        return out

    def snapshot(self) -> dict[str, Any]:
        """What an API shows: per group its status, PSI per column and where each reference came from."""
        with self._lock:
            return {
                name: {
                    "status": g.status,
                    "psi": dict(g.psi),
                    "rows": g.rows,
                    "last_ts": g.last_ts,
                    "references": {c: col.source or "warming up" for c, col in g.columns.items()},
                }
                for name, g in self.groups.items()
            }


def drift_event(service: str, t: Transition, model: str, version: str, window_s: int, **where: str) -> DriftEvent:
    return DriftEvent(
        service=service,
        group=t.group,
        kind="psi",
        status=t.status,
        value=t.value,
        threshold=DRIFT if t.status == "drifted" else MODERATE,
        ts=t.ts,
        model=model,
        version=version,
        columns={c: None if v is None else round(v, 4) for c, v in t.columns.items()},
        references=t.references,
        rows=t.rows,
        window_s=window_s,
        emitted_at=int(time.time() * 1000),
        **where,
    )


async def publish(app: Any, settings: Any, events: list[DriftEvent]) -> None:
    """Drift events on the ``drift`` topic (keyed ``service/group``) through the worker's own producer."""
    if not events:
        return
    topic = settings.topic(DRIFT_TOPIC.name)
    for e in events:
        await app.producer.send(topic, f"{e.service}/{e.group}".encode(), dumps(e), None, None, None)
        DRIFT_EVENTS.labels(e.service, e.status).inc()
        log.warning("%s %s: %s (%s %.3f, threshold %s)", e.service, e.group, e.status, e.kind, e.value, e.threshold)
    EVENTS_OUT.labels(events[0].service, topic).inc(len(events))


async def check(
    monitor: DriftMonitor, app: Any, settings: Any, model_of: Callable[[str], tuple[str, str]], window_s: int
) -> None:
    """The drift timer of a worker: evaluate (in a thread: it sums histograms) and publish the transitions."""
    turned = await asyncio.to_thread(monitor.evaluate)
    await publish(app, settings, [drift_event(monitor.service, t, *model_of(t.group), window_s) for t in turned])
