"""Every service starts, joins its group, answers /health, /ready, /metrics, and listens on loopback only."""

import httpx
import pytest

from tests.helpers import ServiceProcess, listening_addresses

SERVICES = ["ingest", "detector", "forecaster", "alerts"]


def _give_forecaster_a_model(model_dir) -> None:
    """The forecaster is ready only once a model is loaded: train a tiny one (about 10 s)."""
    from services.forecaster.offline import synthetic
    from services.forecaster.offline.training import train
    from services.forecaster.settings import ForecasterSettings

    history = synthetic.generate(days=1.5, zones={"water": 1, "energy": 1, "gas": 1}, incident_rate_per_day=4.0, seed=1)
    train(history, ForecasterSettings(), model_dir, epochs=2, seed=1, promote="production")


@pytest.mark.parametrize("service", SERVICES)
async def test_service_boots_ready_and_binds_loopback_only(settings, service) -> None:
    if service == "forecaster":
        _give_forecaster_a_model(settings.model_dir)
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
