"""The MQTT door: subscribe, and put every message on readings.raw like any other input.

A message holds one reading, a JSON array or NDJSON (split as for HTTP); a payload that
is none of those still goes to readings.raw as it is, so the pipeline quarantines it with a
reason instead of it vanishing here. An item larger than ``FLOWWATCH_INGEST_MAX_LINE_BYTES``
(or a payload above ``FLOWWATCH_INGEST_HTTP_MAX_BODY_BYTES``) goes straight to quarantine
(``too_large``), its text cut to fit.

**Acknowledged only once in Kafka.** The bridge acknowledges a QoS 1 message to the broker
(PUBACK, paho's manual acks) only after all of its items were written to readings.raw (or
quarantine), in the order the messages came. A failed write drops the connection without
acknowledging: the broker sends the unacknowledged messages again when the bridge reconnects
with its persistent session (a fixed client id, clean_session false — the default), so a
Kafka outage loses nothing. Messages published while ingest is down wait in that session too.

The connection is retried forever with exponential backoff (0.5 s doubling up to
``FLOWWATCH_INGEST_MQTT_BACKOFF_MAX_S``, with jitter). ``mqtts://`` connects with TLS
(``FLOWWATCH_INGEST_MQTT_CA_FILE``, and a client certificate when the broker asks for one).
With several ingest workers, give each its own client id and subscribe to a shared
subscription (``$share/ingest/flowwatch/readings/#``) so each message reaches one of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from services.ingest import metrics as m
from services.ingest.mappings import PayloadMapping
from services.ingest.payloads import Item, PayloadError, split_items
from services.ingest.pipeline import H_MAPPING, H_SOURCE
from shared.batching import Outbox

if TYPE_CHECKING:
    from services.ingest.settings import IngestSettings
    from services.ingest.worker import Ingest

log = logging.getLogger(__name__)

#: Messages read but not yet acknowledged: the MQTT 5 receive maximum the broker must respect
#: (its own default for 3.1.1 clients, 20, would pace ingest at 20 messages per Kafka round trip).
#: aiomqtt's own queue stays unbounded: it would discard what does not fit, and a discarded
#: message is never acknowledged, so it would hold a place in this window until a reconnect.
MAX_UNACKED = 1000
#: How long the broker keeps the session (subscription, unacknowledged messages) of a disconnected ingest.
SESSION_EXPIRY_S = 7 * 24 * 3600


def parse_mqtt_url(url: str, isettings: IngestSettings | None = None) -> dict[str, Any]:
    """``mqtt://user:pass@host:port`` or ``mqtts://...`` -> aiomqtt.Client keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", "", "mqtts", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt://host:port or mqtts://host:port)")
    tls = parts.scheme in ("mqtts", "ssl")
    kwargs: dict[str, Any] = {
        "hostname": parts.hostname or "127.0.0.1",
        "port": parts.port or (8883 if tls else 1883),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    if tls:
        kwargs["tls_context"] = tls_context(isettings)
    return kwargs


def tls_context(isettings: IngestSettings | None) -> ssl.SSLContext:
    """A verifying TLS context: the configured CA (else the system's), the client certificate if any."""
    context = ssl.create_default_context(cafile=(isettings.mqtt_ca_file or None) if isettings else None)
    if isettings is not None and isettings.mqtt_cert_file:
        context.load_cert_chain(isettings.mqtt_cert_file, isettings.mqtt_key_file or None)
    return context


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or (8883 if parts.scheme in ('mqtts', 'ssl') else 1883)}"
    return f"{parts.scheme}://{'***@' if parts.username else ''}{host}"


def client_id(isettings: IngestSettings, topic_prefix: str) -> str:
    """The configured id, else one derived from stable names (the same after a restart, unlike a pid)."""
    if isettings.mqtt_client_id:
        return isettings.mqtt_client_id
    if not isettings.mqtt_persistent:
        return f"flowwatch-ingest-{uuid.uuid4().hex[:12]}"
    return f"{topic_prefix}flowwatch-ingest"


def connect_properties(persistent: bool) -> Properties:
    """MQTT 5 CONNECT properties: how many unacknowledged messages we take, how long the session lives."""
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = MAX_UNACKED
    if persistent:
        props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props


