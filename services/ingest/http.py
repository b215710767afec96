"""POST /v1/readings: readings over HTTP, answered with what became of each one.

The endpoint does not validate on its own: it writes each item to readings.raw, keyed by
its sensor_id (so it lands in the partition whose owner holds the sensor's state), and
waits for the agent's verdicts (:mod:`services.ingest.verdicts`). One validation path,
and the answer is the truth: ``accepted``, ``quarantined`` (with reasons per item) and
``duplicates``. Items whose partition another worker owns, or still undecided after
``FLOWWATCH_INGEST_HTTP_WAIT_S``, are ``pending``: durably in readings.raw, not lost.

Status codes: 202 with the summary; 400 for a body that is not JSON, a JSON array or
NDJSON; 401/403 for a missing/wrong token when one is configured; 413 above the size or
item limit; 503 while the worker has no partitions yet or Kafka refuses the write.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from services.ingest import metrics as m
from services.ingest.outbox import Outbox
from services.ingest.payloads import PayloadError, TooManyItems, split_items
from services.ingest.pipeline import H_REQUEST, H_SOURCE

if TYPE_CHECKING:
    from services.ingest.engine import Ingest

log = logging.getLogger(__name__)

PATH = "/v1/readings"


def check_token(expected: str, headers: Any) -> int | None:
    """None when authorised, else the status (401 missing, 403 wrong). Constant-time comparison."""
    if not expected:
        return None
    given = headers.get("X-Flowwatch-Token")
    if given is None:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode(), expected.encode()) else 403


async def read_body(request: Any, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (checked before and while reading)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class ReadingsEndpoint:
    """The handler logic; :func:`install` mounts it on the Faust web server."""

    def __init__(self, ingest: Ingest, token: str) -> None:
        self.ingest = ingest
        self._token = token
        self._spread = itertools.count()

    async def handle(self, view: Any, request: Any) -> Any:
        try:
            status, body, headers = await self._handle(request)
        except Exception:  # a bug must not turn into a bare 500 without a word
            log.exception("POST %s failed", PATH)
            status, body, headers = 500, {"error": "internal error; see the ingest log"}, None
        m.HTTP_REQUESTS.labels(str(status)).inc()
        return view.json(body, status=status, headers=headers)

    async def _handle(self, request: Any) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        isettings = self.ingest.isettings
        denied = check_token(self._token, request.headers)
        if denied == 401:
            return (
                401,
                {"error": "missing ingest token (Authorization: Bearer <token>)"},
                {"WWW-Authenticate": "Bearer"},
            )
        if denied == 403:
            return 403, {"error": "wrong ingest token"}, None
        body = await read_body(request, isettings.http_max_body_bytes)
        if body is None:
            return 413, {"error": f"body larger than {isettings.http_max_body_bytes} bytes"}, None
        try:
            items = split_items(body, isettings.http_max_items)
        except TooManyItems as exc:
            return 413, {"error": str(exc)}, None
        except PayloadError as exc:
            return 400, {"error": str(exc)}, None

        ingest = self.ingest
        try:
            await ingest.ensure_started()
        except (KafkaError, OSError) as exc:
            return 503, {"error": f"Kafka unavailable: {type(exc).__name__}"}, {"Retry-After": "5"}
        local = sorted(ingest.local_partitions())
        if not local:
            return 503, {"error": "ingest is not ready (no partitions assigned yet)"}, {"Retry-After": "2"}
        assert ingest.partition_of is not None and ingest.producer is not None
        local_set = set(local)

        placed: list[tuple[int, int, bytes | None, bytes]] = []  # (index, partition, key, value)
        remote = 0
        for index, item in enumerate(items):
            if item.sensor_id is not None:
                partition = ingest.partition_of(item.sensor_id)
                key: bytes | None = item.sensor_id.encode()
            else:
                # Nothing to key by (it will be quarantined): keep it where this worker decides it.
                partition = local[next(self._spread) % len(local)]
                key = None
            placed.append((index, partition, key, item.value))
            if partition not in local_set:
                remote += 1

        board = ingest.board
        request_id, pending = board.open(len(items) - remote)
        # Verdicts of items owned here come back to this worker; remote ones are reported pending.
        try:
            box = Outbox(ingest.producer)
            for index, partition, key, value in placed:
                headers = [(H_SOURCE, b"http")]
                if partition in local_set:
                    headers.append((H_REQUEST, board.item_id(request_id, index)))
                box.add(ingest.raw_name, partition, key, value, headers)
            try:
                await box.flush()
            except KafkaError as exc:
                return 503, {"error": f"could not write to Kafka: {type(exc).__name__}"}, {"Retry-After": "5"}
            try:
                await asyncio.wait_for(pending.done.wait(), timeout=isettings.http_wait_s)
            except TimeoutError:
                pass
            summary = pending.summary()
        finally:
            board.close(request_id)
        summary["pending"] = int(summary["pending"]) + remote  # type: ignore[call-overload]
        summary["received"] = len(items)
        return 202, summary, None


def install(app: Any, endpoint: ReadingsEndpoint) -> None:
    from faust.web import View

    class Readings(View):
        async def post(self, request: Any) -> Any:
            return await endpoint.handle(self, request)

    app.page(PATH, name="ingest-readings")(Readings)
