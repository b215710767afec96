"""Every HTTP API against its own OpenAPI document, on a real running worker: schemathesis fuzzing.

For each service (ingest, detector, forecaster, alerts; the console with history and alerts behind it)
the test starts a worker on the real stack, reads the document the worker serves at ``/openapi.json``
(no token needed) and runs schemathesis on every operation: valid requests from the schemas (positive) and invalid ones (negative), with
an admin token, a fixed number of examples and a fixed seed (hypothesis ``derandomize``). Every
response must be no 5xx, a status and content type the document declares, and a body matching
its schema. Before that, the service is checked closed: Faust's own ``/table``, ``/router``,
``/graph`` and statistics views answer 404, and its API answers 401 without a token.

The counts (examples per service, 5xx, check failures) are printed and asserted; the README and
docs/reliability.md report them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import AUTH, ServiceProcess

#: Examples per API and generation mode, spread over its guarded operations (at least MIN_PER_OPERATION each).
EXAMPLES_PER_API = 160
MIN_PER_OPERATION = 12
OPEN_PATHS = ("/health", "/ready", "/metrics", "/openapi.json")
PROBES = ("/health", "/ready")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Faust's built-in views: all off (they serve table contents and topology without a token). Its index
#: "/" stays: it answers {"status": "OK"} and nothing else.
FAUST_VIEWS = ("/table/", "/table/sensors", "/table/silences/x", "/router/", "/router/sensors/key/x", "/graph/")
#: One guarded path per service, to see the 401 without a token.
GUARDED = {
    "ingest": ("POST", "/v1/readings"),
    "detector": ("GET", "/detector/stats"),
    "forecaster": ("GET", "/zones/z1"),
    "alerts": ("GET", "/v1/alerts"),
}
ENV = {
    "ingest": {"FLOWWATCH_INGEST_HTTP_WAIT_S": "2", "FLOWWATCH_INGEST_MQTT_ENABLED": "false"},
    "alerts": {"FLOWWATCH_ALERTS_SILENCE_MAX_COUNT": "100000"},
}

pytestmark = pytest.mark.timeout(900)


@dataclass
class Tally:
    examples: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.examples.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def wait_serving(proc: ServiceProcess, timeout: float = 120.0) -> None:
    """The web server answers (the forecaster is not *ready* without a model, but its API is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.service} exited:\n{proc.tail()}")
        try:
            if httpx.get(f"{proc.url}/health", timeout=2).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{proc.service} web server not up after {timeout}s:\n{proc.tail()}")


def check(url: str, name: str, mode: GenerationMode, case: Any, tally: Tally) -> None:
    """One generated request: sent with an admin token, its answer checked; failures are collected."""
    tally.examples[name] = tally.examples.get(name, 0) + 1
    try:
        response = case.call(base_url=url, headers=AUTH)
    except Exception as exc:  # noqa: BLE001 - a refused or dropped connection is a crash: counted, reported
        tally.failures.append(f"{name}: request failed: {type(exc).__name__}: {exc}")
        return
    probe = case.operation.path in PROBES
    if not probe:
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
    if mode is GenerationMode.NEGATIVE and response.status_code < 500:
        return  # invalid input: any 4xx (or a lenient 2xx) is fine, a 5xx is not
    try:
        # A probe's 503 is its documented answer (a forecaster without a model is not ready), not an error.
        case.validate_response(response, checks=CHECKS[1:] if probe else CHECKS, headers=AUTH)
    except Exception as exc:  # noqa: BLE001 - schemathesis raises its check failures
        tally.failures.append(f"{name}: HTTP {response.status_code}: {str(exc)[:400]}")


def runner(url: str, name: str, mode: GenerationMode, tally: Tally) -> Any:
    def run(case: Any) -> None:
        check(url, name, mode, case, tally)

    return run