class MqttBridge:
    def __init__(self, ingest: Ingest, url: str) -> None:
        self.ingest = ingest
        self.url = url
        self.connected = False
        self.received = 0
        self.acked = 0
        self.failures = 0
        self.last_error = ""
        self._spread = 0
        #: (topic filter, mapping) in the mappings file's order; a message on none of them is native.
        self.filters = [(f, mp) for mp in ingest.mappings.values() for f in mp.mqtt]
        self._routes: dict[str, PayloadMapping | None] = {}

    def check(self) -> tuple[bool, str]:
        # MQTT down does not make ingest unready: Kafka and HTTP inputs still work.
        if self.connected:
            return True, f"subscribed to {self.ingest.isettings.mqtt_topic}"
        return True, f"not connected ({self.last_error or 'connecting'}); retrying"

    async def run(self) -> None:
        isettings = self.ingest.isettings
        backoff = 0.5
        identifier = client_id(isettings, self.ingest.settings.topic_prefix)
        kwargs = parse_mqtt_url(self.url, isettings)
        while True:
            try:
                await self.ingest.start()
                client = aiomqtt.Client(
                    **kwargs,
                    identifier=identifier,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=not isettings.mqtt_persistent,
                    properties=connect_properties(isettings.mqtt_persistent),
                    keepalive=30,
                    timeout=10,
                )
                # paho acknowledges on receipt unless told otherwise; we acknowledge once Kafka has the message.
                client._client.manual_ack_set(True)
                async with client:
                    await client.subscribe(isettings.mqtt_topic, qos=isettings.mqtt_qos)
                    for topic_filter, _ in self.filters:
                        await client.subscribe(topic_filter, qos=isettings.mqtt_qos)
                    self.connected = True
                    m.MQTT_CONNECTED.set(1)
                    backoff = 0.5
                    log.info("mqtt subscribed", extra={"broker": redact(self.url), "filter": isettings.mqtt_topic})
                    await self._pump(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect later
                self.failures += 1
                while isinstance(exc, ExceptionGroup):  # from the read/acknowledge task group
                    exc = exc.exceptions[0]
                self.last_error = f"{type(exc).__name__}: {exc}"
                m.MQTT_RECONNECTS.inc()
                log.warning("mqtt connection lost or refused; retrying in %.1fs: %s", backoff, self.last_error)
            finally:
                self.connected = False
                m.MQTT_CONNECTED.set(0)
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, isettings.mqtt_backoff_max_s)

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Read messages and acknowledge each once written, in order; a failed write ends the connection."""
        written: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue(MAX_UNACKED)

        async def read() -> None:
            async for message in client.messages:
                await written.put((message, await self.handle(str(message.topic), message.payload)))

        async def acknowledge() -> None:
            paho = client._client
            while True:
                message, acked = await written.get()
                await acked  # a KafkaError ends the connection unacknowledged: the broker sends it again
                if message.qos > 0:
                    paho.ack(message.mid, message.qos)
                self.acked += 1

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(acknowledge())

    async def handle(self, topic: str, payload: Any) -> asyncio.Future[Any]:
        """Start writing one MQTT message's items; the future resolves when Kafka has all of them."""
        ingest = self.ingest
        assert ingest.producer is not None and ingest.partition_of is not None
        isettings = ingest.isettings
        self.received += 1
        m.MQTT_MESSAGES.inc()
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        elif payload is None:
            payload = b""
        elif not isinstance(payload, (bytes, bytearray)):
            payload = str(payload).encode()
        payload = bytes(payload)
        items: list[Item]
        if len(payload) > isettings.http_max_body_bytes:
            items = [Item(payload, None)]  # quarantined whole as too_large
        else:
            try:
                items = split_items(payload, isettings.http_max_items, isettings.max_field_chars)
            except PayloadError:
                items = [Item(payload, None)]
        headers = [(H_SOURCE, b"mqtt"), ("fw-mqtt-topic", topic.encode("utf-8", "replace")[:256])]
        mapping = self.mapping_for(topic)
        if mapping is not None:
            items = ingest.map_items(mapping, items, topic)
            headers.append((H_MAPPING, mapping.name.encode()))
        box = Outbox(ingest.producer)
        ingest.write_items(box, "mqtt", items, headers, self._spread)
        self._spread += len(items)
        return await box.send()

    def mapping_for(self, topic: str) -> PayloadMapping | None:
        """The mapping whose topic filter matches (the first in the mappings file), None for native readings."""
        if not self.filters:
            return None
        hit = self._routes.get(topic, False)
        if hit is False:
            hit = next((mp for f, mp in self.filters if topic_matches_sub(f, topic)), None)
            if len(self._routes) >= 10_000:  # topics are chosen by publishers: a bounded memo
                self._routes.clear()
            self._routes[topic] = hit
        return hit  # type: ignore[return-value]
