"""The alerts service on the real stack: inputs on the real topics, a local webhook server and SMTP sink.

One worker runs every scenario side by side, each in its own zone (so its own group):
grouping and timers, resolve, inhibition, silences through the API, email, a receiver
that fails then succeeds, the DLQ and resend-dlq, HMAC signatures, the API and its auth.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

from services.alerts.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.helpers import ROOT, consume, produce
from tests.integration.test_alerts_harness import (
    TOKENS,
    Behaviour,
    SmtpSink,
    WebhookReceiver,
    alerts_process,
    anomaly,
    risk,
    until,
)

SECRET = "hmac-secret-for-tests-0123"

CONFIG = """
global:
  resolve_timeout: 6s
rules:
  - name: SensorAnomaly
    source: anomaly
    when: ["score >= threshold"]
    labels: {{site: "{{site}}", zone: "{{zone}}", utility: "{{utility}}", sensor: "{{sensor_id}}", kind: anomaly, severity: "{{severity}}"}}
    annotations: {{summary: "Anomaly on {{sensor_id}}", description: "{{reason}}", runbook_url: "https://rb.example/{{utility}}"}}
    resolve_after: 6s
    rate_limit: {{max_alerts: 20, per: 1m, collapse_by: [site, zone]}}
  - name: ZoneIncidentRisk
    source: risk
    when: ["probability >= 0.7"]
    resolve_when: ["probability < 0.3"]
    labels: {{site: "{{site}}", zone: "{{zone}}", utility: "{{utility}}", kind: "{{incident_type}}", severity: critical}}
    annotations: {{summary: "{{incident_type}} likely in {{zone}}"}}
    resolve_after: 30s
  - name: SensorSilent
    source: sensor_event
    when: ["kind == silent"]
    resolve_when: ["kind == back"]
    labels: {{site: "{{site}}", zone: "{{zone}}", sensor: "{{sensor_id}}", kind: silent, severity: warning}}
    annotations: {{summary: "{{sensor_id}} stopped reporting"}}
    resolve_after: 1h
  - name: QuarantineSpike
    source: quarantine
    when: ["count >= 5"]
    labels: {{source: "{{source}}", kind: quarantine, severity: warning}}
    annotations: {{summary: "{{count}} readings from {{source}} quarantined within {{window_s}}s"}}
    resolve_after: 1h
route:
  receiver: hook
  group_by: [site, zone, alertname]
  group_wait: 2s
  group_interval: 2s
  repeat_interval: 1h
  routes:
    - receiver: stream
      continue: true
    - receiver: flaky
      matchers: ['zone="flaky"']
    - receiver: dead
      matchers: ['zone="dead"']
    - receiver: reject
      matchers: ['zone="reject"']
    - receiver: mail
      matchers: ['zone="mail"']
    - receiver: hook
inhibit_rules:
  - source_matchers: ['alertname="ZoneIncidentRisk"', 'kind="leak"']
    target_matchers: ['alertname="SensorAnomaly"']
    equal: [site, zone]
receivers:
  - name: hook
    webhook_configs: [{{url: "{hook}", secret_env: TEST_HOOK_SECRET}}]
  - name: stream
    kafka_configs: [{{topic: alerts}}]
  - name: flaky
    webhook_configs: [{{url: "{flaky}"}}]
  - name: dead
    webhook_configs: [{{url: "{dead}", timeout: 1s, send_resolved: false}}]
  - name: reject
    webhook_configs: [{{url: "{reject}", send_resolved: false}}]
  - name: mail
    email_configs:
      - {{to: [ops@example.test], from: flowwatch@example.test, smarthost: "127.0.0.1:{smtp_port}", tls: none}}
