"""The MQTT door: subscribe, and put every message on readings.raw like any other input.

A message holds one reading, a JSON array or NDJSON (split as for HTTP); a payload that
is none of those still goes to readings.raw as it is, so the agent quarantines it with a
reason instead of it vanishing here. The connection is retried forever with exponential
backoff (0.5 s doubling up to ``FLOWWATCH_INGEST_MQTT_BACKOFF_MAX_S``, with jitter).

With a fixed ``FLOWWATCH_INGEST_MQTT_CLIENT_ID`` the session is persistent (QoS 1 messages
published while ingest is down are kept by the broker). With several ingest workers,
subscribe to a shared subscription (``$share/ingest/flowwatch/readings/#``) so each message
reaches one of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from services.ingest import metrics as m
from services.ingest.payloads import PayloadError, split_items
from services.ingest.pipeline import H_SOURCE

if TYPE_CHECKING:
    from services.ingest.engine import Ingest

log = logging.getLogger(__name__)


def parse_mqtt_url(url: str) -> dict[str, Any]:
    """``mqtt://user:pass@host:port`` -> aiomqtt.Client keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt://host:port)")
    return {
        "hostname": parts.hostname or "127.0.0.1",
        "port": parts.port or 1883,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 1883}"
    return f"{parts.scheme}://{'***@' if parts.username else ''}{host}"


class MqttBridge:
    def __init__(self, ingest: Ingest, url: str) -> None:
        self.ingest = ingest
        self.url = url
        self.connected = False
        self.received = 0
        self.failures = 0
        self.last_error = ""
        self._spread = 0

    def check(self) -> tuple[bool, str]:
        # MQTT down does not make ingest unready: Kafka and HTTP inputs still work.
        if self.connected:
            return True, f"subscribed to {self.ingest.isettings.mqtt_topic}"
        return True, f"not connected ({self.last_error or 'connecting'}); retrying"

    async def run(self) -> None:
        isettings = self.ingest.isettings
        backoff = 0.5
        fixed_id = isettings.mqtt_client_id
        identifier = fixed_id or f"flowwatch-ingest-{socket.gethostname()}-{os.getpid()}"
        kwargs = parse_mqtt_url(self.url)
        while True:
            try:
                await self.ingest.ensure_started()
                async with aiomqtt.Client(
                    **kwargs, identifier=identifier, clean_session=not fixed_id, keepalive=30, timeout=10
                ) as client:
                    await client.subscribe(isettings.mqtt_topic, qos=isettings.mqtt_qos)
                    self.connected = True
                    m.MQTT_CONNECTED.set(1)
                    backoff = 0.5
                    log.info("mqtt subscribed", extra={"broker": redact(self.url), "filter": isettings.mqtt_topic})
                    async for message in client.messages:
                        await self.handle(str(message.topic), message.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect later
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                m.MQTT_RECONNECTS.inc()
                log.warning("mqtt connection lost or refused; retrying in %.1fs: %s", backoff, self.last_error)
            finally:
                self.connected = False
                m.MQTT_CONNECTED.set(0)
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, isettings.mqtt_backoff_max_s)

    async def handle(self, topic: str, payload: Any) -> int:
        """Put one MQTT message's readings on readings.raw; returns how many messages that made."""
        ingest = self.ingest
        assert ingest.producer is not None and ingest.partition_of is not None
        self.received += 1
        m.MQTT_MESSAGES.inc()
        if isinstance(payload, str):
            payload = payload.encode()
        elif payload is None:
            payload = b""
        elif not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        try:
            items = [(i.value, i.sensor_id) for i in split_items(bytes(payload), ingest.isettings.http_max_items)]
        except PayloadError:
            items = [(bytes(payload), None)]
        headers = [(H_SOURCE, b"mqtt"), ("fw-mqtt-topic", topic.encode("utf-8", "replace"))]
        partitions = ingest.partition_of.partitions
        for value, sensor_id in items:
            if sensor_id is not None:
                key: bytes | None = sensor_id.encode()
                partition = ingest.partition_of(sensor_id)
            else:
                key = None
                self._spread += 1
                partition = self._spread % partitions
            future = await ingest.producer.send(
                ingest.raw_name, value or b"", key=key, partition=partition, headers=headers
            )
            future.add_done_callback(_log_failure)
        return len(items)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("mqtt reading could not be written to readings.raw: %s", future.exception())
