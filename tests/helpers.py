"""Test helpers that talk to the real stack: produce, consume, run a service as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.codec import dumps, loads
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
#: The admin API token every service started by a test accepts (the ``settings`` fixture sets it).
API_TOKEN = "tests-admin-token-" + os.urandom(8).hex()
#: Headers carrying it: every endpoint but /health, /ready, /metrics and /openapi.json needs a token.
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def produce(settings: Settings, topic: str, messages: list[tuple[bytes | None, Any]]) -> None:
    """Send ``(key, value)`` pairs to a (prefixed) topic; values that are not bytes go through orjson."""
    producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic(topic), value if isinstance(value, bytes) else dumps(value), key=key)
            for key, value in messages
        ]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume(settings: Settings, topic: str, count: int, timeout: float = 60.0, decode: bool = True) -> list[Any]:
    """Read ``count`` messages from the start of a topic, or all there are when ``timeout`` runs out."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        **settings.kafka_client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                out.extend(loads(r.value) if decode else r for r in records)
    finally:
        await consumer.stop()
    return out


async def collect(settings: Settings, topic: str, until: Callable[[list[Any]], bool], timeout: float = 30) -> list[Any]:
    """Every message of a topic from the start (orjson-decoded), until ``until(messages)`` holds or time runs out."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        **settings.kafka_client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for records in (await consumer.getmany(timeout_ms=300, max_records=10_000)).values():
                out.extend(loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return out


async def delete_topics(settings: Settings) -> None:
    """Delete every topic of the settings' (test- or bench-unique) prefix; best effort."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not settings.topic_prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await admin.delete_topics(names)
    except Exception:  # noqa: BLE001 - cleanup is best effort; the next run uses a new prefix anyway
        pass
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """``python -m services.<name> worker`` as a child process with the test's settings."""

    def __init__(
        self, service: str, settings: Settings, extra_env: dict[str, str] | None = None, args: list[str] | None = None
    ):
        self.service = service
        # Each process gets a free port so tests can run several services side by side.
        self.settings = settings.replace(service=service, web_port=settings.web_port or free_port())
        self.env = {**os.environ, **self.settings.to_env(), **(extra_env or {})}
        # Every service a test or bench starts accepts AUTH, besides any tokens configured; a caller that
        # names FLOWWATCH_API_TOKENS in extra_env gets exactly that (e.g. none, to see a closed service).
        tokens = self.env.get("FLOWWATCH_API_TOKENS", "")
        if "FLOWWATCH_API_TOKENS" not in (extra_env or {}) and API_TOKEN not in tokens:
            self.env["FLOWWATCH_API_TOKENS"] = ",".join(t for t in (tokens, f"admin:{API_TOKEN}:tests") if t)
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self.settings.data_dir) / f"{service}.log"

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.port}"

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.service}", "worker", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                last = r.json()
                if r.status_code == 200:
                    return last
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"{self.service} not ready after {timeout}s (last: {last}):\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ServiceProcess:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by ``pid`` (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", 4), ("tcp6", 6)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if family == 4:
                addr = ".".join(str(b) for b in raw[::-1])
            else:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            found.add((addr, int(port_hex, 16)))
    return found
