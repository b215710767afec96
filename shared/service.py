"""What every flowwatch service has in common: the Faust app and its three endpoints.

Each service's ``create_app(settings)`` starts from :func:`base_app`, which applies
the conventions from the design (broker and consumer tuning against rebalance
storms, rocksdb tables under the data dir, web server on the configured host,
at-least-once processing) and mounts ``/health``, ``/ready`` and ``/metrics`` (open, for probes and scrapers) and
``/openapi.json`` (the service's API description). Faust's own ``/table``, ``/router``,
``/graph`` and statistics views are off: they serve table contents and cluster topology
to anyone. Every other view requires a caller of its role: :meth:`ServiceState.api_page` (one method) or
:meth:`ServiceState.guarded` (a view of several methods), through the service's :class:`shared.auth.Guard`.

Readiness means: joined the consumer group, with an assignment that covers every partition of
the group's topics and tables (see :func:`group_assignment`), not rebalancing, tables recovered,
and every service-specific check (model loaded, ...) passing. Liveness means the
process answers *and* the consumer is not stalled: a partition with messages
waiting whose stream has not taken an event for ``stall_seconds`` fails /health,
so an orchestrator restarts a worker whose consumer died silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from shared import codec as _codec  # noqa: F401 - registers the orjson codec with Faust
from shared.auth import PUBLIC, Guard, PrincipalSource, TokenStore, ViewFn, require_role
from shared.logs import logging_config, setup_logging
from shared.metrics import CONSUMER_LAG, CONTENT_TYPE_LATEST, READY, exposition
from shared.openapi import document
from shared.settings import Settings

log = logging.getLogger(__name__)

Check = Callable[[], "tuple[bool, str]"]


def tables_recovered(app: faust.App) -> bool:
    """The app's tables are recovered from their changelogs and no recovery is under way (true without tables)."""
    recovery = getattr(app.tables, "_recovery", None)
    return not app.tables or (recovery is not None and recovery.completed.is_set() and not app.in_recovery)


def uncovered_partitions(
    expected: Mapping[str, int | None], distribution: Iterable[Mapping[str, Iterable[int]]]
) -> dict[str, str]:
    """Topics of a consumer group whose partitions no member was assigned, with what is missing.

    ``expected`` is topic -> partition count (None or 0: the topic is not in the worker's metadata);
    ``distribution`` the active partitions of each member, topic -> partitions, as every member
    learns them with its assignment.
    """
    covered: dict[str, set[int]] = {}
    for member in distribution:
        for topic, partitions in member.items():
            covered.setdefault(topic, set()).update(partitions)
    missing: dict[str, str] = {}
    for topic, count in sorted(expected.items()):
        if not count:
            missing[topic] = "not in this worker's metadata yet (no such topic?)"
            continue
        lacking = sorted(set(range(count)) - covered.get(topic, set()))
        if lacking:
            missing[topic] = f"partitions {lacking} assigned to no worker"
    return missing


def _partition_count(app: faust.App, topic: str) -> int | None:
    """Partitions of ``topic`` in this worker's view of the cluster (None: the broker has not told it of the topic).

    Not ``app.consumer.topic_partitions``: that reads the coordinator's snapshot of the group's topics, which only
    the group's leader fills (it computes the assignment) — a follower would never be ready.
    """
    # Faust runs the aiokafka consumer in a thread object of its consumer: app.consumer._thread._consumer.
    thread = getattr(app.consumer, "_thread", None)
    client = getattr(getattr(thread, "_consumer", None), "_client", None)
    if client is None:
        return None
    partitions = client.cluster.partitions_for_topic(topic)
    return len(partitions) if partitions else None


def group_assignment(app: faust.App) -> tuple[bool, str]:
    """Whether the group's assignment covers every partition of the app's topics and tables.

    Workers that joined before their own new topics were in the broker's metadata get an assignment
    without them ("Ignoring missing topic"): a lone worker is then assigned nothing and reads nothing,
    while everything else looks healthy. Every member learns the whole distribution with its assignment,
    so any worker can tell.
    """
    assignor = app.assignor
    changelogs = {t.changelog_topic.get_topic_name(): t.partitions for t in app.tables.values()}
    expected: dict[str, int | None] = dict(changelogs)
    subscribed = getattr(app.topics, "_topic_name_index", {})  # the conductor's subscription, by topic name
    # Faust's leader-election topic is assigned outside the distribution every member learns: not work to cover.
    elsewhere = set(getattr(app.consumer, "randomly_assigned_topics", ()))
    for topic in subscribed:
        if topic not in expected and topic not in elsewhere:
            expected[topic] = _partition_count(app, topic)
    if not expected:
        return True, "no topics"
    members = [*assignor.changelog_distribution.values(), *assignor.external_topic_distribution.values()]
    missing = uncovered_partitions(expected, members)
    if missing:
        why = "; ".join(f"{topic}: {what}" for topic, what in missing.items())
        return False, f"the group's assignment is incomplete (rejoining fixes it): {why}"
    mine = len(assignor.assigned_actives())
    return True, f"{len(expected)} topics covered; {mine} partitions active here"


