"""Pipeline health from every service's ``/metrics``: throughput, lag, batch latency, quarantine, models.

A sampler scrapes every target each ``interval_s``; rates are the difference of two samples, so a
view never waits on a scrape and one slow service cannot slow the console. Quantiles come from the
shared ``flowwatch_batch_seconds`` histogram (cumulative since the service started).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Sample:
    """What one scrape of one service said, reduced to what the view needs."""

    at: float
    up: bool
    events_in: float = 0.0
    lag: float = 0.0
    quarantined: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, float] = field(default_factory=dict)


def parse(text: str, at: float) -> Sample:
    s = Sample(at=at, up=True)
    buckets: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for m in family.samples:
            name, labels, value = m.name, m.labels, m.value
            if name == "flowwatch_events_in_total":
                s.events_in += value
            elif name == "flowwatch_consumer_lag":
                s.lag += value
            elif name == "flowwatch_ingest_quarantined_total":
                s.quarantined += value
            elif name == "flowwatch_ingest_quarantine_reasons_total":
                s.reasons[labels.get("reason", "")] = value
            elif name == "flowwatch_batch_seconds_bucket":
                buckets[float(labels["le"])] += value
            elif name.endswith("_model_loaded") and value == 1 and "version" in labels:
                s.models[name.removeprefix("flowwatch_").removesuffix("_model_loaded")] = labels["version"]
    s.buckets = dict(buckets)
    return s


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket that holds the ``q`` quantile; None without observations."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0
    if not total:
        return None
    for le, count in ordered:
        if count >= q * total:
            return None if le == float("inf") else round(le * 1000, 3)
    return None


class PipelineHealth:
    def __init__(self, targets: dict[str, str], interval_s: float = 10.0, timeout_s: float = 3.0):
        self.targets = targets
        self.interval_s = interval_s
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.samples: dict[str, tuple[Sample | None, Sample | None]] = {n: (None, None) for n in targets}

    async def scrape(self, name: str, url: str) -> Sample:
        now = time.monotonic()
        try:
            r = await self.client.get(f"{url}/metrics")
            return parse(r.text, now) if r.status_code == 200 else Sample(now, False)
        except (httpx.HTTPError, ValueError):
            return Sample(now, False)

    async def sample(self) -> None:
        results = await asyncio.gather(*(self.scrape(n, u) for n, u in self.targets.items()))
        for name, new in zip(self.targets, results, strict=True):
            self.samples[name] = (self.samples[name][1], new)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    async def view(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(services, quarantine_reasons)``; scrapes once first if nothing was sampled yet."""
        if all(last is None for _, last in self.samples.values()):
            await self.sample()
        services = []
        reasons: dict[str, float] = defaultdict(float)
        for name, (prev, last) in self.samples.items():
            if last is None or not last.up:
                services.append({"name": name, "up": False})
                continue
            rate = quarantine_rate = None
            if prev is not None and prev.up and last.at > prev.at:
                dt = last.at - prev.at
                rate = round(max(0.0, last.events_in - prev.events_in) / dt, 2)
                if name == "ingest":
                    q = max(0.0, last.quarantined - prev.quarantined)
                    n = max(0.0, last.events_in - prev.events_in)
                    quarantine_rate = round(q / n, 4) if n else 0.0
            for reason, count in last.reasons.items():
                reasons[reason] += count
            services.append(
                {
                    "name": name,
                    "up": True,
                    "throughput_per_s": rate,
                    "lag": last.lag,
                    "batch_p50_ms": quantile(last.buckets, 0.5),
                    "batch_p95_ms": quantile(last.buckets, 0.95),
                    "quarantine_rate": quarantine_rate,
                    "model_versions": last.models,
                }
            )
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:10]
        return services, [{"reason": r, "count": c} for r, c in top]

    async def close(self) -> None:
        await self.client.aclose()
