"""Streaming a simulation into a sink: real time, accelerated, or as fast as possible.

The simulated clock runs at ``speed`` times the wall clock from ``start_ms``
(``speed=None``: no pacing at all). Rows are sent when the clock passes their
delivery time, a tick's worth at a time, so a real-time run at 200 readings/s sends
~20 every 100 ms rather than 200 once a second. Labels go out when the first
reading of their incident does. The report counts what the sink acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from services.simulator.encode import Encoder
from services.simulator.faults import DETAILS, FAULTS
from services.simulator.formats import FormatEncoder
from services.simulator.generator import Batch, Engine
from services.simulator.labels import LabelFile
from services.simulator.sinks import Sink
from shared.records import IncidentLabel
from shared.timeutil import iso_ms

log = logging.getLogger("flowwatch.simulator")

LabelPublisher = Callable[[IncidentLabel], Any]


@dataclass
class RunOptions:
    start_ms: int
    #: Simulated time to cover; None runs until stopped (or ``max_messages``).
    duration_ms: int | None = None
    #: Simulated seconds per wall second; None sends as fast as the sink takes them.
    speed: float | None = 1.0
    max_messages: int | None = None
    tick_ms: int = 100
    #: Rows encoded and sent per step when not pacing.
    chunk: int = 5000
    progress: bool = False
    status_every_s: float = 10.0
    #: Send only these sites' sensors (all when empty).
    sites: tuple[str, ...] = ()


@dataclass
class RunReport:
    sink: str
    target: str
    seed: int
    start_ms: int
    end_ms: int = 0
    wall_s: float = 0.0
    readings: int = 0
    messages: int = 0
    by_fault: Counter = field(default_factory=Counter)
    corrupt_kinds: Counter = field(default_factory=Counter)
    anomalous: int = 0
    burst: int = 0
    labels: int = 0
    incident_types: Counter = field(default_factory=Counter)
    stopped_by: str = ""

    def to_dict(self, sink: Sink | None = None) -> dict[str, Any]:
        out = {
            "sink": self.sink,
            "target": self.target,
            "seed": self.seed,
            "start": iso_ms(self.start_ms),
            "end": iso_ms(self.end_ms) if self.end_ms else None,
            "wall_s": round(self.wall_s, 3),
            "readings": self.readings,
            "messages": self.messages,
            "rate_per_s": round(self.messages / self.wall_s, 1) if self.wall_s > 0 else None,
            "by_fault": {k or "none": v for k, v in sorted(self.by_fault.items())},
            "corrupt_kinds": dict(sorted(self.corrupt_kinds.items())),
            "anomalous": self.anomalous,
            "burst": self.burst,
            "labels": self.labels,
            "incident_types": dict(sorted(self.incident_types.items())),
            "stopped_by": self.stopped_by,
        }
        if sink is not None:
            out["delivery"] = sink.stats.to_dict()
        return out


class Runner:
    def __init__(
        self,
        engine: Engine,
        sink: Sink,
        options: RunOptions,
        label_publishers: list[LabelPublisher] | None = None,
        label_file: LabelFile | None = None,
        encoder: FormatEncoder | None = None,
    ):
        self.engine = engine
        self.sink = sink
        self.options = options
        self.encoder: Encoder | FormatEncoder = encoder or Encoder(engine)
        # Rows of the sensors this run sends: of the chosen sites, and that the device format can describe.
        keep = np.ones(len(engine.network), dtype=bool) if encoder is None else encoder.fits.copy()
        if options.sites:
            keep &= np.array([s.site in options.sites for s in engine.network.sensors])
        self.keep = None if keep.all() else keep
        self.label_publishers = label_publishers or []
        self.label_file = label_file
        self.report = RunReport(sink.name, sink.target, engine.seed, options.start_ms)
        self._published: set[int] = set()
        self._stop = asyncio.Event()

    def stop(self, why: str = "signal") -> None:
        self.report.stopped_by = self.report.stopped_by or why
        self._stop.set()

    async def run(self) -> RunReport:
        opts = self.options
        end_ms = None if opts.duration_ms is None else opts.start_ms + opts.duration_ms
        self._end_ms = end_ms
        wall0 = time.monotonic()
        self._last_status = wall0
        bar = self._bar(end_ms)
        try:
            for batch in self.engine.batches(opts.start_ms, end_ms):
                if not await self._emit(batch, wall0, bar):
                    break
                # Generation of the next block is CPU work: let the sink's I/O breathe in between.
                await asyncio.sleep(0)
            else:
                self.report.stopped_by = self.report.stopped_by or "end of range"
            await self.sink.flush()
        finally:
            self.report.wall_s = time.monotonic() - wall0
            if bar is not None:
                bar.close()
        return self.report

    def _bar(self, end_ms: int | None) -> Any:
        if not self.options.progress:
            return None
        from tqdm import tqdm

        total = self.options.max_messages
        if total is None and end_ms is not None:
            total = self.engine.count_between(self.options.start_ms, end_ms)
        return tqdm(total=total, unit="msg", unit_scale=True, smoothing=0.1)

    def _sim_now(self, wall0: float) -> float:
        assert self.options.speed is not None
        return self.options.start_ms + (time.monotonic() - wall0) * 1000 * self.options.speed

    async def _emit(self, batch: Batch, wall0: float, bar: Any) -> bool:
        """Send a delivery-ordered batch, paced; False when the run must stop."""
        opts = self.options
        i, n = 0, len(batch)
        while i < n:
            if self._stop.is_set():
                return False
            if opts.speed is None:
                j = min(n, i + opts.chunk)
            else:
                due = self._sim_now(wall0)
                if self._end_ms is not None and due >= self._end_ms:
                    # The range is over: what is still held back (late, bursts) goes out now rather than
                    # keeping a finite run alive for the longest delay.
                    due = float("inf")
                j = int(np.searchsorted(batch.deliver, due, side="right"))
                if j <= i:
                    # Nothing due yet: sleep until the next row is, or a tick, whichever is sooner.
                    wait_ms = (batch.deliver[i] - due) / opts.speed
                    await self._sleep(min(max(wait_ms, 1.0), opts.tick_ms) / 1000)
                    continue
                j = min(j, i + max(opts.chunk, 1))
            if opts.max_messages is not None:
                j = min(j, i + opts.max_messages - self.report.messages)
            await self._send(batch.take(np.arange(i, j)))
            if bar is not None:
                bar.update(j - i)
            i = j
            self._status(wall0)
            if opts.max_messages is not None and self.report.messages >= opts.max_messages:
                self.report.stopped_by = "message count"
                return False
        return True

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _send(self, part: Batch) -> None:
        if self.keep is not None:
            part = part.take(np.flatnonzero(self.keep[part.sensor]))
            if not len(part):
                return
        await self._labels(part)
        payloads = self.encoder.encode(part)
        await self.sink.send(part.sensor.tolist(), payloads)
        r = self.report
        r.messages += len(part)
        r.readings += int((part.fault != FAULTS.index("duplicate")).sum())
        for code, count in zip(*np.unique(part.fault, return_counts=True), strict=True):
            r.by_fault[FAULTS[code]] += int(count)
        corrupt = part.detail[part.fault == FAULTS.index("corrupt")]
        for code, count in zip(*np.unique(corrupt, return_counts=True), strict=True):
            r.corrupt_kinds[DETAILS[code]] += int(count)
        r.anomalous += int((part.incident >= 0).sum())
        r.burst += int(part.burst.sum())
        r.end_ms = max(r.end_ms, int(part.ts.max()) + 1)

    async def _labels(self, part: Batch) -> None:
        new = set(np.unique(part.incident).tolist()) - self._published - {-1}
        if not new:
            return
        opts = self.options
        end = None if opts.duration_ms is None else opts.start_ms + opts.duration_ms
        for idx in sorted(new):
            self._published.add(idx)
            label = self.engine.incidents[idx].label(self.engine.network, opts.start_ms, end)
            self.report.labels += 1
            self.report.incident_types[label.type] += 1
            if self.label_file is not None:
                self.label_file.write(label)
            for publish in self.label_publishers:
                result = publish(label)
                if asyncio.iscoroutine(result):
                    await result

    def _status(self, wall0: float) -> None:
        now = time.monotonic()
        if now - self._last_status < self.options.status_every_s:
            return
        self._last_status = now
        elapsed = now - wall0
        stats = self.sink.stats
        log.info(
            "simulator progress",
            extra={
                "messages": self.report.messages,
                "delivered": stats.delivered,
                "failed": stats.failed,
                "rate_per_s": round(self.report.messages / elapsed, 1) if elapsed else None,
                "sim_time": iso_ms(self.report.end_ms) if self.report.end_ms else None,
                "labels": self.report.labels,
            },
        )


def label_bytes(label: IncidentLabel) -> tuple[bytes, bytes]:
    return label.incident_id.encode(), orjson.dumps(label.to_dict())
