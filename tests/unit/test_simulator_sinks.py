"""The HTTP sink against a real local HTTP server, and the file sink through the CLI."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from services.simulator import FaultConfig, Network, SimConfig, Simulator
from services.simulator.cli import main
from services.simulator.runner import Runner, RunOptions
from services.simulator.sinks import HttpSink, SinkError
from shared.timeutil import parse_time_ms

START = "2024-03-04T00:00:00Z"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ingest:
    """A stand-in for ingest's endpoint: NDJSON in, counts out; fails once, refuses big bodies."""

    def __init__(self, token: str = "s3cret", max_lines: int = 300):
        self.token = token
        self.max_lines = max_lines
        self.lines: list[bytes] = []
        self.requests = 0
        self.failed_once = False
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if not self.failed_once:
            self.failed_once = True
            return web.json_response({"error": "warming up"}, status=503)
        body = await request.read()
        if request.headers["content-type"] == "application/x-ndjson":
            lines = [line for line in body.split(b"\n") if line]
        else:
            assert request.headers["content-type"] == "application/json"
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.lines.append(body)
                self.refused += 1
                return web.json_response({"error": "not JSON"}, status=400)
            lines = [orjson.dumps(item) for item in parsed] if isinstance(parsed, list) else [body]
        if len(lines) > self.max_lines:
            return web.json_response({"error": "too large"}, status=413)
        self.lines.extend(lines)
        ok = sum(1 for line in lines if _json(line))
        return web.json_response({"accepted": ok, "quarantined": len(lines) - ok, "duplicates": 0}, status=202)


def _json(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


async def _serve(ingest: Ingest) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/readings", ingest.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1/readings"


@pytest.mark.parametrize("fmt", ["ndjson", "json"])
async def test_http_sink_retries_splits_and_counts_what_ingest_answered(fmt: str) -> None:
    ingest = Ingest()
    server, url = await _serve(ingest)
    try:
        sim = Simulator(Network.default(7), SimConfig(faults=FaultConfig.preset("stress")), seed=9)
        sink = HttpSink(url, token="s3cret", batch_size=500, concurrency=3, fmt=fmt)
        await sink.start()
        try:
            report = await Runner(
                sim.engine(), sink, RunOptions(start_ms=parse_time_ms(START), speed=None, max_messages=2500)
            ).run()
        finally:
            await sink.stop()
    finally:
        await server.cleanup()
    expected = []
    for _, payload in sim.payloads(START):
        expected.append(payload)
        if len(expected) == 2500:
            break
    assert report.messages == sink.stats.sent == sink.stats.delivered == 2500
    if fmt == "ndjson":
        assert sorted(ingest.lines) == sorted(expected), "every reading arrived once, byte for byte"
    else:  # array items are re-serialised by the stand-in; broken payloads arrive alone, as they are
        assert sorted(ingest.lines) == sorted(orjson.dumps(orjson.loads(p)) if _json(p) else p for p in expected)
    detail = sink.stats.detail
    assert detail["status"]["503"] == 1 and detail["status"]["413"] >= 1
    assert detail["accepted"] + detail["quarantined"] + detail["rejected"] == 2500
    # The stand-in quarantines NDJSON lines that are not JSON; in array mode those are refused with 400 instead.
    assert (detail["quarantined"] > 0) == (fmt == "ndjson")
    assert detail["rejected"] == ingest.refused == (0 if fmt == "ndjson" else sum(not _json(p) for p in expected))


async def test_http_sink_stops_on_a_refused_token() -> None:
    ingest = Ingest(token="right")
    server, url = await _serve(ingest)
    try:
        sink = HttpSink(url, token="wrong", batch_size=10)
        await sink.start()
        await sink.send([0], [b'{"sensor_id": "x"}'])
        with pytest.raises(SinkError, match="401"):
            await sink.flush()
        await sink.client.aclose()
    finally:
        await server.cleanup()
    assert sink.stats.failed == 1 and sink.stats.delivered == 0


def test_cli_file_sink_writes_what_it_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "raw.ndjson"
    labels = tmp_path / "labels.csv"
    code = main(
        ["run", "--sink", "file", "--out", str(out), "--speed", "max", "--count", "3000", "--start", START,
         "--faults", "harsh", "--anomaly-fraction", "0.15", "--labels", str(labels)]
    )  # fmt: skip
    assert code == 0
    report = orjson.loads(capsys.readouterr().out)
    lines = out.read_bytes().splitlines()
    assert len(lines) == report["messages"] == report["delivery"]["delivered"] == 3000
    unparseable = sum(1 for line in lines if not _json(line))
    assert 0 < unparseable <= report["by_fault"]["corrupt"]
    assert len(labels.read_text().splitlines()) == report["labels"] + 1


def test_cli_history_writes_parquet_and_labels(tmp_path: Path, capsys) -> None:
    import pandas as pd

    out = tmp_path / "h.parquet"
    assert main(["history", "--duration", "2h", "--out", str(out), "--anomaly-fraction", "0.1", "--no-progress"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    df = pd.read_parquet(out)
    assert len(df) == summary["rows"] > 100_000
    labels = [orjson.loads(line) for line in Path(summary["labels"]).read_bytes().splitlines()]
    assert len(labels) == summary["incidents"] > 0
    assert set(df.loc[df["anomaly"], "incident_id"].astype(str)) == {lab["incident_id"] for lab in labels}


def test_cli_wide_csv_is_the_detector_format(tmp_path: Path, capsys) -> None:
    import pandas as pd

    out = tmp_path / "train.csv"
    args = [
        "history",
        "--duration",
        "6h",
        "--step",
        "60s",
        "--format",
        "wide-csv",
        "--zone",
        "riverside-plant",
        "--out",
        str(out),
    ]
    assert main([*args, "--no-progress"]) == 0
    capsys.readouterr()
    data = pd.read_csv(out)
    assert data.columns[0] == "timestamp" and len(data) == 360
    assert data["timestamp"].iloc[0] == "2024-03-04T00:00:00Z"
    assert all(c.startswith("riverside-plant-") for c in data.columns[1:]) and data.shape[1] > 20
    rows = pd.read_csv(tmp_path / "train.labels.csv")
    assert len(rows) == len(data) and set(rows["anomaly"]) <= {0, 1}


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["history", "--duration", "soon", "--out", str(tmp_path / "x.parquet")]) == 2  # usage
    assert "not a duration" in capsys.readouterr().err
    assert main(["run", "--sink", "file", "--count", "1"]) == 2
    assert "--out" in capsys.readouterr().err
