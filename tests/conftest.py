"""Fixtures: the real stack (started once per run), isolated topics per test.

Integration tests never skip: if Kafka, Redis or Mosquitto cannot be reached the
run fails with the reason. ``make test`` starts the stack before pytest; running
pytest by hand starts it here if it is not up.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.topics import create_all
from tests.helpers import API_TOKEN, delete_topics

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = "integration" if "integration" in item.path.parts else "unit"
        item.add_marker(getattr(pytest.mark, kind))


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The real stack on 127.0.0.1; started by scripts/stack.sh when not already up."""
    base = Settings.from_env()
    if subprocess.run(["bash", str(ROOT / "scripts/stack.sh"), "status"], capture_output=True).returncode != 0:
        up = subprocess.run(["bash", str(ROOT / "scripts/stack.sh"), "up"], capture_output=True, text=True)
        if up.returncode != 0:
            pytest.fail(f"the local stack could not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
    return base


@pytest.fixture
async def settings(stack: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings with a unique topic prefix, its topics created, and state under tmp_path."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    s = stack.replace(
        api_tokens=f"admin:{API_TOKEN}:tests",
        topic_prefix=prefix,
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models",
        partitions=2,
    )
    await create_all(s, out=open("/dev/null", "w"))
    yield s
    await delete_topics(s)
