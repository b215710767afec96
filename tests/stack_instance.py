"""A second, private instance of the local stack (Kafka, Redis, Mosquitto) for tests that break it.

The fault suite stops Kafka and Redis on purpose. It must never do that to the stack the rest of
``make test`` (and every other developer on the machine) uses, so it starts its own with
``scripts/stack.sh up`` under a temporary ``FLOWWATCH_STACK_DIR`` and free ports, stops and starts
single components of it by the pids in that directory, and takes it down at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import Settings
from tests.helpers import ROOT, free_port

STACK_SH = ROOT / "scripts" / "stack.sh"


def reachable_by_postgres(path: Path) -> None:
    """Let the ``postgres`` user (the server runs as it when the tests run as root) reach a dir under /tmp."""
    for parent in (path.parent, *path.parent.parents):
        if str(parent) == "/tmp" or parent == parent.parent:
            break
        if parent.exists():
            parent.chmod(parent.stat().st_mode | 0o011)


@dataclass
class StackInstance:
    root: Path
    ports: dict[str, int] = field(
        default_factory=lambda: {
            "KAFKA_PORT": free_port(),
            "KAFKA_CONTROLLER_PORT": free_port(),
            "REDIS_PORT": free_port(),
            "MQTT_PORT": free_port(),
            "PG_PORT": free_port(),
        }
    )

    def __post_init__(self) -> None:
        reachable_by_postgres(self.root)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FLOWWATCH_STACK_DIR": str(self.root),
            "FLOWWATCH_STACK_TIMEOUT": "120",
            **{k: str(v) for k, v in self.ports.items()},
        }

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this instance."""
        return base.replace(
            broker_url=f"kafka://127.0.0.1:{self.ports['KAFKA_PORT']}",
            redis_url=f"redis://127.0.0.1:{self.ports['REDIS_PORT']}/0",
            mqtt_url=f"mqtt://127.0.0.1:{self.ports['MQTT_PORT']}",
        )

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(STACK_SH), command], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> None:
        """Start whatever of this instance is not running (all of it the first time)."""
        done = self._run("up", timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"stack.sh up failed for the fault stack:\n{done.stdout}\n{done.stderr}")

    def start_up(self) -> subprocess.Popen[str]:
        """``up`` in the background (the caller waits for it), so slow set-up can overlap it."""
        return subprocess.Popen(
            ["bash", str(STACK_SH), "up"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    async def warm_up(self, settings: Settings, topic: str, timeout: float = 120.0) -> None:
        """Joins a consumer group once, so the broker's group coordinator (``__consumer_offsets``) exists.

        On a brand-new broker the first groups race the creation of ``__consumer_offsets``; Faust workers
        that join then can assign partitions before their own new internal topics are in the metadata,
        and stay rebalancing. Services started after this join as they do on any running broker.
        """
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            settings.topic(topic), **settings.kafka_client_options(), group_id=f"{settings.topic_prefix}warm-up"
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            while not consumer.assignment() and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=500)
            if not consumer.assignment():
                raise RuntimeError(f"no consumer group could join the fault stack's broker within {timeout}s")
        finally:
            await consumer.stop()

    def down(self) -> None:
        self._run("down", timeout=120)

    def pid(self, component: str) -> int:
        return int((self.root / "pids" / f"{component}.pid").read_text().strip())

    def stop(self, component: str, timeout: float = 60.0) -> None:
        """SIGTERM one component (``kafka``, ``redis``, ``mosquitto``) of this instance and wait until it is gone."""
        pid = self.pid(component)
        # The pid file is this instance's: make sure the process is too before signalling it.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if str(self.root) not in cmdline and not cwd.startswith(str(self.root)):
            raise RuntimeError(f"pid {pid} in {self.root}/pids/{component}.pid is not this instance's {component}")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
