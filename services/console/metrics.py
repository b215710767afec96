"""Prometheus metrics of the console service."""

from __future__ import annotations

from shared.metrics import Counter, Gauge

API_REQUESTS = Counter("flowwatch_console_api_requests_total", "Console API requests", ["endpoint", "code"])
LOGINS = Counter("flowwatch_console_logins_total", "Login attempts by outcome", ["outcome"])
LIVE_CLIENTS = Gauge("flowwatch_console_live_clients", "SSE clients connected to this replica")
LIVE_EVENTS = Counter("flowwatch_console_live_events_total", "Records taken from the live topics", ["event"])
LIVE_DROPPED = Counter(
    "flowwatch_console_live_dropped_total", "Live updates a slow client lost (its queue was full)", ["event"]
)
LIVE_UNREADABLE = Counter(
    "flowwatch_console_live_unreadable_total", "Live-topic records that were not JSON (skipped)", ["topic"]
)
REPORTS = Counter("flowwatch_console_public_reports_total", "Public leak reports by outcome", ["outcome"])
