"""Payload mappings on the real stack: each door (HTTP ?mapping=, MQTT topic filter, Kafka source topic) reads
the gas-station message of issue 16 into readings.clean; a sentinel is out of range; a message a mapping
cannot read is quarantined naming the mapping and the field; CSV over HTTP; ids from MQTT topic segments;
an unknown metric is accepted, flagged and counted per sensor in the Redis cache.

One worker serves the module, with its own mappings file (the shipped mappings re-routed to this run's
MQTT filters and Kafka topics, plus one that reads its sensor id from the topic).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest
import pytest_asyncio
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.ingest import mappings
from services.ingest.mappings import _read, expand
from services.ingest.rules import Rules
from services.ingest.settings import DEFAULT_MAPPINGS_FILE, IngestSettings
from shared.cache import Cache
from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import ServiceProcess, collect, consume, delete_topics, produce

pytestmark = pytest.mark.timeout(300)

TOKEN = "test-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GAS = {
    "timestamp": "2026-01-25T07:50:07.099780",
    "location": "Sumqayit",
    "sensors": {
        "density_kg_m3": 0.742,
        "pressure_diff_kpa": 12.5,
        "pressure_kpa": 485.3,
        "temperature_c": 25.4,
        "hourly_flow_m3": 12500.0,
        "total_flow_m3": 1500000.0,
    },
}
SOURCES = ("gas-station.raw", "scada-wide.raw")


def mappings_file(path: Path, prefix: str) -> Path:
    shipped = _read(DEFAULT_MAPPINGS_FILE)
    for name, spec in shipped.items():
        spec["mqtt"] = [f"flowwatch-test/{prefix}{name}/#"] if spec.get("mqtt") else []
    shipped["station-topic"] = {
        "mqtt": [f"flowwatch-test/{prefix}stations/+/gas"],
        "ts": {"field": "t", "format": "epoch_ms"},
        "defaults": {"site": "{topic[1]|slug}", "utility": "gas", "asset": "gas_station"},
        "readings": [{"sensor_id": "st-{topic[2]}", "zone": "{topic[2]|upper}", "values_from": "v"}],
    }
    path.write_text(yaml.safe_dump({"mappings": shipped}))
    return path


@pytest_asyncio.fixture(scope="module")
async def ingest(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("ingest-mappings")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    s = stack.replace(topic_prefix=prefix, data_dir=tmp / "data", model_dir=tmp / "models", partitions=2)
    await create_all(s, out=open("/dev/null", "w"))
    # Source topics belong to whoever writes them; this test is that writer.
    admin = AIOKafkaAdminClient(**s.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(s.topic(t), 2, s.replication_factor) for t in SOURCES])
    finally:
        await admin.close()
    env = {
        "FLOWWATCH_INGEST_TOKEN": TOKEN,
        "FLOWWATCH_INGEST_MQTT_TOPIC": f"flowwatch-test/{prefix}readings/#",
        "FLOWWATCH_INGEST_MAPPINGS_FILE": str(mappings_file(tmp / "mappings.yaml", prefix)),
        "FLOWWATCH_INGEST_MAX_AGE_S": "0",  # the message is from January
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
        "FLOWWATCH_INGEST_CACHE_FLUSH_S": "0.3",
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


async def post(proc: ServiceProcess, body: bytes, mapping: str | None, **headers: str) -> httpx.Response:
    params = {"mapping": mapping} if mapping else None
    async with httpx.AsyncClient(base_url=proc.url, headers={**AUTH, **headers}, timeout=30) as client:
        return await client.post("/v1/readings", content=body, params=params)


async def publish(proc: ServiceProcess, topic: str, payload: Any) -> None:
    async with aiomqtt.Client("127.0.0.1", int(proc.settings.mqtt_url.rsplit(":", 1)[1])) as mqtt:
        await mqtt.publish(f"flowwatch-test/{proc.settings.topic_prefix}{topic}", orjson.dumps(payload), qos=1)


def station(location: str, **sensors: float) -> dict[str, Any]:
    return {**GAS, "location": location, "sensors": {**GAS["sensors"], **sensors}}


async def test_the_gas_station_message_through_every_door(ingest: ServiceProcess) -> None:
    s = ingest.settings
    r = await post(ingest, orjson.dumps(GAS), "gas-station")
    assert r.status_code == 202, r.text
    answer = r.json()
    assert (answer["accepted"], answer["mapping"], answer["messages"]) == (1, "gas-station", 1)
    await publish(ingest, "gas-station/site1", station("Baku"))
    await produce(s, "gas-station.raw", [(None, station("Ganja"))])

    wanted = {"gas-sumqayit": "http", "gas-baku": "mqtt", "gas-ganja": "kafka"}
    got = await collect(s, "readings.clean", lambda ms: wanted.keys() <= {m["sensor_id"] for m in ms}, timeout=60)
    by_sensor = {m["sensor_id"]: m for m in got}
    assert wanted.keys() <= by_sensor.keys(), ingest.tail(60)
    assert {k: by_sensor[k]["source"] for k in wanted} == wanted
    clean = by_sensor["gas-sumqayit"]
    assert (clean["site"], clean["zone"], clean["utility"], clean["asset"]) == (
        "gas-pipeline",
        "Sumqayit",
        "gas",
        "gas_station",
    )
    assert clean["ts"] == 1769313007100  # 07:50:07.0998 in Baku
    assert clean["values"] == pytest.approx(
        {
            "density": 0.742,
            "pressure_diff": 12.5,
            "pressure": 485.3,
            "temperature": 25.4,
            "flow": 12500.0,
            "volume_total": 1_500_000.0,
        }
    )


async def test_a_sentinel_is_out_of_range_mapped_or_native(ingest: ServiceProcess) -> None:
    r = await post(ingest, orjson.dumps(station("Shirvan", pressure_kpa=-99999)), "gas-station")
    answer = r.json()
    assert answer["accepted"] == 0 and answer["quarantined"] == 1, answer
    [error] = answer["errors"]
    assert error["message"] == 0 and error["reasons"][0].startswith("out_of_range: pressure=-99999 kPa")
    native = {
        "sensor_id": f"native-{uuid.uuid4().hex[:6]}",
        "ts": int(time.time() * 1000),
        "site": "s",
        "zone": "z",
        "utility": "gas",
        "asset": "gas_station",
        "values": {"pressure_kpa": -99999},
    }
    answer = (await post(ingest, orjson.dumps(native), None)).json()
    assert answer["quarantined"] == 1 and answer["errors"][0]["reasons"][0].startswith("out_of_range: pressure=")


async def test_what_a_mapping_cannot_read_is_quarantined_at_every_door(ingest: ServiceProcess) -> None:
    s = ingest.settings
    tag = uuid.uuid4().hex[:8]
    bad_ts = {**GAS, "timestamp": f"25/01/2026 {tag}"}
    no_location = {k: v for k, v in GAS.items() if k != "location"} | {"tag": tag}
    r = await post(ingest, b"\n".join([orjson.dumps(bad_ts), orjson.dumps(station("Quba"))]), "gas-station")
    answer = r.json()
    assert (answer["accepted"], answer["quarantined"], answer["messages"]) == (1, 1, 2), answer
    assert answer["errors"][0]["reasons"] == [
        f"mapping_error: gas-station: timestamp: '25/01/2026 {tag}' is not in format 'iso'"
    ]
    await publish(ingest, "gas-station/x", no_location)
    nested: Any = 1
    for _ in range(40):  # deeper than FLOWWATCH_INGEST_MAX_JSON_DEPTH (32)
        nested = [nested]
    deep = {**GAS, "tag": tag, "x": nested}
    await produce(s, "gas-station.raw", [(None, {**bad_ts, "tag": tag}), (None, deep)])

    def found(ms: list[Any]) -> bool:
        return len([m for m in ms if tag in orjson.dumps(m).decode()]) >= 4

    records = [m for m in await collect(s, "readings.quarantine", found, timeout=60) if tag in orjson.dumps(m).decode()]
    by_source = sorted((m["source"], m["reasons"][0].split(": ")[0], m["reasons"][0]) for m in records)
    assert [(src, code) for src, code, _ in by_source] == [
        ("http", "mapping_error"),
        ("kafka", "mapping_error"),
        ("kafka", "too_deep"),
        ("mqtt", "mapping_error"),
    ]
    mqtt_reason = by_source[-1][2]
    assert mqtt_reason.startswith("mapping_error: gas-station: sensor_id: missing field location"), mqtt_reason
    # the quarantine keeps the message as the device sent it
    assert any(m["payload"] == no_location for m in records)


async def test_csv_over_http_and_unknown_mapping(ingest: ServiceProcess) -> None:
    csv = (
        b"DATETIME,L_T1,F_PU1,S_PU1,P_J280,ATT_FLAG\n"
        b"04/07/16 00,2.44,93.63,1,2.98,0\n"
        b"04/07/16 01,2.66,89.41,1,36.38,0\n"
        b"04/07/16 02,2.70\n"
    )
    r = await post(ingest, csv, "scada-wide", **{"Content-Type": "text/csv"})
    answer = r.json()
    assert (answer["accepted"], answer["quarantined"], answer["messages"]) == (6, 1, 3), answer
    assert answer["errors"][0]["message"] == 2 and answer["errors"][0]["reasons"][0].startswith("malformed_csv")
    assert (await post(ingest, b"{}", "no-such-mapping")).status_code == 400
    assert (await post(ingest, csv, None, **{"Content-Type": "text/csv"})).status_code == 400


async def test_ids_from_mqtt_topic_segments(ingest: ServiceProcess) -> None:
    s = ingest.settings
    tag = uuid.uuid4().hex[:8]
    message = {"t": int(time.time() * 1000) - 1000, "v": {"pressure_bar": 5.0, "temperature_c": 9.0}}
    await publish(ingest, f"stations/{tag}/gas", message)
    got = await collect(s, "readings.clean", lambda ms: any(m["sensor_id"] == f"st-{tag}" for m in ms), timeout=60)
    [clean] = [m for m in got if m["sensor_id"] == f"st-{tag}"]
    assert (clean["zone"], clean["source"]) == (tag.upper(), "mqtt")
    assert clean["site"] == s.topic_prefix.replace(".", "-") + "stations"  # {topic[1]|slug}
    assert clean["values"] == pytest.approx({"pressure": 500.0, "temperature": 9.0})


async def test_unknown_metrics_are_flagged_and_counted_per_sensor(ingest: ServiceProcess) -> None:
    s = ingest.settings
    sensor = f"odour-{uuid.uuid4().hex[:8]}"
    t = int(time.time() * 1000) - 5000
    body = [
        {
            "sensor_id": sensor,
            "ts": t + i,
            "site": "s",
            "zone": "z",
            "utility": "gas",
            "asset": "other",
            "values": {"pressure": 400.0, "odour_index": 3.0},
        }
        for i in range(2)
    ]
    answer = (await post(ingest, orjson.dumps(body), None)).json()
    assert answer["accepted"] == 2, answer
    cache = Cache(s.redis_url, prefix=s.topic_prefix)
    try:
        deadline = time.monotonic() + 30
        cached = None
        while time.monotonic() < deadline and (cached is None or cached["stats"].get("count") != 2):
            cached = await cache.get("sensor", sensor)
            await asyncio.sleep(0.2)
        assert cached is not None and cached["stats"]["unknown_metrics"] == 2
        assert cached["reading"]["extra"]["unknown_metrics"] == ["odour_index"]
    finally:
        await cache.close()


async def test_the_simulators_gas_station_format_over_mqtt(ingest: ServiceProcess) -> None:
    """What `make demo`'s second simulator does: a site's sensors as gas-station JSON over MQTT, all accepted."""
    from services.simulator import FaultConfig, Network, SimConfig, Simulator
    from services.simulator.formats import FormatEncoder
    from services.simulator.runner import Runner, RunOptions
    from services.simulator.sinks import MqttSink

    s = ingest.settings
    net = Network.default(7)
    engine = Simulator(net, SimConfig(faults=FaultConfig()), seed=7).engine()
    root = f"flowwatch-test/{s.topic_prefix}gas-station"
    sink = MqttSink(s.mqtt_url, [x.id for x in net.sensors], [x.site for x in net.sensors], root=root)
    options = RunOptions(start_ms=int(time.time() * 1000) - 3_600_000, speed=None, max_messages=80, sites=("oldtown",))
    await sink.start()
    try:
        report = await Runner(engine, sink, options, encoder=FormatEncoder(engine, "gas-station")).run()
    finally:
        await sink.stop()
    sent = report.messages
    assert sent >= 80 and sink.stats.failed == 0

    def mine(ms: list[Any]) -> list[Any]:
        return [m for m in ms if m["sensor_id"].startswith("gas-oldtown-")]

    got = mine(await collect(s, "readings.clean", lambda ms: len(mine(ms)) >= sent, timeout=90))
    assert len(got) == sent, ingest.tail(40)
    assert {m["source"] for m in got} == {"mqtt"} and {m["site"] for m in got} == {"gas-pipeline"}
    oldtown = {f"gas-{x.id}" for x in net.sensors if x.site == "oldtown"}
    assert {m["sensor_id"] for m in got} <= oldtown


def metric(proc: ServiceProcess, name: str) -> float:
    for line in httpx.get(f"{proc.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


async def test_mapped_source_readings_skip_readings_raw_with_the_outcome_they_had_through_it(
    ingest: ServiceProcess,
) -> None:
    """The Kafka source door hands the readings of sensors this worker owns to the pipeline directly: the same
    readings.clean and readings.quarantine records (content and headers) as the door's readings.raw route."""
    s = ingest.settings
    tag = uuid.uuid4().hex[:6]
    mapping = mappings.load()["gas-station"]
    rules = Rules.load(IngestSettings())
    # The old route, as the door took it: the mapped reading written to readings.raw keyed by sensor_id.
    via_raw = []
    for msg in (station(f"r{tag}"), station(f"r{tag}bad", pressure_kpa=-99999)):
        [item], reasons, _ = expand(mapping, orjson.dumps(msg), rules)
        assert not reasons
        via_raw.append((item.sensor_id.encode(), item.value))  # type: ignore[union-attr]
    direct_before = metric(ingest, "flowwatch_ingest_source_direct_total")
    await produce(
        s, "gas-station.raw", [(None, station(f"d{tag}")), (None, station(f"d{tag}bad", pressure_kpa=-99999))]
    )
    producer = AIOKafkaProducer(**s.kafka_client_options())
    await producer.start()
    try:
        for key, value in via_raw:
            await producer.send_and_wait(
                s.topic("readings.raw"),
                value,
                key=key,
                headers=[("fw-source", b"kafka"), ("fw-mapping", b"gas-station")],
            )
    finally:
        await producer.stop()

    def by_tag(records: list[Any]) -> dict[str, Any]:
        return {rec.key.decode(): rec for rec in records if rec.key and tag in rec.key.decode()}

    ids = {f"gas-{p}{tag}" for p in "dr"}
    bad = {f"gas-{p}{tag}bad" for p in "dr"}
    await collect(s, "readings.clean", lambda ms: ids <= {m["sensor_id"] for m in ms}, timeout=60)
    await collect(s, "readings.quarantine", lambda ms: bad <= {m.get("sensor_id") for m in ms}, timeout=60)
    clean = by_tag(await consume(s, "readings.clean", 10**6, timeout=3, decode=False))
    quarantined = by_tag(await consume(s, "readings.quarantine", 10**6, timeout=3, decode=False))
    raw = by_tag(await consume(s, "readings.raw", 10**6, timeout=3, decode=False))
    assert set(clean) == ids and set(quarantined) == bad, ingest.tail(60)
    assert not any(k.startswith(f"gas-d{tag}") for k in raw), "the direct route wrote readings.raw"
    assert metric(ingest, "flowwatch_ingest_source_direct_total") - direct_before == 2

    def same(direct: Any, old: Any) -> None:
        assert direct.headers == old.headers
        a, b = orjson.loads(direct.value), orjson.loads(old.value)
        for rec in (a, b):  # what names the station, and when it arrived
            rec.pop("received_ms")
            rec.pop("sensor_id")
            payload = rec.get("payload", rec)
            payload.pop("zone")
            payload.pop("sensor_id", None)
        assert a == b

    same(clean[f"gas-d{tag}"], clean[f"gas-r{tag}"])
    same(quarantined[f"gas-d{tag}bad"], quarantined[f"gas-r{tag}bad"])
    reasons = orjson.loads(quarantined[f"gas-d{tag}bad"].value)["reasons"]
    assert reasons[0].startswith("out_of_range: pressure=-99999 kPa"), reasons
