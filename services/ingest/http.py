"""POST /v1/readings: readings over HTTP, answered with what became of each one.

The endpoint does not validate on its own: it writes each item to readings.raw, keyed by
its sensor_id (so it lands in the partition whose owner holds the sensor's state), and
waits for the pipeline's verdicts (:mod:`services.ingest.verdicts`). One validation path,
and the answer is the truth: ``accepted``, ``quarantined`` (with reasons per item) and
``duplicates``. With several workers, items whose sensors another worker owns are sent
to that worker's endpoint (Faust's router knows the owner of each table key) and its
answer is merged in. Items still undecided after ``FLOWWATCH_INGEST_HTTP_WAIT_S``, or
whose owner could not be reached, are ``pending``: durably in readings.raw, not lost.

Status codes: 202 with the summary; 400 for a body that is not JSON, a JSON array or
NDJSON; 401/403 for a missing/wrong token (with no token configured at all the endpoint is
closed: 401 saying what to set); 413 above the size or item limit; 429 (with
``Retry-After``) beyond ``FLOWWATCH_INGEST_HTTP_MAX_CONCURRENT`` requests at once; 503 while
the worker has no partitions yet or Kafka refuses the write. An item larger than
``FLOWWATCH_INGEST_MAX_LINE_BYTES`` is quarantined (``too_large``) by the endpoint itself:
it would not fit readings.raw.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from typing import TYPE_CHECKING, Any

import httpx
from aiokafka.errors import KafkaError

from services.ingest import metrics as m
from services.ingest.payloads import Item, PayloadError, TooManyItems, csv_items, split_items
from services.ingest.pipeline import H_MAPPING, H_REQUEST, H_SOURCE, QUARANTINED
from services.ingest.verdicts import MAX_ERRORS_SHOWN
from shared.auth import AuthError, TokenStore, authorize
from shared.batching import Outbox

if TYPE_CHECKING:
    from services.ingest.worker import Ingest

log = logging.getLogger(__name__)

PATH = "/v1/readings"
#: Mapped requests with more messages than this are mapped in a worker thread.
THREAD_ABOVE = 200
#: Set on a request one worker routes to the owner of its sensors; the owner never routes it again.
H_ROUTED = "X-Flowwatch-Routed"


UNCONFIGURED = (
    "no ingest token is configured, so POST /v1/readings is closed: set FLOWWATCH_INGEST_TOKEN (or "
    "FLOWWATCH_INGEST_TOKEN_FILE) for devices, or FLOWWATCH_API_TOKENS with an operator token"
)


def check_token(device_token: str, tokens: TokenStore, headers: Any) -> AuthError | None:
    """None when authorised, else why not: the device token or an API token of role operator or above.

    Closed by default: with neither configured every request is refused (401). A missing token is a
    401, a token that is not known a 403, a viewer's token a 403. Comparisons are constant-time.
    """
    if not device_token and not tokens.tokens:
        return AuthError(401, UNCONFIGURED)
    given = headers.get("X-Flowwatch-Token")
    if given is None:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    if not given:
        return AuthError(401, "missing ingest token (Authorization: Bearer <token> or X-Flowwatch-Token)")
    if device_token and hmac.compare_digest(given.encode(errors="surrogatepass"), device_token.encode()):
        return None
    try:
        authorize(tokens, f"Bearer {given}", "operator")
    except AuthError as exc:
        return AuthError(403, "wrong ingest token") if exc.status == 401 else exc
    return None


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
        self._http: httpx.AsyncClient | None = None
        self.active = 0

    async def handle(self, view: Any, request: Any) -> Any:
        limit = self.ingest.isettings.http_max_concurrent
        if self.active >= limit:
            # Bounds the memory held by bodies and waiting requests; a client retries after a second.
            status, body, headers = 429, {"error": f"more than {limit} requests at once; retry"}, {"Retry-After": "1"}
            m.HTTP_REQUESTS.labels(str(status)).inc()
            return view.json(body, status=status, headers=headers)
        self.active += 1
        try:
            status, body, headers = await self._handle(request)
        except Exception:  # a bug must not turn into a bare 500 without a word
            log.exception("POST %s failed", PATH)
            status, body, headers = 500, {"error": "internal error; see the ingest log"}, None
        finally:
            self.active -= 1
        m.HTTP_REQUESTS.labels(str(status)).inc()
        return view.json(body, status=status, headers=headers)

    async def _handle(self, request: Any) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        isettings = self.ingest.isettings
        denied = check_token(self._token, self.ingest.app.flowwatch_state.tokens, request.headers)
        if denied is not None:
            return denied.status, {"error": str(denied)}, denied.headers
        body = await read_body(request, isettings.http_max_body_bytes)
        if body is None:
            return 413, {"error": f"body larger than {isettings.http_max_body_bytes} bytes"}, None
        ingest = self.ingest
        mapping = None
        name = request.query.get("mapping")
        if name is not None:
            mapping = ingest.mappings.get(name)
            if mapping is None:
                known = ", ".join(sorted(ingest.mappings)) or "none"
                return 400, {"error": f"unknown mapping {name[:64]!r} (known: {known})"}, None
        csv = request.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/csv"
        if csv and mapping is None:
            return 400, {"error": "a text/csv body needs ?mapping=NAME (which columns are what)"}, None
        try:
            if csv:
                items = csv_items(body, isettings.http_max_items)
            else:
                items = split_items(body, isettings.http_max_items, isettings.max_field_chars)
        except TooManyItems as exc:
            return 413, {"error": str(exc)}, None
        except PayloadError as exc:
            return 400, {"error": str(exc)}, None
        messages = len(items)
        if mapping is not None:
            if len(items) > THREAD_ABOVE:
                # A big body's mapping is CPU work of up to a second or two: off the event loop, which the
                # readings pump, the MQTT bridge and every other request share.
                items = await asyncio.to_thread(ingest.map_items, mapping, items)
            else:
                items = ingest.map_items(mapping, items)
            if len(items) > isettings.http_max_items:
                return 413, {"error": str(TooManyItems(len(items), isettings.http_max_items))}, None

        try:
            await ingest.start()
        except (KafkaError, OSError) as exc:
            return 503, {"error": f"Kafka unavailable: {type(exc).__name__}"}, {"Retry-After": "5"}
        local = sorted(ingest.local_partitions())
        if not local:
            return 503, {"error": "ingest is not ready (no partitions assigned yet)"}, {"Retry-After": "2"}
        assert ingest.partition_of is not None
        local_set = set(local)
        routed = request.headers.get(H_ROUTED) is not None

        mine: list[tuple[int, int, bytes | None, bytes]] = []  # (index, partition, key, value)
        theirs: dict[str, list[tuple[int, int, bytes, bytes]]] = {}  # owner URL -> items
        preset: dict[int, Item] = {}
        for index, item in enumerate(items):
            if item.reasons:
                preset[index] = item
            if item.sensor_id is None:
                # Nothing to key by (it will be quarantined): keep it where this worker decides it.
                mine.append((index, local[next(self._spread) % len(local)], None, item.value))
                continue
            partition = ingest.partition_of(item.sensor_id)
            key = item.sensor_id.encode()
            owner = None if partition in local_set or routed else self._owner(key)
            if owner is None:
                mine.append((index, partition, key, item.value))
            else:
                theirs.setdefault(owner, []).append((index, partition, key, item.value))

        results = await asyncio.gather(
            self._judge_here(mine, local_set, preset, mapping.name if mapping is not None else None),
            *(self._judge_there(url, group, request.headers) for url, group in theirs.items()),
        )
        if any(r is None for r in results):
            return 503, {"error": "could not write to Kafka"}, {"Retry-After": "5"}
        counts = {"accepted": 0, "quarantined": 0, "duplicates": 0, "pending": 0}
        errors: list[dict[str, Any]] = []
        for part in results:
            assert part is not None
            for k in counts:
                counts[k] += int(part[k])
            errors.extend(part["errors"])
        errors.sort(key=lambda e: e["index"])
        summary: dict[str, Any] = {**counts, "errors": errors[:MAX_ERRORS_SHOWN], "received": len(items)}
        if mapping is not None:
            # A mapped message may make many readings: each error also names the message it came from.
            summary["mapping"] = mapping.name
            summary["messages"] = messages
            for error in summary["errors"]:
                error["message"] = items[error["index"]].message
        if counts["quarantined"] + counts["duplicates"] > len(summary["errors"]):
            summary["errors_truncated"] = True
        return 202, summary, None

    def _owner(self, key: bytes) -> str | None:
        """URL of the worker that owns this sensor, or None when it is this one (or unknown)."""
        try:
            url = str(self.ingest.app.router.key_store("sensors", key)).rstrip("/")
        except Exception:  # noqa: BLE001 - assignment metadata not there yet: write it here, report pending
            return None
        own = str(self.ingest.app.conf.canonical_url).rstrip("/")
        return None if url == own else url

    async def _judge_here(
        self,
        placed: list[tuple[int, int, bytes | None, bytes]],
        local: set[int],
        preset: dict[int, Item] | None = None,
        mapping: str | None = None,
    ) -> dict[str, Any] | None:
        """Write items to readings.raw and wait for this worker's verdicts on those it owns.

        ``preset``: items the door already decided (mapped messages that make no reading), by index.
        """
        ingest = self.ingest
        assert ingest.producer is not None
        board = ingest.board
        limit = ingest.isettings.max_line_bytes
        preset = preset or {}
        waited = [p for p in placed if p[1] in local or len(p[3]) > limit or p[0] in preset]
        request_id, pending = board.open(len(waited))
        try:
            box = Outbox(ingest.producer)
            refused: list[tuple[int, list[str]]] = []
            for index, partition, key, value in placed:
                decided = preset.get(index)
                if decided is not None:
                    reasons = decided.reasons
                    ingest.quarantine_at_door(box, "http", value, key, partition, decided.reasons, decided.decoded)
                else:
                    reasons = ingest.refuse(box, "http", value, key, partition)
                if reasons is not None:
                    refused.append((index, reasons))
                    continue
                headers = [(H_SOURCE, b"http")]
                if mapping is not None:
                    headers.append((H_MAPPING, mapping.encode()))
                if partition in local:
                    headers.append((H_REQUEST, board.item_id(request_id, index)))
                box.add(ingest.raw_name, partition, key, value, headers)
            try:
                await box.flush()
            except KafkaError:
                return None
            for index, reasons in refused:
                board.record(request_id, index, QUARANTINED, reasons)
            try:
                await asyncio.wait_for(pending.done.wait(), timeout=ingest.isettings.http_wait_s)
            except TimeoutError:
                pass
            summary = pending.summary()
        finally:
            board.close(request_id)
        # Items owned by a worker we could not route to are in readings.raw: pending, not lost.
        summary["pending"] = int(summary["pending"]) + len(placed) - len(waited)  # type: ignore[call-overload]
        return summary

    async def _judge_there(
        self, url: str, group: list[tuple[int, int, bytes, bytes]], headers: Any
    ) -> dict[str, Any] | None:
        """Ask the worker that owns these sensors; if it cannot be reached, write them here (pending)."""
        body = b"[" + b",".join(value for _, _, _, value in group) + b"]"
        forward = {H_ROUTED: "1", "Content-Type": "application/json"}
        for name in ("Authorization", "X-Flowwatch-Token"):
            if headers.get(name):
                forward[name] = headers[name]
        try:
            client = self._client()
            r = await client.post(url + PATH, content=body, headers=forward)
            if r.status_code == 202:
                answer = r.json()
                for error in answer["errors"]:
                    error["index"] = group[error["index"]][0]
                return answer
            log.warning("routing %d readings to %s got HTTP %d; writing them here", len(group), url, r.status_code)
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            log.warning("routing %d readings to %s failed (%s); writing them here", len(group), url, exc)
        return await self._judge_here(list(group), set())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.ingest.isettings.http_wait_s + 5)
        return self._http


def install(app: Any, endpoint: ReadingsEndpoint) -> None:
    from faust.web import View

    class Readings(View):
        async def post(self, request: Any) -> Any:
            return await endpoint.handle(self, request)

    app.page(PATH, name="ingest-readings")(Readings)