@dataclass
class ServiceState:
    """Health state of one running service; views and tests read it."""

    app: faust.App
    service: str
    stall_seconds: float = 120.0
    checks: dict[str, Check] = field(default_factory=dict)
    liveness_checks: dict[str, Check] = field(default_factory=dict)
    joined: bool = False
    started_at: float = field(default_factory=time.monotonic)
    tokens: TokenStore = field(default_factory=TokenStore)
    #: the bearer tokens, plus any other principal source the service adds (:meth:`add_principal_source`)
    guard: Guard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = Guard(self.tokens, [])

    def add_principal_source(self, source: PrincipalSource, missing: str = "") -> None:
        """Let callers without a bearer token be known another way (the console's session cookies);
        ``missing`` replaces the 401 message for a request that has neither."""
        self.guard.sources = [*self.guard.sources, source]
        if missing:
            self.guard.missing = missing

    def guarded(self, role: str, fn: ViewFn) -> ViewFn:
        """The view method ``fn(view, request, **kw)`` answering 401/403 unless its caller has ``role`` or
        above (viewer < operator < admin; :data:`shared.auth.PUBLIC` for none); the one way every service
        guards its API views. The view reads its caller with :func:`shared.auth.principal_of`."""
        return fn if role == PUBLIC else require_role(self.guard, role)(fn)

    def api_page(self, path: str, role: str = "viewer") -> Callable[[Any], Any]:
        """``@app.page(path)`` for a function view (GET) guarded by :meth:`guarded`."""

        def decorate(fn: Any) -> Any:
            return self.app.page(path)(self.guarded(role, fn))

        return decorate

    def add_check(self, name: str, check: Check) -> None:
        """Register a readiness check returning ``(ok, detail)``."""
        self.checks[name] = check

    def add_liveness_check(self, name: str, check: Check) -> None:
        """Register a liveness check: failing it fails /health, so an orchestrator restarts the process.

        Only for states a restart can cure (a consumer that stopped taking messages), never for
        "still starting": a worker recovering its tables must not be killed for being slow.
        """
        self.liveness_checks[name] = check

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        stalled = self.stalled_partitions()
        detail: dict[str, Any] = {"stalled": stalled}
        ok = not stalled
        for name, check in self.liveness_checks.items():
            try:
                passed, why = check()
            except Exception as exc:  # noqa: BLE001 - a crashing check means "not alive", with its reason
                passed, why = False, f"{type(exc).__name__}: {exc}"
            detail[name] = {"ok": passed, "detail": why}
            ok = ok and passed
        return ok, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        app = self.app
        tables_ok = tables_recovered(app)
        detail: dict[str, Any] = {
            "joined_group": self.joined,
            "rebalancing": bool(app.rebalancing),
            "tables_recovered": bool(tables_ok),
        }
        ok = self.joined and not app.rebalancing and bool(tables_ok)
        if not self.joined:
            detail["assignment"] = {"ok": False, "detail": "no assignment yet: not a member of the group"}
        elif not app.rebalancing:
            try:
                covered, why = group_assignment(app)
            except Exception as exc:  # noqa: BLE001 - unknown is not ready, with the reason
                covered, why = False, f"{type(exc).__name__}: {exc}"
            detail["assignment"] = {"ok": covered, "detail": why}
            ok = ok and covered
        for name, check in self.checks.items():
            try:
                passed, why = check()
            except Exception as exc:  # noqa: BLE001 - a failing check is "not ready", with its reason
                passed, why = False, f"{type(exc).__name__}: {exc}"
            detail[name] = {"ok": passed, "detail": why}
            ok = ok and passed
        READY.labels(self.service).set(1 if ok else 0)
        return ok, detail

    def stalled_partitions(self) -> dict[str, float]:
        """Partitions with messages waiting whose stream took nothing for ``stall_seconds``."""
        app = self.app
        if not self.joined or app.rebalancing or app.in_recovery:
            return {}
        now = time.monotonic()
        stalled: dict[str, float] = {}
        consumer = app.consumer
        inbound = app.monitor.stream_inbound_time if app.monitor else {}
        lag_by_topic: dict[str, int] = {}
        for tp in consumer.assignment():
            if tp.topic in app.tables.changelog_topics:
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - highwater unknown before the first fetch
                continue
            committed = consumer._committed_offset.get(tp)
            position = (committed + 1) if committed is not None else 0
            lag = max(0, (highwater or 0) - position)
            lag_by_topic[tp.topic] = lag_by_topic.get(tp.topic, 0) + lag
            if lag <= 0:
                continue
            last = inbound.get(tp, self.started_at)
            if now - last > self.stall_seconds:
                stalled[f"{tp.topic}[{tp.partition}]"] = round(now - last, 1)
        for topic, lag in lag_by_topic.items():
            CONSUMER_LAG.labels(self.service, topic).set(lag)
        return stalled


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner.

    At log level WARNING or above, Faust's worker adds a spinner handler at DEBUG and sets the root logger to
    DEBUG, so that the spinner turns on every record. From then on every ``log.debug`` of every library (httpcore,
    redis, faust, mode) builds a ``LogRecord`` that no handler writes: ~6 % of a webhook delivery's time in the
    alerts worker (py-spy, docs/performance.md), and the same tax on every service run at WARNING (the benches).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


