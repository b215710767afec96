"""Prometheus metrics common to every service.

Each service defines its own counters next to the code that increments them;
this module holds the process-wide ones and the exposition helper. All metrics
live in prometheus_client's default registry so ``/metrics`` shows everything.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Counter", "Gauge", "Histogram", "exposition"]

# Buckets for per-event and per-batch processing latency, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

EVENTS_IN = Counter("flowwatch_events_in_total", "Messages consumed", ["service", "topic"])
EVENTS_OUT = Counter("flowwatch_events_out_total", "Messages produced", ["service", "topic"])
DEAD_LETTERS = Counter(
    "flowwatch_dead_letters_total", "Records set aside on the deadletter topic", ["service", "topic"]
)
DECODE_ERRORS = Counter("flowwatch_decode_errors_total", "Messages that could not be decoded", ["service", "topic"])
BATCH_SECONDS = Histogram(
    "flowwatch_batch_seconds", "Time to process one micro-batch", ["service", "stage"], buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "flowwatch_batch_size",
    "Events per micro-batch",
    ["service", "stage"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
CACHE_ERRORS = Counter(
    "flowwatch_cache_errors_total", "Redis operations that failed (the pipeline went on)", ["service", "op"]
)
CONSUMER_LAG = Gauge("flowwatch_consumer_lag", "Messages behind the log end, per topic", ["service", "topic"])
READY = Gauge("flowwatch_ready", "1 when the service is ready (joined its group, tables recovered)", ["service"])


def exposition() -> bytes:
    return generate_latest()
