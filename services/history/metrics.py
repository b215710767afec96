"""Prometheus metrics of the history service."""

from __future__ import annotations

from shared.metrics import Counter, Histogram

MESSAGES = Counter("flowwatch_history_messages_total", "Messages written to the history store", ["topic"])
ACCEPTED = Counter(
    "flowwatch_history_accepted_total",
    "Messages stored (made or counted in rows), beside rejects and duplicates",
    ["topic"],
)
DUPLICATES = Counter(
    "flowwatch_history_duplicates_total", "Readings seen before (a replay upstream), not counted again"
)
ROWS = Counter("flowwatch_history_rows_total", "Rows inserted or updated per table", ["table"])
REJECTED = Counter(
    "flowwatch_history_rejected_total", "Messages that could not be read (kept in `rejected`)", ["topic"]
)
BATCH_SECONDS = Histogram("flowwatch_history_batch_seconds", "Time to decode and write one micro-batch")
API_REQUESTS = Counter("flowwatch_history_api_requests_total", "History API requests", ["endpoint", "code"])