"""


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def groups_in(hits, zone):
    return [h for h in hits if h.json["groupLabels"].get("zone") == zone]


@pytest.fixture
async def receiver():
    r = await WebhookReceiver().start()
    yield r
    await r.stop()


async def test_alerts_pipeline_end_to_end(settings, tmp_path, receiver):
    receiver.behaviours["/flaky"] = Behaviour(fail_first=2, fail_status=503)
    receiver.behaviours["/dead"] = Behaviour(always=500)
    receiver.behaviours["/reject"] = Behaviour(always=400)
    with SmtpSink() as smtp:
        config = tmp_path / "alerts.yaml"
        config.write_text(
            CONFIG.format(
                hook=receiver.url("/hook"),
                flaky=receiver.url("/flaky"),
                dead=receiver.url("/dead"),
                reject=receiver.url("/reject"),
                smtp_port=smtp.port,
            )
        )
        proc = alerts_process(settings, config, TEST_HOOK_SECRET=SECRET)
        proc.start()
        try:
            await asyncio.to_thread(proc.wait_ready, 90)
            api = httpx.AsyncClient(base_url=proc.url, timeout=15)

            # --- API auth: clear 401/403 before anything else.
            r = await api.get("/v1/alerts")
            assert r.status_code == 401 and "bearer token" in r.json()["error"]
            r = await api.get("/v1/alerts", headers={"Authorization": "Bearer wrong-token-0123456789"})
            assert r.status_code == 401
            r = await api.post("/v1/silences", json={}, headers=auth("viewer"))
            assert r.status_code == 403 and "operator" in r.json()["error"]

            # --- a silence through the API, before its alerts arrive.
            ends = int((time.time() + 600) * 1000)
            bad = await api.post(
                "/v1/silences", json={"matchers": ['zone="silenced"'], "endsAt": ends}, headers=auth("operator")
            )
            assert bad.status_code == 400 and "comment" in bad.json()["error"]
            r = await api.post(
                "/v1/silences",
                json={"matchers": ['zone="silenced"'], "endsAt": ends, "comment": "pump maintenance"},
                headers=auth("operator"),
            )
            assert r.status_code == 200, r.text
            silence_id = r.json()["silenceID"]

            async def silences():
                return (await api.get("/v1/silences", headers=auth("viewer"))).json()

            deadline = time.monotonic() + 30
            while not await silences() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            listed = await silences()
            assert [(s["id"], s["createdBy"], s["status"]["state"]) for s in listed] == [
                (silence_id, "operator-user", "active")
            ]

            # --- inputs, as the detector and forecaster would produce them.
            t_sent = time.monotonic()
            await produce(settings, "risk", [(b"leaky", risk("leaky", 0.92)), (b"mail", risk("mail", 0.8, "burst"))])
            silent = {"sensor_id": "m1", "kind": "silent", "ts": int(time.time() * 1000), "site": "s1", "zone": "quiet-z",
                      "utility": "water", "asset": "meter", "last_seen_ms": 1, "expected_interval_ms": 1000}  # fmt: skip
            await produce(settings, "sensor.events", [(b"m1", silent)])
            bad_reading = {"payload": {"x": 1}, "source": "mqtt", "reasons": ["missing sensor_id"], "received_ms": 1}
            await produce(settings, "readings.quarantine", [(None, bad_reading)] * 12)
            await produce(
                settings,
                "anomalies",
                [(f"g{i}".encode(), anomaly(f"g{i}", "grp")) for i in range(3)]
                + [(b"g0", anomaly("g0", "grp"))]  # a duplicate: same alert
                + [(b"l1", anomaly("l1", "leaky")), (b"q1", anomaly("q1", "silenced"))]
                + [(b"f1", anomaly("f1", "flaky")), (b"d1", anomaly("d1", "dead")), (b"r1", anomaly("r1", "reject"))]
                + [(b"bad", b"{not json")]
                # flood: 10,000 anomalies from 10,000 sensors of one zone within seconds
                + [(f"x{i}".encode(), anomaly(f"x{i}", "flood")) for i in range(10_000)],
            )

            # grouping: three sensors of one zone → one notification with three alerts, after group_wait.
            [first] = await until(lambda: groups_in(receiver.on("/hook"), "grp"), 90, "grp notification")
            assert first.at - t_sent >= 2.0  # group_wait
            body = first.json
            assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "hook"
            assert sorted(a["labels"]["sensor"] for a in body["alerts"]) == ["g0", "g1", "g2"]
            assert body["groupLabels"] == {"site": "s1", "zone": "grp", "alertname": "SensorAnomaly"}
            assert body["commonAnnotations"]["runbook_url"] == "https://rb.example/water"
            assert set(body["alerts"][0]) == {
                "status",
                "labels",
                "annotations",
                "startsAt",
                "endsAt",
                "generatorURL",
                "fingerprint",
            }

            # flood protection: 10,000 anomalies in one zone → one notification (20 alerts + the flood alert).
            [flood] = await until(lambda: groups_in(receiver.on("/hook"), "flood"), 30, "flood notification")
            alerts = flood.json["alerts"]
            assert len(alerts) == 21
            [folded] = [a for a in alerts if a["labels"].get("flood") == "true"]
            assert int(folded["annotations"]["folded_hits"]) >= 1  # the rest, folded into one alert (still counting)

            # a silent sensor fires; its "back" event resolves it at once (no quiet period needed).
            await until(lambda: groups_in(receiver.on("/hook"), "quiet-z"), 30, "silent-sensor notification")
            await produce(
                settings, "sensor.events", [(b"m1", {**silent, "kind": "back", "ts": int(time.time() * 1000)})]
            )
            back = await until(
                lambda: [h for h in groups_in(receiver.on("/hook"), "quiet-z") if h.json["status"] == "resolved"],
                30,
                "sensor back",
            )
            assert back[0].json["alerts"][0]["labels"]["sensor"] == "m1"

            # quarantine spike: 12 rejected readings within the window → one alert for that source.
            [spike] = await until(
                lambda: [
                    h for h in receiver.on("/hook") if h.json["groupLabels"].get("alertname") == "QuarantineSpike"
                ],
                30,
                "quarantine spike",
            )
            [alert] = spike.json["alerts"]
            assert alert["labels"]["source"] == "mqtt" and "quarantined" in alert["annotations"]["summary"]

            # HMAC: every signed request verifies with the receiver's secret; a tampered body does not.
            for hit in receiver.on("/hook"):
                ts, sig = hit.headers[TIMESTAMP_HEADER], hit.headers[SIGNATURE_HEADER]
                assert verify(SECRET.encode(), ts, hit.body, sig)
                assert not verify(SECRET.encode(), ts, hit.body + b" ", sig)

            # inhibition: the zone leak is told, its sensor's anomaly is not.
            leak = await until(lambda: groups_in(receiver.on("/hook"), "leaky"), 30, "leak notification")
            assert [h.json["groupLabels"]["alertname"] for h in leak] == ["ZoneIncidentRisk"]

            # a receiver failing twice with 503, then succeeding: delivered once, on the third attempt.
            await until(lambda: [h for h in receiver.on("/flaky") if h.status == 200], 30, "flaky success")
            # Only the first notification counts here: on a slow machine a later one of the group (its resolution,
            # say) may already have reached the receiver, under an Idempotency-Key of its own.
            first = receiver.on("/flaky")[0].headers["Idempotency-Key"]
            flaky = [h for h in receiver.on("/flaky") if h.headers["Idempotency-Key"] == first]
            assert [h.status for h in flaky] == [503, 503, 200]
            assert all(SIGNATURE_HEADER not in h.headers for h in flaky)  # an unsigned receiver gets no signature

            # the DLQ: 500 forever → after max_attempts (4); 400 → at once, no retry.
            dlq: list = []
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                dlq = await consume(settings, "alerts.dlq", 2, timeout=3)
                if len(dlq) >= 2:
                    break
            by_receiver = {d["receiver"]: d for d in dlq}
            assert set(by_receiver) == {"dead", "reject"}
            assert by_receiver["dead"]["attempts"] == 4 and "HTTP 500" in by_receiver["dead"]["error"]
            assert by_receiver["reject"]["attempts"] == 1 and "HTTP 400" in by_receiver["reject"]["error"]
            assert len(receiver.on("/dead")) == 4 and len(receiver.on("/reject")) == 1
            assert by_receiver["dead"]["notification"]["alerts"][0]["labels"]["sensor"] == "d1"

            # email: the critical burst risk in zone "mail" reaches the SMTP sink, text and HTML.
            [mail] = await until(lambda: smtp.messages, 30, "email")
            assert "[FIRING:1]" in mail["Subject"] and "zone=mail" in mail["Subject"]
            parts = {
                p.get_content_type(): p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart()
            }
            assert "burst likely in mail" in parts["text/plain"] and "<table" in parts["text/html"]

            # the alerts topic gets every alert state (root route continues to "stream").
            records = await consume(settings, "alerts", 40, timeout=8)
            assert {r["labels"].get("zone") for r in records} >= {"grp", "leaky", "flaky", "mail", "dead", "reject"}

            # API: list with filters, one alert, suppressed states, ack, feedback.
            # The flood first: waiting for it may take longer than the 6 s after which a quiet anomaly resolves.
            async def folded_hits():
                r = await api.get(
                    "/v1/alerts", params={"filter": ['zone="flood"', 'flood="true"']}, headers=auth("viewer")
                )
                return r.json()["alerts"][0]["count"]

            deadline = time.monotonic() + 30
            while await folded_hits() < 9_980 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert await folded_hits() == 9_980  # every hit beyond the first 20 is counted, once
            # Anomalies resolve after 6 s of quiet here and the zone risk after 30 s, and a loaded machine takes
            # longer than that to get here: send them again, so the inhibited and the silenced ones are firing.
            await produce(settings, "risk", [(b"leaky", risk("leaky", 0.92))])
            await produce(settings, "anomalies", [(b"l1", anomaly("l1", "leaky")), (b"q1", anomaly("q1", "silenced"))])

            async def firing(zone):
                r = await api.get(
                    "/v1/alerts", params={"filter": f'zone="{zone}"', "status": "firing"}, headers=auth("viewer")
                )
                return r.json()["count"]

            deadline = time.monotonic() + 20
            while not (await firing("leaky") == 2 and await firing("silenced") == 1) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert await firing("leaky") == 2 and await firing("silenced") == 1
            r = await api.get("/v1/alerts", params={"filter": 'zone="grp"'}, headers=auth("viewer"))
            assert r.status_code == 200 and r.json()["count"] == 3
            silenced = (
                await api.get("/v1/alerts", params={"filter": 'zone="silenced"'}, headers=auth("viewer"))
            ).json()
            [q] = silenced["alerts"]
            assert q["state"] == "suppressed" and q["silencedBy"] == [silence_id]
            inhibited = (await api.get("/v1/alerts", params={"inhibited": "true"}, headers=auth("viewer"))).json()
            assert [a["labels"]["sensor"] for a in inhibited["alerts"]] == ["l1"]
            r = await api.get("/v1/alerts", params={"filter": "zone=~("}, headers=auth("viewer"))
            assert r.status_code == 400 and "filter" in r.json()["error"]
            fp = q["fingerprint"]
            assert (await api.get(f"/v1/alerts/{fp}", headers=auth("viewer"))).json()["labels"]["sensor"] == "q1"
            assert (await api.get("/v1/alerts/nope", headers=auth("viewer"))).status_code == 404
            assert (await api.post(f"/v1/alerts/{fp}/ack", json={}, headers=auth("viewer"))).status_code == 403
            r = await api.post(f"/v1/alerts/{fp}/ack", json={"comment": "on it"}, headers=auth("operator"))
            assert r.status_code == 200 and r.json()["status"] == "acknowledged"
            assert (await api.get(f"/v1/alerts/{fp}", headers=auth("viewer"))).json()["ack"]["by"] == "operator-user"
            r = await api.post("/v1/feedback", json={"fingerprint": fp, "verdict": "maybe"}, headers=auth("operator"))
            assert r.status_code == 400 and "verdict" in r.json()["error"]
            r = await api.post(
                "/v1/feedback",
                json={"fingerprint": fp, "verdict": "false_positive", "comment": "valve test"},
                headers=auth("operator"),
            )
            assert r.status_code == 200
            [fb] = await consume(settings, "feedback", 1, timeout=20)
            assert (
                fb["verdict"] == "false_positive"
                and fb["labels"]["zone"] == "silenced"
                and fb["author"] == "operator-user"
            )

            # expiring the silence: operator's own, admin may too; then gone from "active".
            r = await api.delete(f"/v1/silences/{silence_id}", headers=auth("operator"))
            assert r.status_code == 200 and r.json()["status"] == "expired"
            deadline = time.monotonic() + 20
            while (await silences())[0]["status"]["state"] != "expired" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert (await api.delete(f"/v1/silences/{silence_id}", headers=auth("admin"))).status_code == 409

            # resolve: the grp sensors stay quiet past resolve_after → each resolution told once, nothing repeated.
            def told_resolved():
                return [
                    (a["fingerprint"], a["endsAt"])
                    for h in groups_in(receiver.on("/hook"), "grp")
                    for a in h.json["alerts"]
                    if a["status"] == "resolved"
                ]

            await until(lambda: len(told_resolved()) >= 3, 30, "the grp resolutions")
            await asyncio.sleep(3)
            resolutions = told_resolved()
            assert len(resolutions) == 3 and len({fp for fp, _ in resolutions}) == 3
            assert all(ends != "0001-01-01T00:00:00Z" for _, ends in resolutions)
            grp = groups_in(receiver.on("/hook"), "grp")
            # the three resolve within ms of each other: told in one or two notifications, never a new firing one.
            assert grp[-1].json["status"] == "resolved" and len(grp) <= 3
            first_told = {a["fingerprint"] for a in grp[0].json["alerts"]}
            assert all({a["fingerprint"] for a in h.json["alerts"]} <= first_told for h in grp[1:])
            # the flood zone: later notifications only tell resolutions, never a new firing alert.
            flood_hits = groups_in(receiver.on("/hook"), "flood")
            told = {a["fingerprint"] for a in flood_hits[0].json["alerts"]}
            for later in flood_hits[1:]:
                assert {a["fingerprint"] for a in later.json["alerts"] if a["status"] == "firing"} <= told
            assert len(flood_hits) <= 3

            # resend-dlq: the dead receiver is fixed; the command drains the DLQ (reject still refuses → back on DLQ).
            receiver.behaviours["/dead"].always = None
            before = len(receiver.on("/dead"))
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services.alerts", "resend-dlq"],
                cwd=ROOT,
                env={**os.environ, **proc.env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert "1 sent, 1 failed" in out.stdout, out.stdout + out.stderr
            assert out.returncode == 1
            resent = receiver.on("/dead")[before:]
            assert [h.status for h in resent] == [200]
            assert resent[0].headers["Idempotency-Key"] == by_receiver["dead"]["id"]
            again = await consume(settings, "alerts.dlq", 3, timeout=10)
            assert len(again) == 3 and again[-1]["resend_attempts"] == 1
        finally:
            proc.stop()
            await api.aclose() if "api" in locals() else None
