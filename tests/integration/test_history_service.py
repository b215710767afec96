"""The history service on the real Kafka and PostgreSQL: what is fed is kept once, episodes are
cut right across batches and restarts, a killed worker resumes without loss, the API serves it."""

from __future__ import annotations

import csv
import io
import time

import asyncpg
import httpx
import pytest

from tests.helpers import ServiceProcess, produce
from tests.history_helpers import anomaly, reading, scratch_database, wait_for

pytestmark = pytest.mark.timeout(300)

VIEWER = "viewer-token-0123456789"
OPERATOR = "operator-token-0123456789"
MIN = 60_000
GAP_S = 300


@pytest.fixture
async def db():
    async with scratch_database() as url:
        yield url


def _worker(settings, db: str) -> ServiceProcess:
    return ServiceProcess(
        "history",
        settings,
        extra_env={
            "FLOWWATCH_HISTORY_DATABASE_URL": db,
            "FLOWWATCH_HISTORY_EPISODE_GAP_S": str(GAP_S),
            "FLOWWATCH_HISTORY_BATCH_WITHIN_S": "0.1",
            "FLOWWATCH_API_TOKENS": f"viewer:{VIEWER}:vera,operator:{OPERATOR}:otto",
        },
    )


async def _count(db: str, sql: str, *args) -> int:
    conn = await asyncpg.connect(db)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def _rows(db: str, sql: str, *args) -> list[dict]:
    conn = await asyncpg.connect(db)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def _get(worker: ServiceProcess, path: str, token: str | None = VIEWER, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{worker.url}{path}", params=params, headers=headers, timeout=30)


def _post(worker: ServiceProcess, path: str, body: dict, token: str = OPERATOR) -> httpx.Response:
    return httpx.post(f"{worker.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


async def test_history_keeps_everything_once_and_serves_it(settings, db) -> None:
    # An hour ahead: an idle sink closes episodes by the wall clock too, and must not close the last one here.
    t0 = (int(time.time() * 1000) + 3600 * 1000) // MIN * MIN
    span = {"from": str(t0 - 3600 * 1000), "to": str(t0 + 24 * 3600 * 1000)}
    worker = _worker(settings, db).start()
    try:
        worker.wait_ready()
        # Readings: two sensors, 10 minutes, one reading every 10 s, with a duplicate of each sent again.
        readings = [
            (s.encode(), reading(s, t0 + i * 10_000, {"flow": float(i), "pressure": 3.0}))
            for s in ("a", "b")
            for i in range(60)
        ]
        await produce(settings, "readings.clean", readings)
        await produce(settings, "readings.clean", readings[:30])  # an upstream replay: counted once
        # Anomalies of sensor a: 3 close together, then (after a gap longer than GAP_S) 2 more, in two sends.
        first = [anomaly("a", t0 + k * MIN, 0.6 + k / 10) for k in range(3)]
        await produce(settings, "anomalies", [(b"a", x) for x in first[:2]])
        await produce(settings, "anomalies", [(b"a", first[2])])
        later = [anomaly("a", t0 + (3 + GAP_S // 60 + 2 + k) * MIN, 0.9, severity="critical") for k in range(2)]
        await produce(settings, "anomalies", [(b"a", x) for x in later])
        await produce(settings, "anomalies", [(b"a", first[0])])  # replayed anomaly: ignored
        await produce(
            settings,
            "aggregates",
            [
                (
                    b"s1/z1/water",
                    {
                        "window_start": t0 + k * MIN,
                        "window_end": t0 + (k + 1) * MIN,
                        "site": "s1",
                        "zone": "z1",
                        "utility": "water",
                        "count": 12,
                        "anomaly_count": 1 if k < 3 else 0,
                        "metrics": {"flow": {"mean": 1.0}},
                    },
                )
                for k in range(10)
            ],
        )
        await produce(
            settings,
            "alerts",
            [
                (
                    b"fp1",
                    {
                        "fingerprint": "fp1",
                        "status": "firing",
                        "labels": {"sensor": "a", "zone": "z1", "site": "s1"},
                        "starts_at": t0 + MIN,
                        "updated_at": t0 + MIN,
                    },
                )
            ],
        )
        await produce(
            settings,
            "risk",
            [
                (
                    b"z1",
                    {
                        "site": "s1",
                        "zone": "z1",
                        "utility": "water",
                        "ts": t0 + k * MIN,
                        "horizon_s": 900,
                        "probability": 0.8,
                        "incident_type": "leak",
                        "forecast": {"flow": {"q10": 1.0, "q50": 2.0, "q90": 3.0, "actual": 2.5}},
                        "loss": {
                            "ongoing": True,
                            "since_ms": t0,
                            "volume": 2.0 * (k + 1),
                            "cost": 1.0 * (k + 1),
                            "unit": "m3",
                            "currency": "EUR",
                        },
                    },
                )
                for k in range(5)
            ],
        )
        await produce(settings, "sensor.events", [(b"b", {"sensor_id": "b", "kind": "silent", "ts": t0 + 5 * MIN})])
        await produce(
            settings,
            "readings.quarantine",
            [
                (
                    None,
                    {
                        "payload": {"bad": i},
                        "source": "http",
                        "reasons": ["range: flow too high"],
                        "received_ms": t0 + 1000 * i,
                    },
                )
                for i in range(10)
            ],
        )
        await produce(
            settings,
            "reports",
            [(b"z1", {"id": "r1", "ts": t0 + 2 * MIN, "site": "s1", "zone": "z1", "text": "water on the street"})],
        )
        await produce(
            settings,
            "labels",
            [
                (
                    b"i1",
                    {
                        "incident_id": "i1",
                        "type": "leak",
                        "start_ms": t0,
                        "end_ms": t0 + 5 * MIN,
                        "site": "s1",
                        "zone": "z1",
                        "utility": "water",
                        "sensors": ["a"],
                    },
                )
            ],
        )
        await produce(settings, "anomalies", [(None, b"{not json")])

        async def settled():
            n = await _count(db, "SELECT count(*) FROM rejected")
            return n == 1 and await _count(db, "SELECT count(*) FROM episodes") == 2

        await wait_for(settled, what="everything written")

        # Rollups: each reading once, per sensor, metric and minute.
        assert await _count(db, "SELECT sum(count) FROM rollups WHERE metric = 'flow'") == 120
        row = (await _rows(db, "SELECT * FROM rollups WHERE sensor_id = 'a' AND metric = 'flow' AND minute = $1", t0))[
            0
        ]
        assert (row["count"], row["min"], row["max"], row["sum"]) == (6, 0.0, 5.0, 15.0)
        assert await _count(db, "SELECT count(*) FROM anomalies") == 5
        episodes = await _rows(db, "SELECT * FROM episodes ORDER BY start_ts")
        assert [(e["start_ts"], e["end_ts"], e["anomaly_count"]) for e in episodes] == [
            (t0, t0 + 2 * MIN, 3),
            (later[0]["ts"], later[1]["ts"], 2),
        ]
        assert episodes[0]["state"] == "closed" and episodes[1]["state"] == "open"
        assert episodes[0]["alert_fingerprint"] == "fp1" and episodes[0]["label_id"] == "i1"
        assert episodes[0]["report_id"] == "r1"
        assert episodes[1]["severity"] == "critical" and episodes[1]["peak_score"] == 0.9
        assert await _count(db, "SELECT sum(count) FROM quarantine_counts WHERE reason = 'range'") == 10
        assert await _count(db, "SELECT count(*) FROM quarantine_samples") == 3  # bounded per minute

        # --- API -------------------------------------------------------------------------------
        assert _get(worker, "/v1/history/episodes", token=None).status_code == 401
        assert _get(worker, "/v1/history/episodes", token="wrong-token-0123456789").status_code == 401
        assert _post(worker, f"/v1/history/episodes/{episodes[0]['id']}/ack", {}, token=VIEWER).status_code == 403
        assert _get(worker, "/openapi.json").json()["paths"]["/v1/history/series"]

        rates = _get(worker, "/v1/history/anomaly-rates", by="site,hour", **span).json()["rows"]
        assert sum(r["anomalies"] for r in rates) == 3 and sum(r["readings"] for r in rates) == 120
        bad = _get(worker, "/v1/history/anomaly-rates", by="planet")
        assert bad.status_code == 400 and bad.json()["parameter"] == "by"
        assert _get(worker, "/v1/history/episodes", limit="100000").json()["parameter"] == "limit"

        points = _get(
            worker,
            "/v1/history/series",
            sensor="a",
            metric="flow",
            **{"from": str(t0), "to": str(t0 + 10 * MIN)},
            step="5m",
        ).json()["points"]
        assert [(p["ts"], p["count"], p["min"], p["max"]) for p in points] == [
            (t0, 30, 0.0, 29.0),
            (t0 + 5 * MIN, 30, 30.0, 59.0),
        ]
        zone = _get(
            worker,
            "/v1/history/series",
            zone="z1",
            metric="flow",
            **{"from": str(t0), "to": str(t0 + 10 * MIN)},
            step="5m",
        ).json()
        assert zone["band"][0]["q50"] == 2.0 and zone["points"][0]["count"] == 60

        listed = _get(worker, "/v1/history/episodes", severity="critical", **span).json()["items"]
        assert [e["id"] for e in listed] == [episodes[1]["id"]]
        one = _get(worker, f"/v1/history/episodes/{episodes[0]['id']}").json()
        assert len(one["anomalies"]) == 3

        eid = episodes[0]["id"]
        assert _post(worker, f"/v1/history/episodes/{eid}/ack", {"note": "on it"}).json()["ack_by"] == "otto"
        assert _post(worker, f"/v1/history/episodes/{eid}/comments", {"text": "valve 7"}).status_code == 200
        assert (
            _post(worker, f"/v1/history/episodes/{eid}/assign", {"assignee": "crew 2"}).json()["assignee"] == "crew 2"
        )
        verdict = _post(worker, f"/v1/history/episodes/{eid}/verdict", {"verdict": "true_positive"})
        assert verdict.json()["verdict"] == "true_positive"
        assert _post(worker, f"/v1/history/episodes/{eid}/verdict", {"verdict": "maybe"}).status_code == 400
        detail = _get(worker, f"/v1/history/episodes/{eid}").json()
        assert [c["text"] for c in detail["comments"]] == ["valve 7"]
        log = _get(worker, "/v1/history/alerts", fingerprint="fp1", **span).json()["items"]
        assert {e["kind"] for e in log} == {"state", "ack", "comment", "assign", "verdict"}
        # the verdict also went to `feedback`, and came back into the store from there
        await wait_for(lambda: _count(db, "SELECT count(*) FROM feedback WHERE fingerprint = 'fp1'"), what="feedback")

        # the console's notes on an alert, written with an operator's (the console's delegate) token
        assert (
            _post(worker, "/v1/history/alerts/fp1/notes", {"kind": "comment", "note": "crew sent"}).json()["author"]
            == "otto"
        )
        assert _post(worker, "/v1/history/alerts/fp1/notes", {"kind": "assign", "note": "crew 3"}).status_code == 200
        assert _post(worker, "/v1/history/alerts/fp1/notes", {"kind": "shout"}).status_code == 400
        assert _post(worker, "/v1/history/alerts/fp1/notes", {"kind": "ack"}, token=VIEWER).status_code == 403
        notes = _get(worker, "/v1/history/alerts/annotations", fingerprints="fp1,nope").json()["items"]
        assert (notes[0]["fingerprint"], notes[0]["assignee"], notes[0]["verdict"]) == (
            "fp1",
            "crew 3",
            "true_positive",
        )
        assert "crew sent" in [c["text"] for c in notes[0]["comments"]]
        assert notes[1] == {"fingerprint": "nope", "comments": [], "assignee": None, "verdict": None}
        # public reports and their triage (operators only: they hold the public's names and contacts)
        assert _get(worker, "/v1/history/reports").status_code == 403
        reports = _get(worker, "/v1/history/reports", token=OPERATOR).json()["items"]
        assert [(r["id"], r["status"], r["text"]) for r in reports] == [("r1", None, "water on the street")]
        triaged = _post(worker, "/v1/history/reports/r1/triage", {"status": "confirmed", "note": "seen"}).json()
        assert (triaged["status"], triaged["triage_by"], triaged["triage_note"]) == ("confirmed", "otto", "seen")
        assert _get(worker, "/v1/history/reports", token=OPERATOR, status="new").json()["items"] == []
        assert _post(worker, "/v1/history/reports/nope/triage", {"status": "rejected"}).status_code == 404
        assert _post(worker, "/v1/history/reports/r1/triage", {"status": "maybe"}).status_code == 400
        await wait_for(
            lambda: _count(db, "SELECT count(*) FROM feedback WHERE fingerprint = 'report-r1'"), what="report verdict"
        )

        losses = _get(worker, "/v1/history/zones/z1/losses", **span).json()["days"]
        assert sum(d["volume"] for d in losses) == pytest.approx(10.0) and sum(
            d["cost"] for d in losses
        ) == pytest.approx(5.0)
        # what the console reads through this API rather than from the tables
        risk = _get(worker, "/v1/history/risk", zone="z1", **span).json()["points"]
        assert [(r["ts"], r["probability"], r["incident_type"]) for r in risk] == [
            (t0 + k * MIN, 0.8, "leak") for k in range(5)
        ]
        assert _get(worker, "/v1/history/risk", **span).json()["parameter"] == "zone"
        summary = _get(worker, "/v1/history/summary", **span).json()
        assert summary["anomalies"] == 5 and summary["incidents"] == 1 and summary["open_incident_sites"] == ["s1"]
        assert summary["loss"]["unit"] == "m3" and summary["loss"]["currency"] == "EUR"
        profile = _get(worker, "/v1/history/sensors/a/profile", **span).json()
        assert profile["usual"]["flow"]["mean"] == pytest.approx(29.5) and profile["usual"]["pressure"]["std"] == 0
        assert profile["reasons"] and _get(worker, "/v1/history/sensors/zz/profile", **span).json()["usual"] == {}
        ranked = _get(worker, "/v1/history/report", **span).json()["zones"]
        assert [(z["site"], z["zone"], z["incidents"], z["risk_max"]) for z in ranked] == [("s1", "z1", 1, 0.8)]
        assert _get(worker, "/v1/history/report", token=None, **span).status_code == 401
        frames = _get(worker, "/v1/history/playback", **{"from": str(t0), "to": str(t0 + 10 * MIN)}, step="5m").json()[
            "frames"
        ]
        assert len(frames) == 2 and frames[0]["zones"][0]["status"] == "at_risk"

        export = _get(worker, "/v1/history/export.csv", what="anomalies", **span)
        assert export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert len(rows) == 5 and rows[0]["sensor_id"] == "a"
        empty = _get(worker, "/v1/history/export.csv", what="reports", zone="nowhere", **span)
        assert empty.text.splitlines()[0].startswith("id,ts,site")
        assert _get(worker, "/v1/history/export.csv", what="nothing").json()["parameter"] == "what"

        # --- a killed worker resumes without loss and without writing anything twice -------------
        worker.kill()
        more = [(b"a", reading("a", t0 + 600_000 + i * 1000, {"flow": 1.0})) for i in range(500)]
        await produce(settings, "readings.clean", more)
        await produce(settings, "anomalies", [(b"a", anomaly("a", later[1]["ts"] + MIN, 0.95))])
        worker = _worker(settings, db).start()
        worker.wait_ready()

        async def caught_up():
            return await _count(db, "SELECT coalesce(sum(count), 0) FROM rollups WHERE metric = 'flow'") >= 620

        await wait_for(caught_up, what="the restarted worker catching up")
        assert await _count(db, "SELECT sum(count) FROM rollups WHERE metric = 'flow'") == 620
        assert await _count(db, "SELECT count(*) FROM anomalies") == 6
        after = await _rows(db, "SELECT * FROM episodes ORDER BY start_ts")
        assert len(after) == 2 and after[1]["anomaly_count"] == 3 and after[1]["end_ts"] == later[1]["ts"] + MIN

        # A stop is quiet: the sink stops reading before it lets go of Kafka (it used to find its consumer gone,
        # log "history sink: AttributeError ...; retrying" and connect to Kafka and PostgreSQL again while exiting).
        logged = worker.log_path.stat().st_size
        worker.stop()
        assert worker.proc is not None and worker.proc.returncode is not None
        with open(worker.log_path, "rb") as f:
            f.seek(logged)
            at_stop = f.read().decode(errors="replace")
        assert "history sink:" not in at_stop and "Traceback" not in at_stop, at_stop[-2000:]
    finally:
        worker.stop()
