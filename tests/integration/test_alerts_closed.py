"""The alerts API as an attacker or a careless client meets it, on a real worker, Kafka and Redis.

Silences: the server assigns ids, the author is the token's name, updates go by id, limits hold,
bad times are a 400, expired silences are garbage-collected, and a malformed record on the internal
silences topic is dead-lettered with its reason while the worker carries on. Redis down: the API
answers 503 with the reason and /ready says why; both recover by themselves. The Redis used here is
the test's own throwaway redis-server (the shared one is never stopped).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import collect, free_port, produce
from tests.integration.test_alerts_harness import TOKENS, alerts_process

CONFIG = """
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {site: "{site}", zone: "{zone}", sensor: "{sensor_id}"}
    resolve_after: 1h
route:
  receiver: stream
  group_by: [site, zone]
receivers:
  - name: stream
    kafka_configs: [{topic: alerts}]
"""

pytestmark = pytest.mark.timeout(300)


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    redis = shutil.which("redis-server")
    assert redis, "redis-server is installed by scripts/stack.sh"
    args = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_silences_and_redis_down_on_a_real_worker(settings, tmp_path) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port, tmp_path)
    config = tmp_path / "alerts.yaml"
    config.write_text(CONFIG)
    proc = alerts_process(
        settings,
        config,
        FLOWWATCH_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        FLOWWATCH_ALERTS_SILENCE_MAX_COUNT="3",
        FLOWWATCH_ALERTS_SILENCE_MAX_REGEX_MATCHERS="2",
        FLOWWATCH_ALERTS_SILENCE_RETENTION_S="1",
        FLOWWATCH_ALERTS_SILENCE_GC_INTERVAL_S="1",
    )
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready, 90)
        api = httpx.AsyncClient(base_url=proc.url, timeout=15)
        ends = int((time.time() + 600) * 1000)
        body = {"matchers": ['zone="z1"'], "endsAt": ends, "comment": "valve work", "createdBy": "mallory"}

        # --- the server assigns the id; the author is the token's name, whatever the body says.
        r = await api.post("/v1/silences", json={**body, "id": "chosen-by-client"}, headers=auth("operator"))
        assert r.status_code == 400 and "assigned by the server" in r.json()["error"]
        r = await api.post("/v1/silences", json=body, headers=auth("operator"))
        assert r.status_code == 200, r.text
        sid = r.json()["silenceID"]

        async def listed() -> dict[str, dict]:
            return {s["id"]: s for s in (await api.get("/v1/silences", headers=auth("viewer"))).json()}

        silences = await poll(listed, lambda got: sid in got)
        assert silences[sid]["createdBy"] == "operator-user"

        # --- updates go by id (PUT), by its author or an admin; the id and author stay.
        r = await api.put(f"/v1/silences/{sid}", json={**body, "comment": "longer work"}, headers=auth("admin"))
        assert r.status_code == 200 and r.json()["silenceID"] == sid, r.text
        silences = await poll(listed, lambda got: got.get(sid, {}).get("comment") == "longer work")
        assert (silences[sid]["createdBy"], silences[sid]["updatedBy"]) == ("operator-user", "admin-user")
        assert (await api.put("/v1/silences/nope", json=body, headers=auth("admin"))).status_code == 404

        # --- out-of-range and unparseable times are a 400, never a 500; so are oversized bodies.
        for bad in (10**30, -5, "99999-01-01T00:00:00Z", "2030-13-45T00:00:00Z", "9999-12-31T23:59:59-23:59", [1]):
            r = await api.post("/v1/silences", json={**body, "endsAt": bad}, headers=auth("operator"))
            assert r.status_code == 400, (bad, r.status_code, r.text)
        r = await api.post("/v1/silences", json={**body, "comment": "x" * 70_000}, headers=auth("operator"))
        assert r.status_code == 413
        r = await api.get("/v1/alerts", params={"filter": 'zone=~"(a+)+$"'}, headers=auth("viewer"))
        assert r.status_code == 200  # RE2: a pattern that hangs backtracking engines is harmless here
        r = await api.get("/v1/alerts", params={"filter": 'zone=~"(a)\\1"'}, headers=auth("viewer"))
        assert r.status_code == 400 and "RE2" in r.json()["error"]

        # --- a budget on the regular expressions of all live silences together (each alert meets every one).
        regexes = {**body, "matchers": ['zone=~"z.*"', 'site=~"s.*"', 'sensor=~".+"']}
        r = await api.post("/v1/silences", json=regexes, headers=auth("operator"))
        assert r.status_code == 409 and "3 regular-expression matchers (limit 2)" in r.json()["error"], r.text

        # --- a limit on how many silences may be pending or active.
        for _ in range(2):
            assert (await api.post("/v1/silences", json=body, headers=auth("operator"))).status_code == 200
        await poll(listed, lambda got: len(got) == 3)
        r = await api.post("/v1/silences", json=body, headers=auth("operator"))
        assert r.status_code == 409 and "limit 3" in r.json()["error"]

        # --- a malformed record on the internal silences topic: dead-lettered with its reason, never stored.
        topic = "flowwatch-alerts-silence-commands"
        await produce(settings, topic, [(b"evil", b"{not json"), (b"evil2", {"id": "evil2", "matchers": "x"})])
        letters = await collect(settings, "deadletter", lambda got: len(got) >= 2, timeout=30)
        assert {(d["service"], d["key"]) for d in letters} == {("alerts", "evil"), ("alerts", "evil2")}
        assert all(d["reasons"] and d["reasons"][0].startswith("silence:") for d in letters)
        assert not {"evil", "evil2"} & set(await listed())

        # --- expired silences are garbage-collected after the retention (1 s here).
        assert (await api.delete(f"/v1/silences/{sid}", headers=auth("operator"))).status_code == 200
        await poll(listed, lambda got: sid not in got, timeout=30)
        assert (await api.post("/v1/silences", json=body, headers=auth("operator"))).status_code == 200

        # --- Redis down: 503 with the reason, /ready says why; never an empty 200.
        assert (await api.get("/v1/alerts", headers=auth("viewer"))).status_code == 200
        redis.kill()
        redis.wait(10)

        async def not_ready() -> dict:
            return (await api.get("/ready")).json()

        ready = await poll(not_ready, lambda got: not got["ready"], timeout=30)
        assert not ready["redis"]["ok"] and "Redis unreachable" in ready["redis"]["detail"]
        r = await api.get("/v1/alerts", headers=auth("viewer"))
        assert r.status_code == 503 and "Redis" in r.json()["error"] and r.headers["Retry-After"]
        assert (await api.get("/v1/alerts/abc", headers=auth("viewer"))).status_code == 503
        r = await api.post(
            "/v1/feedback", json={"fingerprint": "abc", "verdict": "true_positive"}, headers=auth("admin")
        )
        assert r.status_code == 503

        # --- and it recovers by itself.
        redis = start_redis(redis_port, tmp_path)
        await poll(not_ready, lambda got: got["ready"], timeout=60)
        r = await api.get("/v1/alerts", headers=auth("viewer"))
        assert r.status_code == 200 and r.json()["count"] == 0
        assert proc.proc is not None and proc.proc.poll() is None
        await api.aclose()
    finally:
        proc.stop()
        redis.kill()
        redis.wait(10)


async def poll(fetch, done, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = await fetch()
        if done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s; last: {got}")
        await asyncio.sleep(0.2)
