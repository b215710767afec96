"""Fuzz: hostile inputs on the alerts service's and the history service's input topics, real workers, real Kafka.

One alerts worker and one history worker (on a PostgreSQL database of its own) read the same topics:
10,000 hostile messages on each of history's ten input topics, four of which (anomalies, risk,
sensor.events, readings.quarantine) are alerts' inputs too. Each topic's inputs are hostile versions
of a valid record of that topic: hypothesis draws (fixed seed), every field of the record set to each
known killer value (:func:`tests.fuzz.hostile_values` and ``big_hostile_values``: integers beyond 32 and
64 bits, NUL, lone surrogates, 2,000 euro signs, nesting deeper than orjson writes, NaN, ...), then deterministic
mutations of those (cut, bit flips, spliced fragments, fields set to killers); one in twenty is the
valid record.

Asserted: neither worker died, both are ready afterwards, their APIs answer without a 5xx, and every
input is accounted for, exactly, per topic:

- alerts: records evaluated (``flowwatch_alerts_records_evaluated_total``) + dead letters on the
  deadletter topic (origin, offset and reason; each offset once) = sent; for readings.quarantine the
  evaluated ones are also counted from the topics (the ``qcount`` events they became);
- history: records stored (``flowwatch_history_accepted_total``) + rows of its ``rejected`` table (each
  offset once, with the reason) + duplicate readings = sent (on the alerts topic, ours and the notifications
  the alerts worker wrote there from the hostile inputs), and the offsets it committed with its data
  (``sink_offsets``) are the end of every topic; ids no index row can hold, which PostgreSQL refuses, are
  among the rejects (their batches were written one message at a time instead of retried forever).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.codec import loads
from shared.settings import Settings
from tests import fuzz
from tests.helpers import AUTH, ServiceProcess, produce
from tests.history_helpers import scratch_database

pytestmark = pytest.mark.timeout(900)

PER_TOPIC = 10_000
DRAWN = 150  # hypothesis draws per topic (about 15 ms each); the rest are killers and mutations
T0 = fuzz.T0

TEMPLATES: dict[str, dict[str, Any]] = {
    "readings.clean": fuzz.reading("fz-r1", T0),
    "anomalies": {
        "sensor_id": "fz-a1",
        "ts": T0,
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "asset": "pipe",
        "score": 0.97,
        "threshold": 0.5,
        "model_version": "v1",
        "reason": "flow high",
        "top_metrics": [{"metric": "flow", "contribution": 1.0}],
        "values": {"flow": 9.0},
        "severity": "critical",
    },
    "risk": {
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "ts": T0,
        "horizon_s": 3600,
        "probability": 0.95,
        "incident_type": "leak",
        "class_probs": {"leak": 0.95, "normal": 0.05},
        "forecast": {"flow": {"p50": 1.0}},
        "loss": {"m3": 3.0},
        "model_version": "v1",
        "top_features": [{"feature": "flow", "contribution": 0.5}],
    },
    "sensor.events": {
        "sensor_id": "fz-s1",
        "kind": "silent",
        "ts": T0,
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "asset": "pipe",
        "last_seen_ms": T0 - 60_000,
        "expected_interval_ms": 10_000,
    },
    "readings.quarantine": {
        "payload": {"sensor_id": "x"},
        "source": "kafka",
        "reasons": ["range: flow 9e9 above 1e6"],
        "received_ms": T0,
        "sensor_id": "fz-q1",
        "truncated": False,
        "payload_bytes": 20,
    },
    "aggregates": {
        "window_start": T0,
        "window_end": T0 + 60_000,
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "count": 12,
        "anomaly_count": 1,
        "metrics": {"flow": {"mean": 1.0}},
    },
    "alerts": {
        "fingerprint": "fz-fp1",
        "status": "firing",
        "labels": {"alertname": "FzAlert", "zone": "fz-zone"},
        "annotations": {"summary": "fz"},
        "starts_at": T0,
        "ends_at": 0,
        "updated_at": T0,
        "generator": "fz",
    },
    "reports": {"id": "fz-rep1", "ts": T0, "site": "fz-site", "zone": "fz-zone", "kind": "leak", "text": "water"},
    "feedback": {
        "fingerprint": "fz-fp1",
        "ts": T0,
        "author": "fz",
        "verdict": "true_positive",
        "comment": "",
        "labels": {"episode_id": "1"},
    },
    "labels": {
        "incident_id": "fz-inc1",
        "type": "leak",
        "start_ms": T0,
        "end_ms": T0 + 60_000,
        "site": "fz-site",
        "zone": "fz-zone",
        "utility": "water",
        "sensors": ["fz-r1"],
    },
}
TABLES = ["rollups", "anomalies", "aggregates", "risk", "alert_log", "sensor_events", "quarantine_counts", "reports"]
TABLES += ["feedback", "labels", "episodes", "incidents"]
ALERTS_TOPICS = ("anomalies", "risk", "sensor.events", "readings.quarantine")
GENERIC_KILLERS = [
    b"",
    b"null",
    b"[]",
    b"{}",
    b"1",
    b'"x"',
    b"{",
    b"\xff\xfe\x00",
    b"\x00" * 64,
    fuzz.nested(5000).encode(),
]


def killers(template: dict[str, Any]) -> list[bytes]:
    """Every field of ``template`` set to every known killer value, and the generic killers."""
    out = list(GENERIC_KILLERS)
    for name in template:
        for raw in fuzz.hostile_values() + fuzz.big_hostile_values():
            out.append(fuzz.encode({**template, name: "@@K@@"}).replace(b'"@@K@@"', raw.encode()))
    return out


def inputs(topic: str, at: int) -> list[bytes]:
    template = TEMPLATES[topic]
    drawn = fuzz.generate(fuzz.records_inputs(template), DRAWN, at=at)
    known = killers(template)
    rest = fuzz.mutations(template, drawn + known, PER_TOPIC - len(drawn) - len(known), random.Random(at))
    return known + drawn + rest


async def read_all(settings: Settings, topic: str, timeout: float = 120) -> list[Any]:
    """Every message of a topic up to its end now (decoded), however long reading takes on a busy machine."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        # aiokafka has no public "partitions of a topic I do not subscribe to" that waits for the metadata
        parts = [TopicPartition(name, p) for p in sorted(await consumer._client._wait_on_metadata(name))]
        assert parts, f"no topic {name}"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while True:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout}s"
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                out.extend(loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return out


async def sizes(settings: Settings, topics: list[str]) -> Counter[str]:
    """Messages in each topic now (the sum of its partitions' end offsets; these topics are new and never trimmed)."""
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: Counter[str] = Counter()
    try:
        for topic in topics:
            name = settings.topic(topic)
            parts = [TopicPartition(name, p) for p in sorted(await consumer._client._wait_on_metadata(name))]
            out[topic] = sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()
    return out


def metrics(proc: ServiceProcess, name: str) -> dict[str, float]:
    """label set -> value of one counter (``{}`` label sets as '')."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{proc.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            labels = line[len(name) :].rsplit(" ", 1)[0].strip()
            out[labels] = out.get(labels, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def by_topic(values: dict[str, float]) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, v in values.items():
        topic = labels.split('topic="', 1)[1].split('"', 1)[0] if 'topic="' in labels else ""
        out[topic] += int(v)
    return out


def assert_alive(proc: ServiceProcess) -> dict[str, Any]:
    assert proc.proc is not None and proc.proc.poll() is None, f"{proc.service} died:\n{proc.tail()}"
    r = httpx.get(f"{proc.url}/ready", timeout=10)
    assert r.status_code == 200, (proc.service, r.text)
    assert "Traceback" not in proc.log_path.read_text(errors="replace"), proc.tail(80)
    return r.json()


async def wait_until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last[0]:
            return last
        await asyncio.sleep(1.0)
    return last


async def test_hostile_inputs_on_the_alerts_and_history_topics_are_accounted_for_and_stop_nothing(
    settings: Settings,
) -> None:
    started = time.monotonic()
    async with scratch_database() as db:
        alerts = ServiceProcess("alerts", settings).start()
        history = ServiceProcess(
            "history", settings, {"FLOWWATCH_HISTORY_DATABASE_URL": db, "FLOWWATCH_HISTORY_BATCH_WITHIN_S": "0.2"}
        ).start()
        try:
            sent = {topic: inputs(topic, 500 + i) for i, topic in enumerate(TEMPLATES)}  # while the workers start
            generated_s = time.monotonic() - started
            alerts.wait_ready(timeout=240)
            history.wait_ready(timeout=240)
            sent_at = time.monotonic()
            for topic, values in sent.items():
                for i in range(0, len(values), 5000):
                    await produce(
                        settings, topic, [(b"fz-%d" % (i + j), v) for j, v in enumerate(values[i : i + 5000])]
                    )
            produce_s = time.monotonic() - sent_at

            async def alerts_done() -> tuple[bool, Counter[str], list[dict[str, Any]]]:
                evaluated = by_topic(metrics(alerts, "flowwatch_alerts_records_evaluated_total"))
                letters = await read_all(settings, "deadletter")
                mine = [d for d in letters if d.get("service") == "alerts"]
                dead = Counter(d["topic"][len(settings.topic_prefix) :] for d in mine)
                done = all(evaluated[t] + dead[t] >= len(sent[t]) for t in ALERTS_TOPICS)
                return done, evaluated, mine

            async def history_done() -> tuple[bool, Counter[str], Counter[str], Counter[str], dict[str, int]]:
                # The alerts worker keeps writing notifications to the alerts topic (its groups wait 30 s, so the
                # first come while this runs): a snapshot counts only when that topic's end did not move during it.
                before = await sizes(settings, list(sent))
                conn = await asyncpg.connect(db)
                try:
                    rejected = Counter(
                        {
                            r["topic"]: r["n"]
                            for r in await conn.fetch("SELECT topic, count(*) AS n FROM rejected GROUP BY 1")
                        }
                    )
                    committed = Counter(
                        {
                            r["topic"][len(settings.topic_prefix) :]: r["n"]
                            for r in await conn.fetch(
                                "SELECT topic, sum(next_offset) AS n FROM sink_offsets GROUP BY 1"
                            )
                        }
                    )
                finally:
                    await conn.close()
                # After the offsets: a batch is counted in the metrics right after its transaction commits.
                accepted = by_topic(metrics(history, "flowwatch_history_accepted_total"))
                # The alerts topic holds the alerts service's notifications too (its default receiver writes there).
                ends = await sizes(settings, list(sent))
                done = ends == before and all(committed[t] >= ends[t] for t in sent)
                return done, accepted, rejected, committed, ends

            async def history_settled() -> tuple[bool, Counter[str], Counter[str], Counter[str], dict[str, int]]:
                done, accepted, rejected, committed, ends = await history_done()
                dup = int(sum(metrics(history, "flowwatch_history_duplicates_total").values()))
                done = done and all(
                    accepted[t] + rejected[t] + (dup if t == "readings.clean" else 0) == ends[t] for t in sent
                )
                return done, accepted, rejected, committed, ends

            done, evaluated, letters = await wait_until(alerts_done, timeout=300)
            assert done, ("alerts did not account for every input in time", dict(evaluated))
            hdone, accepted, rejected, committed, ends = await wait_until(history_done, timeout=300)
            assert hdone, ("history did not commit every input in time", dict(committed), history.tail())
            settle_s = time.monotonic() - sent_at
            await asyncio.sleep(3)  # anything beyond the expected counts (a replay) would show now
            _, evaluated, letters = await alerts_done()
            # A snapshot in which the alerts topic stood still and its counts add up (a replay or a lost message
            # never adds up: the wait then ends and the assertions below say which topic is off, and by how much).
            _, accepted, rejected, committed, ends = await wait_until(history_settled, timeout=60)
            duplicates = int(sum(metrics(history, "flowwatch_history_duplicates_total").values()))

            # alerts: evaluated + dead-lettered = sent, every dead letter once, with its origin and reason
            dead = Counter(d["topic"][len(settings.topic_prefix) :] for d in letters)
            for t in ALERTS_TOPICS:
                assert evaluated[t] + dead[t] == len(sent[t]), (t, evaluated[t], dead[t], len(sent[t]))
            assert len({(d["topic"], d["partition"], d["offset"]) for d in letters}) == len(letters)
            assert all(d["reasons"] and d["offset"] is not None for d in letters)
            events = await read_all(settings, "flowwatch-alerts-events")
            qcounted = sum(e["n"] for e in events if isinstance(e, dict) and e.get("type") == "qcount")
            assert qcounted == evaluated["readings.quarantine"]
            # history: accepted + rejected + duplicates = sent, and every offset committed with the data. On the
            # alerts topic, sent is ours and the notifications the alerts worker made of the hostile inputs.
            notifications = ends["alerts"] - len(sent["alerts"])
            assert notifications >= 0 and all(ends[t] == len(v) for t, v in sent.items() if t != "alerts")
            for t in sent:
                dup = duplicates if t == "readings.clean" else 0
                assert accepted[t] + rejected[t] + dup == ends[t], (t, accepted[t], rejected[t], dup, ends[t])
                assert committed[t] == ends[t], (t, committed[t], ends[t])
            conn = await asyncpg.connect(db)
            try:
                assert await conn.fetchval("SELECT count(*) FROM rejected WHERE reason = ''") == 0
                # Ids no index row can hold pass the decoder and are refused by PostgreSQL: the sink wrote their
                # batches one message at a time and rejected just them (before, the batch was retried forever).
                refused = await conn.fetchval("SELECT count(*) FROM rejected WHERE reason LIKE '%index row size%'")
                assert refused > 0
                rows = {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}
            finally:
                await conn.close()

            # No crash, no 5xx: both ready, their APIs answer over what they stored.
            assert_alive(alerts)
            assert_alive(history)
            statuses: Counter[int] = Counter()
            with httpx.Client(headers=AUTH, timeout=30) as client:
                for url in (
                    f"{alerts.url}/v1/alerts",
                    f"{alerts.url}/v1/silences",
                    f"{history.url}/v1/history/episodes",
                    f"{history.url}/v1/history/alerts",
                    f"{history.url}/v1/history/anomaly-rates",
                    f"{history.url}/v1/history/zones/fz-zone/losses",
                ):
                    statuses[client.get(url).status_code] += 1
            assert not any(s >= 500 for s in statuses), statuses
        finally:
            alerts.stop()
            history.stop()
    print(
        f"\nfuzz alerts/history: {sum(map(len, sent.values()))} inputs ({PER_TOPIC} per topic, 10 topics) in "
        f"{produce_s:.1f}s, all accounted for {settle_s:.1f}s after the first; alerts evaluated {dict(evaluated)}, "
        f"dead-lettered {dict(dead)}; history accepted {dict(accepted)}, rejected {dict(rejected)}, duplicates "
        f"{duplicates} ({refused} refused by PostgreSQL, isolated; {notifications} notifications of the alerts worker "
        f"on the alerts topic besides), rows {rows}; API statuses {dict(statuses)}; generation {generated_s:.1f}s, total "
        f"{time.monotonic() - started:.1f}s; crashes 0"
    )
