"""Every service starts, joins its group, answers /health, /ready, /metrics, and listens on loopback only."""

import httpx
import pytest

from tests.helpers import ServiceProcess, listening_addresses

SERVICES = ["ingest", "detector", "forecaster", "alerts"]


@pytest.mark.parametrize("service", SERVICES)
async def test_service_boots_ready_and_binds_loopback_only(settings, service) -> None:
    with ServiceProcess(service, settings) as proc:
        ready = httpx.get(f"{proc.url}/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True and body["joined_group"] is True and body["tables_recovered"] is True

        health = httpx.get(f"{proc.url}/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"

        metrics = httpx.get(f"{proc.url}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert f'flowwatch_ready{{service="{service}"}} 1.0' in metrics.text

        listening = listening_addresses(proc.proc.pid)
        assert ("127.0.0.1", proc.settings.port) in listening
        assert all(addr in ("127.0.0.1", "::1") for addr, _ in listening), listening
