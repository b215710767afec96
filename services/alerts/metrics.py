"""Prometheus metrics of the alerts service."""

from __future__ import annotations

from shared.metrics import LATENCY_BUCKETS, Counter, Histogram

EVALUATED = Counter(
    "flowwatch_alerts_records_evaluated_total",
    "Input records decoded and evaluated against the rules (the others are dead-lettered)",
    ["topic"],
)
OBSERVATIONS = Counter(
    "flowwatch_alerts_observations_total",
    "Rule hits (merged per alert and batch) sent on by the evaluate stage (forwarded) and applied to the alert "
    "state (applied); the difference is what the state stage still has to do",
    ["stage"],
)
RULE_HITS = Counter("flowwatch_alerts_rule_hits_total", "Input records that matched a rule", ["rule"])
RULE_ERRORS = Counter(
    "flowwatch_alerts_rule_errors_total", "Records a rule matched but could not render (missing field)", ["rule"]
)
ALERT_TRANSITIONS = Counter(
    "flowwatch_alerts_transitions_total", "Alerts that became firing or resolved", ["rule", "status"]
)
NOTIFICATIONS = Counter(
    "flowwatch_alerts_notifications_total",
    "Notifications finished per receiver integration (delivered, dlq, duplicate_skipped)",
    ["receiver", "integration", "outcome"],
)
ATTEMPT_FAILURES = Counter(
    "flowwatch_alerts_attempt_failures_total", "Failed delivery attempts", ["receiver", "integration", "retryable"]
)
DELIVERY_SECONDS = Histogram(
    "flowwatch_alerts_delivery_seconds",
    "Time from a notification's creation to its delivery",
    ["receiver", "integration"],
    buckets=(*LATENCY_BUCKETS, 10.0, 30.0, 60.0, 300.0),
)
IDEMPOTENCY_DEGRADED = Counter(
    "flowwatch_alerts_idempotency_degraded_total",
    "Deliveries made without the Redis lease/done marker (Redis unreachable): duplicates possible after a crash",
)
API_REQUESTS = Counter(
    "flowwatch_alerts_api_requests_total", "API requests by endpoint and status", ["endpoint", "status"]
)
