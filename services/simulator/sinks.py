"""Where the readings go: Kafka, the ingest HTTP endpoint, MQTT, a file, or stdout.

Every sink counts what it was given (``sent``) and what the other side acknowledged
(``delivered``): a broker ack, a 2xx response, an MQTT PUBACK (QoS 1), a write.
``flush()`` waits for every outstanding acknowledgement, so after it the counts are
final and a run's report says exactly what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

log = logging.getLogger("flowwatch.simulator")


@dataclass
class SinkStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    bytes: int = 0
    #: Sink-specific detail (HTTP: what ingest answered).
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "bytes": self.bytes,
            **self.detail,
        }


class Sink(Protocol):
    name: str
    target: str
    stats: SinkStats

    async def start(self) -> None: ...

    async def send(self, sensors: list[int], payloads: list[bytes]) -> None: ...

    async def flush(self) -> None: ...

    async def stop(self) -> None: ...


class SinkError(RuntimeError):
    """The sink cannot go on (no such topic, wrong token...): the run stops with this message."""


# ---- Kafka ----------------------------------------------------------------------------------------------------------


class KafkaSink:
    """Batched producer: one record batch per partition, key = sensor_id, partitioned like the Java client."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        sensor_ids: list[str],
        linger_ms: int = 20,
        batch_bytes: int = 1_048_576,
        max_in_flight: int = 64,
        retry_for_s: float = 300.0,
    ):
        self.bootstrap_servers = bootstrap_servers
        self.topic = self.target = topic
        self.keys = [s.encode() for s in sensor_ids]
        self.linger_ms = linger_ms
        self.batch_bytes = batch_bytes
        self.max_in_flight = max_in_flight
        # How long a batch is offered to a broker that is away before it counts as failed.
        self.retry_for_s = retry_for_s
        self.stats = SinkStats()
        self.producer: Any = None
        self._partition_of: list[int] = []
        self._in_flight: deque[tuple[asyncio.Future, int, list[tuple[bytes, bytes]]]] = deque()
        self._side: list[asyncio.Future] = []
        self.side_failed = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError
        from aiokafka.partitioner import murmur2

        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id="flowwatch-simulator",
            linger_ms=self.linger_ms,
            max_batch_size=self.batch_bytes,
            max_request_size=max(self.batch_bytes * 2, 1_048_576),
            acks="all",
            request_timeout_ms=30_000,
        )
        try:
            await self.producer.start()
            # The broker never auto-creates topics here: say so at once rather than retrying for a while.
            await self.producer.client.force_metadata_update()
            if self.topic not in self.producer.client.cluster.topics():
                raise SinkError(f"topic {self.topic} does not exist: create it with `python -m shared.topics create`")
            partitions = await asyncio.wait_for(self.producer.partitions_for(self.topic), 15)
        except SinkError:
            await self.producer.stop()
            raise
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.producer.stop()
            raise SinkError(
                f"cannot produce to {self.topic} on {self.bootstrap_servers}: {type(exc).__name__}: {exc}"
                " (is the stack up, and were the topics created with `python -m shared.topics create`?)"
            ) from None
        parts = sorted(partitions)
        # The Java client's default partitioner, computed once per sensor rather than once per message.
        self._partition_of = [parts[(murmur2(k) & 0x7FFFFFFF) % len(parts)] for k in self.keys]

    async def send(self, sensors: list[int], payloads: list[bytes]) -> None:
        per_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for s, payload in zip(sensors, payloads, strict=True):
            per_partition.setdefault(self._partition_of[s], []).append((self.keys[s], payload))
            self.stats.sent += 1
            self.stats.bytes += len(payload)
        for part, records in per_partition.items():
            await self._submit(part, records)

    async def _submit(self, partition: int, records: list[tuple[bytes, bytes]]) -> None:
        """Sends ``records`` in as many producer batches as they need; each batch is tracked until acknowledged."""
        builder, chunk = self.producer.create_batch(), []
        for key, value in records:
            if builder.append(key=key, value=value, timestamp=None) is None:
                if not chunk:
                    raise SinkError(f"a single reading of {len(value)} bytes does not fit in a producer batch")
                await self._send_batch(builder, partition, chunk)
                builder, chunk = self.producer.create_batch(), []
                builder.append(key=key, value=value, timestamp=None)
            chunk.append((key, value))
        if chunk:
            await self._send_batch(builder, partition, chunk)

    async def _send_batch(self, builder: Any, partition: int, chunk: list[tuple[bytes, bytes]]) -> None:
        builder.close()
        future = await self._until_accepted(builder, partition, chunk)
        self._in_flight.append((future, partition, chunk))
        while len(self._in_flight) > self.max_in_flight:
            await self._settle(*self._in_flight.popleft())

    async def _until_accepted(self, builder: Any, partition: int, chunk: list[tuple[bytes, bytes]]) -> asyncio.Future:
        """The producer's future for the batch; while the broker is away the producer's queue is full: wait."""
        from aiokafka.errors import KafkaError

        delay, deadline = 0.5, time.monotonic() + self.retry_for_s
        while True:
            try:
                return await self.producer.send_batch(builder, self.topic, partition=partition)
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise SinkError(f"kafka has not taken a batch for {self.retry_for_s:.0f}s: {exc}") from None
                log.warning("kafka did not take a batch of %d readings (%s); trying again", len(chunk), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            builder = self._rebuild(chunk)

    def _rebuild(self, chunk: list[tuple[bytes, bytes]]) -> Any:
        builder = self.producer.create_batch()
        for key, value in chunk:
            builder.append(key=key, value=value, timestamp=None)
        builder.close()
        return builder

    async def _settle(self, future: asyncio.Future, partition: int, chunk: list[tuple[bytes, bytes]]) -> None:
        """Waits for a batch's acknowledgement; a batch the broker did not take (it was away) is sent again.

        Kafka being down for a while must not lose readings the simulator was asked to send: the
        report's ``delivered`` counts acknowledged readings, and a resent batch may be written twice
        (at-least-once; ingest counts the repeats as duplicates).
        """
        from aiokafka.errors import KafkaError

        delay, deadline = 0.5, time.monotonic() + self.retry_for_s
        while True:
            try:
                await future
                self.stats.delivered += len(chunk)
                return
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    self.stats.failed += len(chunk)
                    log.warning("kafka batch of %d readings failed for %.0fs: %s", len(chunk), self.retry_for_s, exc)
                    return
                self.stats.detail["resent_batches"] = self.stats.detail.get("resent_batches", 0) + 1
                log.warning("kafka batch of %d readings failed (%s); sending it again", len(chunk), exc)
            except Exception as exc:  # noqa: BLE001 - anything else is counted and reported, the run goes on
                self.stats.failed += len(chunk)
                log.warning("kafka batch of %d readings failed: %s: %s", len(chunk), type(exc).__name__, exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            future = await self._until_accepted(self._rebuild(chunk), partition, chunk)

    async def require_topic(self, topic: str) -> None:
        await self.producer.client.force_metadata_update()
        if topic not in self.producer.client.cluster.topics():
            raise SinkError(f"topic {topic} does not exist: create it with `python -m shared.topics create`")

    async def produce_one(self, topic: str, key: bytes, value: bytes) -> None:
        """A single record to another topic (labels); acknowledged by :meth:`flush`, counted apart."""
        self._side.append(await self.producer.send(topic, value, key=key))

    async def flush(self) -> None:
        while self._in_flight:
            await self._settle(*self._in_flight.popleft())
        side, self._side = self._side, []
        for future in side:
            try:
                await future
            except Exception as exc:  # noqa: BLE001 - counted; a lost label must not stop the readings
                self.side_failed += 1
                log.warning("kafka record to a side topic failed: %s: %s", type(exc).__name__, exc)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.flush()
            await self.producer.stop()
            self.producer = None


# ---- HTTP -----------------------------------------------------------------------------------------------------------


class HttpSink:
    """Batches to ingest's ``POST /v1/readings``: NDJSON (default) or JSON arrays.

    Retries transport errors, 429 and 5xx with backoff; halves a batch on 413; stops the run
    on 401/403. A 400/422 is ingest's verdict on what it was sent (a body it cannot parse):
    delivered, and counted as ``rejected``. In JSON-array mode a payload that is not JSON
    cannot share an array with good ones, so it goes alone, the way a broken device posts it.
    """

    name = "http"
    FORMATS = ("ndjson", "json")

    def __init__(
        self,
        url: str,
        token: str = "",
        batch_size: int = 500,
        concurrency: int = 4,
        timeout_s: float = 30.0,
        retries: int = 5,
        fmt: str = "ndjson",
    ):
        if fmt not in self.FORMATS:
            raise ValueError(f"HTTP body format must be one of {self.FORMATS}")
        self.url = self.target = url
        self.token = token
        self.batch_size = max(1, batch_size)
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.retries = retries
        self.fmt = fmt
        self.stats = SinkStats(
            detail={"accepted": 0, "quarantined": 0, "duplicates": 0, "pending": 0, "rejected": 0, "status": {}}
        )
        self.client: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._fatal: SinkError | None = None

    async def start(self) -> None:
        import httpx

        headers = {"user-agent": "flowwatch-simulator"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self.client = httpx.AsyncClient(headers=headers, timeout=self.timeout_s)

    async def send(self, sensors: list[int], payloads: list[bytes]) -> None:
        if self._fatal:
            raise self._fatal
        for i in range(0, len(payloads), self.batch_size):
            chunk = payloads[i : i + self.batch_size]
            self.stats.sent += len(chunk)
            if self.fmt == "json":
                good, broken = [], []
                for p in chunk:
                    (good if _is_json(p) else broken).append(p)
                bodies = [(good, True)] if good else []
                bodies += [([p], False) for p in broken]
            else:
                bodies = [(chunk, False)]
            for items, as_array in bodies:
                await self._slots.acquire()
                task = asyncio.create_task(self._post(items, as_array))
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    def _body(self, items: list[bytes], as_array: bool) -> tuple[bytes, str]:
        if self.fmt == "ndjson":
            return b"\n".join(items) + b"\n", "application/x-ndjson"
        if as_array:
            return b"[" + b",".join(items) + b"]", "application/json"
        return items[0], "application/json"

    async def _post(self, items: list[bytes], as_array: bool) -> None:
        import httpx

        body, content_type = self._body(items, as_array)
        why = ""
        for attempt in range(self.retries + 1):
            try:
                response = await self.client.post(self.url, content=body, headers={"content-type": content_type})
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                codes = self.stats.detail["status"]
                codes[str(status)] = codes.get(str(status), 0) + 1
                if status < 300:
                    self._count(response, len(items))
                    self.stats.bytes += len(body)
                    return
                if status == 413 and len(items) > 1:
                    half = len(items) // 2
                    await self._post(items[:half], as_array)
                    await self._post(items[half:], as_array)
                    return
                if status in (401, 403):
                    self._fatal = SinkError(f"ingest refused the token ({status}): set FLOWWATCH_INGEST_TOKEN")
                    self.stats.failed += len(items)
                    return
                if status in (400, 422):
                    # Ingest read the body and refused it: its verdict, and the same bytes get the same answer.
                    self.stats.delivered += len(items)
                    self.stats.bytes += len(body)
                    self.stats.detail["rejected"] += len(items)
                    return
                if status < 500 and status != 429:
                    self.stats.failed += len(items)
                    log.warning("ingest answered %d to a batch of %d: %s", status, len(items), response.text[:300])
                    return
                why = f"HTTP {status}"
            if attempt < self.retries:
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        self.stats.failed += len(items)
        log.warning("batch of %d readings failed after %d attempts: %s", len(items), self.retries + 1, why)

    def _count(self, response: Any, n: int) -> None:
        self.stats.delivered += n
        try:
            answer = response.json()
        except ValueError:
            return
        if isinstance(answer, dict):
            for key in ("accepted", "quarantined", "duplicates", "pending"):
                if isinstance(answer.get(key), int):
                    self.stats.detail[key] += answer[key]

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._fatal:
            raise self._fatal

    async def stop(self) -> None:
        if self.client is not None:
            try:
                await self.flush()
            finally:
                await self.client.aclose()
                self.client = None


def _is_json(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


# ---- MQTT -----------------------------------------------------------------------------------------------------------


class MqttSink:
    """One message per reading to ``<root>/<site>/<sensor_id>``."""

    name = "mqtt"

    def __init__(
        self,
        url: str,
        sensor_ids: list[str],
        sites: list[str],
        root: str = "flowwatch/readings",
        qos: int = 1,
        chunk: int = 500,
    ):
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 1883
        self.username, self.password = parsed.username, parsed.password
        self.target = f"mqtt://{self.host}:{self.port}/{root.rstrip('/')}/#"
        self.topics = [f"{root.rstrip('/')}/{site}/{sid}" for sid, site in zip(sensor_ids, sites, strict=True)]
        self.qos = qos
        self.chunk = chunk
        self.stats = SinkStats()
        self.client: Any = None

    async def start(self) -> None:
        import aiomqtt

        self.client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"flowwatch-simulator-{id(self):x}",
            max_inflight_messages=1000,
        )
        try:
            await self.client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise SinkError(f"cannot connect to MQTT at {self.host}:{self.port}: {exc}") from None

    async def send(self, sensors: list[int], payloads: list[bytes]) -> None:
        for i in range(0, len(payloads), self.chunk):
            pairs = list(zip(sensors[i : i + self.chunk], payloads[i : i + self.chunk], strict=True))
            self.stats.sent += len(pairs)
            results = await asyncio.gather(
                *(self.client.publish(self.topics[s], p, qos=self.qos, timeout=30) for s, p in pairs),
                return_exceptions=True,
            )
            for (_, p), r in zip(pairs, results, strict=True):
                if isinstance(r, BaseException):
                    self.stats.failed += 1
                else:
                    self.stats.delivered += 1
                    self.stats.bytes += len(p)

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None


# ---- files ----------------------------------------------------------------------------------------------------------


class FileSink:
    """Raw payloads, one per line (NDJSON; corrupt payloads are written as they are), or to stdout."""

    name = "file"

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.target = str(self.path) if self.path else "stdout"
        self.stats = SinkStats()
        self._fh: Any = None

    async def start(self) -> None:
        if self.path is None:
            self._fh = sys.stdout.buffer
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")

    async def send(self, sensors: list[int], payloads: list[bytes]) -> None:
        if not payloads:
            return
        data = b"\n".join(payloads) + b"\n"
        self._fh.write(data)
        self.stats.sent += len(payloads)
        self.stats.delivered += len(payloads)
        self.stats.bytes += len(data)

    async def flush(self) -> None:
        self._fh.flush()

    async def stop(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.path is not None:
                self._fh.close()
            self._fh = None
