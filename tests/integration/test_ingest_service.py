"""Ingest on the real stack: every door reaches readings.clean, mixed input is split exactly,
HTTP answers the truth (and never 5xx), sensors go silent and come back, Redis has the latest.

One worker serves the whole module (starting one costs ~10 s); each test uses its own sensor ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cache import Cache
from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import ServiceProcess, collect, delete_topics, produce

TOKEN = "test-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024
SENSOR_TTL_S = 10


@pytest_asyncio.fixture(scope="module")
async def ingest(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("ingest")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    s = stack.replace(topic_prefix=prefix, data_dir=tmp / "data", model_dir=tmp / "models", partitions=2)
    await create_all(s, out=open("/dev/null", "w"))
    env = {
        "FLOWWATCH_INGEST_TOKEN": TOKEN,
        "FLOWWATCH_INGEST_MQTT_TOPIC": f"flowwatch-test/{prefix}readings/#",
        "FLOWWATCH_INGEST_LATENESS_S": "600",
        "FLOWWATCH_INGEST_SILENCE_MIN_S": "2",
        "FLOWWATCH_INGEST_SILENCE_FACTOR": "2",
        "FLOWWATCH_INGEST_SILENCE_CHECK_S": "0.5",
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
        "FLOWWATCH_INGEST_CACHE_FLUSH_S": "0.3",
        "FLOWWATCH_INGEST_HTTP_MAX_BODY_BYTES": str(MAX_BODY),
        "FLOWWATCH_INGEST_SENSOR_TTL_S": str(SENSOR_TTL_S),
        "FLOWWATCH_INGEST_HTTP_MAX_CONCURRENT": "2",
    }
    proc = ServiceProcess("ingest", s, extra_env=env)
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        await asyncio.to_thread(_wait_mqtt, proc)
        yield proc
    finally:
        proc.stop()
        await delete_topics(s)


def _wait_mqtt(proc: ServiceProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{proc.url}/ready", timeout=2).json().get("mqtt", {}).get("detail", "").startswith("subscribed"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"ingest did not subscribe to MQTT:\n{proc.tail()}")


def now_ms() -> int:
    return int(time.time() * 1000)


def reading(sensor: str, ts: int, **changes: Any) -> dict[str, Any]:
    body = {
        "sensor_id": sensor,
        "ts": ts,
        "site": "north",
        "zone": "north-dma1",
        "utility": "water",
        "asset": "pipe",
        "values": {"pressure": 430.0, "flow": 110.0},
        "units": {"pressure": "kPa", "flow": "m3/h"},
    }
    body.update(changes)
    return body


def metric(proc: ServiceProcess, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def mine(tag: str) -> Callable[[Any], bool]:
    return lambda m: tag in orjson.dumps(m).decode()


# --- the three doors --------------------------------------------------------------------------


async def test_http_mqtt_and_kafka_readings_reach_clean(ingest: ServiceProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    s = ingest.settings
    t = now_ms() - 1000
    async with httpx.AsyncClient(base_url=ingest.url, headers=AUTH, timeout=15) as client:
        r = await client.post("/v1/readings", content=orjson.dumps(reading(f"http-{tag}", t)))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1
    async with aiomqtt.Client("127.0.0.1", int(s.mqtt_url.rsplit(":", 1)[1])) as mqtt:
        payload = reading(f"mqtt-{tag}", t, values={"pressure": 62.5, "flow": 110.0}, units={"pressure": "psi"})
        await mqtt.publish(f"flowwatch-test/{s.topic_prefix}readings/site1", orjson.dumps(payload), qos=1)
    await produce(s, "readings.raw", [(f"kafka-{tag}".encode(), reading(f"kafka-{tag}", t))])

    wanted = {f"http-{tag}": "http", f"mqtt-{tag}": "mqtt", f"kafka-{tag}": "kafka"}
    got = await collect(s, "readings.clean", lambda ms: wanted.keys() <= {m["sensor_id"] for m in ms})
    by_sensor = {m["sensor_id"]: m for m in got if m["sensor_id"] in wanted}
    assert {k: v["source"] for k, v in by_sensor.items()} == wanted
    mqtt_reading = by_sensor[f"mqtt-{tag}"]
    assert mqtt_reading["values"]["pressure"] == pytest.approx(430.92, abs=0.01)  # psi -> kPa
    assert mqtt_reading["units"]["pressure"] == "kPa" and mqtt_reading["ts"] == t


# --- exact split ------------------------------------------------------------------------------


async def test_a_mixed_kafka_batch_is_split_exactly(ingest: ServiceProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    s = ingest.settings
    t = now_ms() - 60_000
    a, b, c, d, e, f = (f"mix-{tag}-{x}" for x in "abcdef")
    nan = (
        b'{"sensor_id":"%s","ts":%d,"site":"n","zone":"z","utility":"water","asset":"pipe","values":{"pressure":NaN}}'
        % (d.encode(), t)
    )
    messages: list[tuple[bytes | None, Any]] = [
        (a.encode(), reading(a, t)),
        (a.encode(), reading(a, t + 1000)),
        (a.encode(), reading(a, t + 1000)),  # duplicate
        (b.encode(), reading(b, t)),
        (b.encode(), reading(b, t - 601_000)),  # later than b's newest by more than the lateness
        (None, b'{"sensor_id": "%s", "ts": ' % c.encode()),  # truncated
        (c.encode(), reading(c, t, values={"pressure": 99_999.0})),  # out of range
        (d.encode(), nan),
        (None, reading(e, t)),  # unkeyed: forwarded to its sensor's partition if needed
        (b"not-the-sensor", reading(f, t)),  # keyed by something else: likewise
    ]
    duplicates_before = metric(ingest, "flowwatch_ingest_duplicates_total")
    await produce(s, "readings.raw", messages)

    clean = [m for m in await collect(s, "readings.clean", lambda ms: sum(map(mine(tag), ms)) >= 5) if mine(tag)(m)]
    quarantined = [
        m for m in await collect(s, "readings.quarantine", lambda ms: sum(map(mine(tag), ms)) >= 4) if mine(tag)(m)
    ]
    await asyncio.sleep(1.0)  # anything extra would show up now
    clean = [m for m in await collect(s, "readings.clean", lambda ms: False, timeout=1) if mine(tag)(m)]
    duplicates = metric(ingest, "flowwatch_ingest_duplicates_total") - duplicates_before

    assert sorted((m["sensor_id"], m["ts"]) for m in clean) == sorted([(a, t), (a, t + 1000), (b, t), (e, t), (f, t)])
    reasons = sorted(q["reasons"][0].split(":")[0] for q in quarantined)
    assert reasons == ["late", "malformed_json", "non_finite", "out_of_range"]
    assert duplicates == 1
    assert len(clean) + len(quarantined) + duplicates == len(messages)
    truncated = next(q for q in quarantined if q["reasons"][0].startswith("malformed_json"))
    assert truncated["payload"] == f'{{"sensor_id": "{c}", "ts": ' and truncated["source"] == "kafka"
    assert all(q["received_ms"] > 0 for q in quarantined)


async def test_http_answers_with_the_verdict_of_each_reading(ingest: ServiceProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    t = now_ms() - 1000
    g, h, k = f"h-{tag}-g", f"h-{tag}-h", f"h-{tag}-k"
    body = [
        reading(g, t),
        reading(g, t),  # duplicate of the first
        "not a reading",
        reading(h, t, values={"pressure": 99_999.0}),
        reading(k, t, values={"pressure": 60.0, "flow": 110.0}, units={"pressure": "psi"}),
    ]
    async with httpx.AsyncClient(base_url=ingest.url, headers=AUTH, timeout=15) as client:
        r = await client.post("/v1/readings", content=orjson.dumps(body))
        assert r.status_code == 202, r.text
        answer = r.json()
        assert (answer["accepted"], answer["quarantined"], answer["duplicates"], answer["pending"]) == (2, 2, 1, 0)
        assert [(e["index"], e["status"]) for e in answer["errors"]] == [
            (1, "duplicate"),
            (2, "quarantined"),
            (3, "quarantined"),
        ]
        assert answer["errors"][1]["reasons"] == ["not_an_object: got str"]
        assert answer["errors"][2]["reasons"][0].startswith("out_of_range: pressure=")

        ndjson = b"\n".join(
            [
                orjson.dumps(reading(f"h-{tag}-n", t)),
                b'{"sensor_id":"x","ts":1,"site":"s","zone":"z","utility":"gas","asset":"pipe","values":{"flow":NaN}}',
                b"{broken",
            ]
        )
        r = await client.post("/v1/readings", content=ndjson, headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 202 and (r.json()["accepted"], r.json()["quarantined"]) == (1, 2)

        r = await client.post("/v1/readings", content=b"{oops")
        assert r.status_code == 400 and "not JSON" in r.json()["error"]
        r = await client.post("/v1/readings", content=b"[]")
        assert r.status_code == 202 and r.json()["accepted"] == 0
        r = await client.post("/v1/readings", content=b"x" * (MAX_BODY + 1))
        assert r.status_code == 413

        r = await client.post("/v1/readings", content=orjson.dumps(reading(g, t)), headers={"Authorization": ""})
        assert r.status_code == 401
        r = await client.post(
            "/v1/readings", content=orjson.dumps(reading(g, t)), headers={"Authorization": "Bearer no"}
        )
        assert r.status_code == 403
    log = ingest.log_path.read_text()
    assert TOKEN not in log


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=15,
)
near = st.builds(
    lambda sid, values, ts: {
        "sensor_id": sid,
        "ts": ts,
        "site": "s",
        "zone": "z",
        "utility": "water",
        "asset": "pipe",
        "values": values,
    },
    st.sampled_from(["prop-a", "prop-b"]) | st.text(max_size=5),
    st.dictionaries(st.sampled_from(["pressure", "flow", "x"]), st.floats() | st.text(max_size=3), max_size=3),
    st.sampled_from([0, 1, 10**12, "2024-01-01T00:00:00Z"]) | st.integers(-(2**63), 2**63 - 1),
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    st.lists(near | json_values, max_size=8).map(orjson.dumps),
    st.lists(near.map(orjson.dumps) | st.binary(max_size=30), min_size=2, max_size=6).map(b"\n".join),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_http_never_fails_and_accounts_for_every_item(ingest: ServiceProcess, body: bytes) -> None:
    r = httpx.post(f"{ingest.url}/v1/readings", content=body, headers=AUTH, timeout=20)
    assert r.status_code in (202, 400, 413), (r.status_code, r.text)
    answer = r.json()
    if r.status_code == 202:
        assert answer["pending"] == 0, answer
        assert answer["accepted"] + answer["quarantined"] + answer["duplicates"] == answer["received"]
    else:
        assert answer["error"]


# --- sensor state -----------------------------------------------------------------------------


async def test_sensor_goes_silent_comes_back_and_is_cached(ingest: ServiceProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    s = ingest.settings
    sensor = f"quiet-{tag}"
    t = now_ms()
    await produce(
        s, "readings.raw", [(sensor.encode(), reading(sensor, t - 2000)), (sensor.encode(), reading(sensor, t - 1000))]
    )

    cache = Cache(s.redis_url, prefix=s.topic_prefix)
    try:
        deadline = time.monotonic() + 15
        cached = None
        while cached is None and time.monotonic() < deadline:
            cached = await cache.get("sensor", sensor)
            await asyncio.sleep(0.2)
        assert cached is not None
        assert cached["reading"]["ts"] == t - 1000 and cached["stats"]["count"] == 2
    finally:
        await cache.close()

    def kinds(ms: list[Any]) -> list[str]:
        return [m["kind"] for m in ms if m["sensor_id"] == sensor]

    events = await collect(s, "sensor.events", lambda ms: kinds(ms) == ["silent"], timeout=20)
    assert kinds(events) == ["silent"]
    silent = next(m for m in events if m["sensor_id"] == sensor)
    assert silent["zone"] == "north-dma1" and silent["expected_interval_ms"] == 1000

    await produce(s, "readings.raw", [(sensor.encode(), reading(sensor, now_ms()))])
    events = await collect(s, "sensor.events", lambda ms: kinds(ms) == ["silent", "back"], timeout=20)
    assert kinds(events) == ["silent", "back"]


async def test_a_sensor_not_heard_from_for_its_ttl_is_forgotten(ingest: ServiceProcess) -> None:
    sensor = f"ttl-{uuid.uuid4().hex[:8]}"
    body = orjson.dumps(reading(sensor, now_ms() - 1000))
    async with httpx.AsyncClient(base_url=ingest.url, headers=AUTH, timeout=15) as client:
        assert (await client.post("/v1/readings", content=body)).json()["accepted"] == 1
        assert (await client.post("/v1/readings", content=body)).json()["duplicates"] == 1
        evicted = metric(ingest, "flowwatch_ingest_sensors_evicted_total")
        # A duplicate does not refresh the sensor: it stays a duplicate until the sensor is forgotten,
        # then the same reading is new again (its state was deleted, not just hidden).
        deadline = time.monotonic() + SENSOR_TTL_S + 30
        answer = (await client.post("/v1/readings", content=body)).json()
        while answer["duplicates"] == 1 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            answer = (await client.post("/v1/readings", content=body)).json()
        assert answer["accepted"] == 1, answer
        assert metric(ingest, "flowwatch_ingest_sensors_evicted_total") > evicted


async def test_requests_beyond_the_concurrency_limit_get_429(ingest: ServiceProcess) -> None:
    t = now_ms() - 1000
    tag = uuid.uuid4().hex[:8]
    host, port = ingest.url.rsplit("/", 1)[1].split(":")
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]] = []
    for i in range(2):  # two requests whose bodies have not arrived yet: both handlers are waiting for them
        body = orjson.dumps([reading(f"slow-{tag}-{i}", t)])
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/readings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body[:1])
        await writer.drain()
        held.append((reader, writer, body))
    async with httpx.AsyncClient(base_url=ingest.url, headers=AUTH, timeout=30) as client:
        deadline = time.monotonic() + 20
        r = await client.post("/v1/readings", content=orjson.dumps(reading(f"fast-{tag}", t)))
        while r.status_code != 429 and time.monotonic() < deadline:  # until both held requests are in
            await asyncio.sleep(0.2)
            r = await client.post("/v1/readings", content=orjson.dumps(reading(f"fast-{tag}", t + 1)))
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        for reader, writer, body in held:
            writer.write(body[1:])
            await writer.drain()
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 202") and b'"accepted":1' in answer, answer
        r = await client.post("/v1/readings", content=orjson.dumps(reading(f"fast-{tag}", t + 2)))
        assert r.status_code == 202