def base_app(
    settings: Settings,
    *,
    app_id: str | None = None,
    openapi: Path | None = None,
    session_timeout_s: float = 60.0,
    **conf: Any,
) -> tuple[faust.App, ServiceState]:
    """A configured Faust app with /health, /ready, /metrics and (given its file) /openapi.json mounted.

    ``session_timeout_s`` is the service's consumer-group session: heartbeats go at a quarter of it (3 s at
    most) and a rebalance may take as long (10 s at least), the same rule for every service.
    """
    setup_logging(settings.service, settings.log_level)
    settings.table_dir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": settings.table_store,
        "datadir": str(settings.data_dir / settings.service),
        "tabledir": str(settings.table_dir),
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "web_port": settings.port,
        "web_enabled": True,
        # Faust's built-in views would serve table contents and cluster topology without a token (pitfall 10).
        # app.router (the Python API ingest uses to find a key's owner) works without them.
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "web_graph_enabled": False,
        "web_stats_enabled": False,
        "processing_guarantee": "at_least_once",
        "topic_replication_factor": settings.replication_factor,
        "topic_partitions": settings.partitions,
        # Faust may create only its own changelog/repartition topics; ours come from shared.topics.
        "topic_allow_declare": True,
        "broker_max_poll_records": settings.max_poll_records,
        "table_standby_replicas": settings.standby_replicas,
        "broker_credentials": settings.kafka_credentials(),
        # Against rebalance storms (pitfall 1): generous session, quick heartbeats.
        "broker_session_timeout": session_timeout_s,
        "broker_heartbeat_interval": min(3.0, session_timeout_s / 4),
        "broker_rebalance_timeout": max(session_timeout_s, 10.0),
        "consumer_auto_offset_reset": "earliest",
        # A topic that appears after the worker joined (a new changelog on a fresh broker, an input created
        # late) is seen at the next metadata refresh, which rejoins the group so it gets assigned: every
        # 30 s rather than Kafka's 5 min, so a worker left without its partitions heals itself quickly.
        "consumer_metadata_max_age_ms": 30_000,
        "producer_linger_ms": 5,
        "producer_max_batch_size": 256 * 1024,
        "web_in_thread": False,
        "key_serializer": "raw",
        "value_serializer": "orjson",
        "logging_config": logging_config(settings.service, settings.log_level),
        "Worker": QuietWorker,
    }
    options.update(conf)
    app = faust.App(app_id or f"{settings.topic_prefix}flowwatch-{settings.service}", **options)
    state = ServiceState(app=app, service=settings.service, tokens=TokenStore.from_settings(settings))
    app.flowwatch_state = state  # type: ignore[attr-defined]
    app.flowwatch_settings = settings  # type: ignore[attr-defined]

    @app.on_partitions_assigned.connect
    async def _joined(sender: Any, assigned: Any, **_: Any) -> None:
        state.joined = True

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        alive, detail = state.liveness()
        body = {"status": "ok" if alive else "stalled", "service": settings.service, **detail}
        return web.json(body, status=200 if alive else 503)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok, detail = state.readiness()
        return web.json({"ready": ok, "service": settings.service, **detail}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        state.readiness()
        state.liveness()
        return web.bytes(exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    if openapi is not None:
        spec = document(openapi)

        @app.page("/openapi.json")
        async def openapi_view(web: Any, request: Any) -> Any:
            return web.json(spec)

    return app, state