def fuzz(url: str, document: dict[str, Any], tally: Tally) -> None:
    """Every operation of the document, positive then negative, a fixed seed and number of examples each."""
    schema = schemathesis.openapi.from_dict(document)
    operations = [r.ok() for r in schema.get_all_operations()]
    guarded = [op for op in operations if op.path not in OPEN_PATHS]
    per_operation = max(MIN_PER_OPERATION, EXAMPLES_PER_API // max(1, len(guarded)))
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            name = f"{op.method.upper()} {op.path} ({mode.value})"
            run = given(case=op.as_strategy(generation_mode=mode))(runner(url, name, mode, tally))
            try:
                hsettings(
                    max_examples=per_operation if op in guarded else 3,
                    derandomize=True,
                    database=None,
                    deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )(run)()
            except Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, name


@pytest.mark.parametrize("service", list(GUARDED))
async def test_each_api_is_closed_and_survives_schemathesis(settings, service) -> None:
    proc = ServiceProcess(service, settings, extra_env=ENV.get(service, {}))
    proc.start()
    try:
        await asyncio.to_thread(wait_serving, proc)
        if service != "forecaster":  # not ready without a trained model; its API answers all the same
            await asyncio.to_thread(proc.wait_ready, 120)
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            for path in FAUST_VIEWS:
                r = await client.get(path)
                assert r.status_code == 404, f"{service} {path}: {r.status_code} {r.text[:200]}"
            method, path = GUARDED[service]
            r = await client.request(method, path, content=b"[]")
            assert r.status_code == 401 and "error" in r.json(), r.text
            r = await client.get("/openapi.json")
            assert r.status_code == 200
            document = r.json()
        tally = Tally()
        await asyncio.to_thread(fuzz, proc.url, document, tally)
        print(
            f"\nschemathesis {service}: {tally.total} examples over {len(tally.examples)} operation/mode pairs; "
            f"statuses {dict(sorted(tally.statuses.items()))}; 5xx {tally.server_errors}; "
            f"check failures {len(tally.failures)}"
        )
        assert tally.server_errors == 0, tally.failures[:10]
        assert not tally.failures, "\n".join(tally.failures[:10])
        assert tally.total >= EXAMPLES_PER_API  # the fuzzing really ran
        assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
        assert httpx.get(f"{proc.url}/health", timeout=5).status_code == 200
    finally:
        proc.stop()


async def test_ingest_with_no_token_configured_refuses_every_reading(settings) -> None:
    """Closed by default: no device token and no API token means 401 for everyone, saying what to set."""
    env = {"FLOWWATCH_API_TOKENS": "", "FLOWWATCH_INGEST_TOKEN": "", "FLOWWATCH_INGEST_MQTT_ENABLED": "false"}
    with ServiceProcess("ingest", settings, extra_env=env) as proc:
        for headers in ({}, AUTH, {"X-Flowwatch-Token": "anything-at-all"}):
            r = httpx.post(f"{proc.url}/v1/readings", content=b"[]", headers=headers, timeout=10)
            assert r.status_code == 401, r.text
            assert "FLOWWATCH_INGEST_TOKEN" in r.json()["error"] and "FLOWWATCH_API_TOKENS" in r.json()["error"]
        assert httpx.get(f"{proc.url}/ready", timeout=10).status_code == 200  # probes stay open


async def test_console_api_survives_schemathesis(settings) -> None:
    """The console against its document, with the history and alerts APIs it calls running (an upstream that
    does not answer is a documented 502, not what this test is about). The live feed is endless: not fuzzed."""
    from tests.history_helpers import scratch_database

    async with scratch_database() as db:
        history = ServiceProcess("history", settings, extra_env={"FLOWWATCH_HISTORY_DATABASE_URL": db}).start()
        alerts = ServiceProcess("alerts", settings, extra_env=ENV["alerts"]).start()
        console = None
        try:
            await asyncio.to_thread(history.wait_ready, 180)
            env = {
                "FLOWWATCH_CONSOLE_DATABASE_URL": db,
                "FLOWWATCH_CONSOLE_HISTORY_URL": history.url,
                "FLOWWATCH_CONSOLE_ALERTS_URL": alerts.url,
                "FLOWWATCH_CONSOLE_METRICS_TARGETS": f"history={history.url},alerts={alerts.url}",
            }
            console = ServiceProcess("console", settings, extra_env=env).start()
            await asyncio.to_thread(console.wait_ready, 180)
            await asyncio.to_thread(alerts.wait_ready, 180)
            assert httpx.get(f"{console.url}/api/alerts", timeout=10).status_code == 401
            for path in FAUST_VIEWS:
                assert httpx.get(f"{console.url}{path}", timeout=10).status_code in (404, 503), path
            document = httpx.get(f"{console.url}/openapi.json", timeout=10).json()
            del document["paths"]["/api/live"]
            tally = Tally()
            await asyncio.to_thread(fuzz, console.url, document, tally)
            print(
                f"\nschemathesis console: {tally.total} examples over {len(tally.examples)} operation/mode pairs; "
                f"statuses {dict(sorted(tally.statuses.items()))}; 5xx {tally.server_errors}; "
                f"check failures {len(tally.failures)}"
            )
            assert tally.server_errors == 0, tally.failures[:10]
            assert not tally.failures, "\n".join(tally.failures[:10])
            assert tally.total >= EXAMPLES_PER_API
            assert console.proc is not None and console.proc.poll() is None, console.tail()
        finally:
            for proc in (console, alerts, history):
                if proc is not None:
                    proc.stop()
