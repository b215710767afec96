"""Ingest settings, the token check, body size limits, the CLI helpers."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest

from services.ingest.http import check_token, read_body
from services.ingest.mqtt import client_id, parse_mqtt_url, redact
from services.ingest.settings import IngestSettings
from shared.auth import TokenStore
from shared.cli import normalise_loglevel

ROOT = Path(__file__).resolve().parents[2]


def test_settings_from_env_and_the_token_never_shows() -> None:
    s = IngestSettings.from_env(
        env={
            "FLOWWATCH_INGEST_LATENESS_S": "120",
            "FLOWWATCH_INGEST_MQTT_ENABLED": "no",
            "FLOWWATCH_INGEST_TOKEN": "s3cret",
        }
    )
    assert s.lateness_s == 120.0 and s.mqtt_enabled is False
    assert s.resolved_token() == "s3cret"
    assert "s3cret" not in repr(s)
    with pytest.raises(ValueError, match="FLOWWATCH_INGEST_BATCH_SIZE"):
        IngestSettings.from_env(env={"FLOWWATCH_INGEST_BATCH_SIZE": "many"})


def test_token_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    s = IngestSettings.from_env(env={"FLOWWATCH_INGEST_TOKEN": "from-env", "FLOWWATCH_INGEST_TOKEN_FILE": str(path)})
    assert s.resolved_token() == "from-file"


VIEWER, OPERATOR, ADMIN = "viewer-token-0123456789", "operator-token-0123456789", "admin-token-0123456789"
API_TOKENS = TokenStore.load("T", env={"T": f"viewer:{VIEWER},operator:{OPERATOR},admin:{ADMIN}"})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Bearer right"}, None),
        ({"authorization": "bearer right"}, None),
        ({"X-Flowwatch-Token": "right"}, None),
        ({"X-Flowwatch-Token": "rïght"}, 403),
        ({"X-Flowwatch-Token": "r\udcffght"}, 403),
        ({"Authorization": f"Bearer {OPERATOR}"}, None),
        ({"X-Flowwatch-Token": ADMIN}, None),
        ({"Authorization": f"Bearer {VIEWER}"}, 403),
    ],
)
def test_check_token(headers, expected) -> None:
    """The device token, or an API token of role operator or above."""
    from multidict import CIMultiDict

    denied = check_token("right", API_TOKENS, CIMultiDict(headers))
    assert (denied.status if denied else None) == expected


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer right"}, {"X-Flowwatch-Token": "anything"}])
def test_check_token_is_closed_when_no_token_is_configured(headers) -> None:
    from multidict import CIMultiDict

    denied = check_token("", TokenStore(), CIMultiDict(headers))
    assert denied is not None and denied.status == 401
    assert "FLOWWATCH_INGEST_TOKEN" in str(denied) and "FLOWWATCH_API_TOKENS" in str(denied)


def test_check_token_with_api_tokens_only() -> None:
    from multidict import CIMultiDict

    assert check_token("", API_TOKENS, CIMultiDict({"Authorization": f"Bearer {OPERATOR}"})) is None
    denied = check_token("", API_TOKENS, CIMultiDict({"Authorization": "Bearer right"}))
    assert denied is not None and denied.status == 403


class _Body:
    def __init__(self, data: bytes, declared: int | None) -> None:
        self.content_length = declared
        self.content = asyncio.StreamReader()
        self.content.feed_data(data)
        self.content.feed_eof()


async def test_read_body_enforces_the_limit_declared_or_not() -> None:
    assert await read_body(_Body(b"x" * 10, 10), 10) == b"x" * 10
    assert await read_body(_Body(b"x" * 11, 11), 10) is None  # Content-Length says too big
    assert await read_body(_Body(b"x" * 200_000, None), 100_000) is None  # chunked, too big


def test_mqtt_url_parsing_and_redaction() -> None:
    assert parse_mqtt_url("mqtt://u:p%40ss@broker:1884") == {
        "hostname": "broker",
        "port": 1884,
        "username": "u",
        "password": "p@ss",
    }
    assert "p%40ss" not in redact("mqtt://u:p%40ss@broker:1884")
    with pytest.raises(ValueError):
        parse_mqtt_url("https://broker")
    tls = parse_mqtt_url("mqtts://broker")
    assert tls["port"] == 8883 and tls["tls_context"].verify_mode == ssl.CERT_REQUIRED
    assert redact("mqtts://u:p@broker") == "mqtts://***@broker:8883"


def test_mqtt_client_id_is_stable_across_restarts_and_persistent_by_default() -> None:
    default = IngestSettings()
    assert default.mqtt_persistent
    assert client_id(default, "t1.") == client_id(default, "t1.") == "t1.flowwatch-ingest"
    assert client_id(default.replace(mqtt_client_id="pod-3"), "t1.") == "pod-3"
    clean = default.replace(mqtt_persistent=False)
    assert client_id(clean, "t1.") != client_id(clean, "t1.")


def test_loglevel_names_of_the_logging_module_are_accepted() -> None:
    assert normalise_loglevel(["worker", "--loglevel", "warning"]) == ["worker", "--loglevel", "warn"]
    assert normalise_loglevel(["worker", "--loglevel=critical"]) == ["worker", "--loglevel=crit"]


def test_check_command_validates_offline(tmp_path: Path) -> None:
    good = {
        "sensor_id": "a",
        "ts": "2030-01-01T00:00:00Z",
        "site": "s",
        "zone": "z",
        "utility": "water",
        "asset": "pipe",
        "values": {"pressure": 400.0, "flow": 80.0},
    }
    path = tmp_path / "r.ndjson"
    path.write_bytes(orjson.dumps(good) + b"\n" + b'{"sensor_id": "b"}\n')
    env = {"PATH": "/usr/bin:/bin", "FLOWWATCH_INGEST_MAX_FUTURE_S": str(10 * 365 * 86400)}
    run = subprocess.run(
        [sys.executable, "-m", "services.ingest", "check", str(path)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert run.returncode == 1, run.stderr
    lines = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert [line["ok"] for line in lines] == [True, False]
    assert orjson.loads(run.stderr.splitlines()[-1])["reasons"]["missing_field"] == 1


async def test_mqtt_reconnects_with_capped_jittered_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.ingest.mqtt as mqtt_mod

    attempts: list[float] = []
    delays: list[float] = []

    class Refused:
        def __init__(self, *args: object, **kwargs: object) -> None:
            attempts.append(asyncio.get_running_loop().time())
            self._client = types.SimpleNamespace(manual_ack_set=lambda on: None)

        async def __aenter__(self) -> Refused:
            raise mqtt_mod.aiomqtt.MqttError("connection refused")

        async def __aexit__(self, *exc: object) -> None:
            return None

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 8:
            raise asyncio.CancelledError

    class FakeIngest:
        isettings = IngestSettings(mqtt_backoff_max_s=4.0)
        settings = types.SimpleNamespace(topic_prefix="t.")
        mappings: dict[str, object] = {}

        async def start(self) -> str:
            return ""

    monkeypatch.setattr(mqtt_mod.aiomqtt, "Client", Refused)
    monkeypatch.setattr(mqtt_mod.asyncio, "sleep", fake_sleep)
    bridge = mqtt_mod.MqttBridge(FakeIngest(), "mqtt://127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await bridge.run()
    assert len(attempts) == 8 and bridge.failures == 8
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0.8 * b <= d <= 1.2 * b for d, b in zip(delays, bases, strict=True)), delays
    ok, detail = bridge.check()
    assert ok and "connection refused" in detail  # MQTT down leaves ingest ready for HTTP and Kafka
