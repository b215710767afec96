"""scripts/stack.sh on its own ports and directory: up is idempotent, down leaves no process behind."""

import os
import subprocess
from pathlib import Path

from tests.helpers import ROOT, free_port
from tests.stack_instance import reachable_by_postgres


def _stack(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts/stack.sh"), cmd], env=env, capture_output=True, text=True, timeout=300
    )


def _processes_under(directory: Path) -> list[str]:
    """Command lines of live processes that mention the stack directory (Kafka, Redis, Mosquitto, PostgreSQL)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_second_stack_up_twice_then_down_leaves_nothing(tmp_path) -> None:
    stack_dir = tmp_path / "stack"
    reachable_by_postgres(stack_dir)
    env = {
        **os.environ,
        "FLOWWATCH_STACK_DIR": str(stack_dir),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "REDIS_PORT": str(free_port()),
        "MQTT_PORT": str(free_port()),
        "PG_PORT": str(free_port()),
    }
    try:
        first = _stack("up", env)
        assert first.returncode == 0, first.stdout + first.stderr
        second = _stack("up", env)
        assert second.returncode == 0, second.stdout + second.stderr
        status = _stack("status", env)
        assert status.returncode == 0
        states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if line.strip()}
        assert states == {"kafka": "running", "redis": "running", "mosquitto": "running", "postgres": "running"}, (
            status.stdout
        )
        assert _processes_under(stack_dir), "the stack's processes should be visible while it runs"
    finally:
        down = _stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _processes_under(stack_dir) == []
    after = _stack("status", env)
    assert after.returncode == 1
    assert all(line.split()[1] == "stopped" for line in after.stdout.splitlines() if line.strip()), after.stdout
