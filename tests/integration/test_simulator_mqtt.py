"""The simulator publishing to the real Mosquitto: one message per reading on <root>/<site>/<sensor_id>."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from urllib.parse import urlparse

import aiomqtt

from services.simulator import FaultConfig, Network, SimConfig, Simulator
from services.simulator.settings import SimulatorSettings
from shared.settings import Settings
from tests.helpers import ROOT

START = "2024-03-04T00:00:00Z"


async def test_mqtt_run_delivers_what_it_reports(stack: Settings) -> None:
    root = f"fwtest/{uuid.uuid4().hex[:8]}"
    url = urlparse(stack.mqtt_url)
    received: list[aiomqtt.Message] = []
    count = 800
    async with aiomqtt.Client(url.hostname or "127.0.0.1", url.port or 1883) as client:
        await client.subscribe(f"{root}/#", qos=1)
        env = {**os.environ, **stack.to_env(), "PYTHONPATH": str(ROOT), "FLOWWATCH_SIMULATOR_MQTT_TOPIC": root}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.simulator", "--log-level", "WARNING",
            "run", "--sink", "mqtt", "--speed", "max", "--count", str(count), "--start", START,
            "--seed", "4", "--faults", "realistic",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

        async def collect() -> None:
            async for message in client.messages:
                received.append(message)
                if len(received) >= count:
                    return

        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        try:
            await asyncio.wait_for(collect(), 30)
        except TimeoutError:
            pass
    import orjson

    report = orjson.loads(stdout)
    assert report["messages"] == report["delivery"]["delivered"] == count == len(received)
    sim = Simulator(
        Network.default(4),
        SimConfig(incident_scale=SimulatorSettings().incident_scale, faults=FaultConfig.preset("realistic")),
        seed=4,
    )
    expected = []
    for key, payload in sim.payloads(START):
        expected.append((key, payload))
        if len(expected) == count:
            break
    sites = {s.id: s.site for s in sim.network.sensors}
    want = sorted((f"{root}/{sites[k.decode()]}/{k.decode()}", p) for k, p in expected)
    got = sorted((str(m.topic), bytes(m.payload)) for m in received)
    assert got == want
