"""Per-key HTTP views answered by the worker that owns the key, whichever worker was asked (Faust's
``table_route``, with our token auth and a clear answer when no worker can).

A table's key lives on one worker: the one assigned the key's partition of the table's changelog. Faust's
assignor knows which worker that is (every member's ``canonical_url``, shared with the group assignment),
so a worker asked about a key it does not hold forwards the request there and relays the answer, status
and all. As in Faust's ``app.table_route`` (``app.router.key_store(table, key)``): when the owner is this
worker the view answers. Unlike it:

* the caller's token is checked first, here (no unauthenticated request is ever forwarded), and sent along
  so the owner checks it too;
* a forwarded request carries ``X-Flowwatch-Routed`` and is always answered where it lands, so two workers
  with different ideas of the assignment (mid-rebalance) never bounce a request between them;
* when no owner is known (before the first assignment, or the partition is between workers) the view
  answers here: a key this worker does not hold gets the view's own 404;
* an owner that cannot be reached answers 503 with ``Retry-After``, naming the worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any

import httpx

from shared.batching import kafka_partition
from shared.service import ServiceState

log = logging.getLogger(__name__)

ROUTED = "X-Flowwatch-Routed"
FORWARDED_HEADERS = ("Authorization", "X-Flowwatch-Token")
FORWARD_TIMEOUT_S = 10.0

ViewFn = Callable[..., Any]

# One client per event loop, kept for the worker's life: a new httpx client builds an SSL context and a
# connection pool (tens of ms of CPU) and would open a new connection to the owner for every request.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = _clients[loop] = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S)
    return client


def owner_url(app: Any, table: Any, key: bytes) -> str | None:
    """The base URL of the worker holding ``key`` in ``table``; None when it is this one or nobody is known.

    What ``app.router.key_store`` answers, without its need for producer metadata of the changelog topic
    (a worker that has not written to a table yet has none, and Faust then fails inside aiokafka): the key's
    partition by Kafka's default partitioner, looked up in the group's changelog distribution.
    """
    topic = table.changelog_topic.get_topic_name()
    partition = kafka_partition(key, table.partitions or app.conf.topic_partitions)
    own = str(app.conf.canonical_url).rstrip("/")
    for url, topics in app.assignor.tables_metadata().items():
        if partition in topics.get(topic, ()):
            url = str(url).rstrip("/")
            return None if url == own else url
    return None  # no assignment metadata (yet) for that partition


def routed(app: Any, table: Any, key_param: str) -> Callable[[ViewFn], ViewFn]:
    """Decorate a function view ``view(web, request, **kw)`` to answer on the owner of ``kw[key_param]``."""

    def decorate(fn: ViewFn) -> ViewFn:
        @functools.wraps(fn)
        async def view(web: Any, request: Any, **kw: Any) -> Any:
            if request.headers.get(ROUTED):
                return await fn(web, request, **kw)
            url = owner_url(app, table, str(kw[key_param]).encode())
            if url is None:
                return await fn(web, request, **kw)
            return await forward(web, request, url)

        return view

    return decorate


async def forward(web: Any, request: Any, base_url: str) -> Any:
    """Ask the worker at ``base_url`` the same GET (path, query, the caller's token); relay its answer."""
    headers = {ROUTED: "1", **{h: request.headers[h] for h in FORWARDED_HEADERS if request.headers.get(h)}}
    target = base_url + str(request.rel_url)
    try:
        answer = await _client().get(target, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("forwarding %s to its owner %s failed: %s", request.path, base_url, exc)
        return web.json(
            {"error": f"the worker holding this key ({base_url}) did not answer: {type(exc).__name__}"},
            status=503,
            headers={"Retry-After": "5"},
        )
    content_type = answer.headers.get("content-type", "application/json").split(";")[0]
    return web.bytes(answer.content, content_type=content_type, status=answer.status_code)


def table_page(
    state: ServiceState, path: str, table: Any, key_param: str, role: str = "viewer"
) -> Callable[[ViewFn], ViewFn]:
    """:meth:`ServiceState.api_page` for a view of one key of ``table`` (``{key_param}`` in ``path``):
    token checked here, then answered by the worker that holds the key."""

    def decorate(fn: ViewFn) -> ViewFn:
        return state.api_page(path, role)(routed(state.app, table, key_param)(fn))

    return decorate
