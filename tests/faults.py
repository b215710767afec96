"""Harness of the fault suite: the whole pipeline on a private stack, the simulator, and exact accounting.

What "sent" means: the simulator (``run --sink kafka --faults clean``) hands ``count`` messages to its
Kafka sink, each a distinct valid reading. The same command with ``--sink file --speed max`` writes the
very same messages to a file (same seed, start and rate), which the harness reads as the ground truth:
the set of ``(sensor_id, ts)`` that was sent, with ``ts`` parsed the way ingest parses it. A reading is
*scored* when a record for its key is on ``scores``, *quarantined* when ingest put it on
``readings.quarantine``; *lost* when neither; a *duplicate* is every score record beyond the first of its
key (processing is at-least-once; consumers dedup by key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from services.ingest.validation import parse_ts
from shared.settings import Settings
from tests.helpers import ROOT, ServiceProcess
from tests.integration.test_alerts_harness import TOKENS, TOKENS_ENV, WebhookReceiver, alerts_process, anomaly_config
from tests.stack_instance import StackInstance

Key = tuple[str, int]
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}

# Short sessions and checkpoints: a killed worker's partitions move in seconds, and little is replayed.
COMMON_ENV = {"FLOWWATCH_API_TOKENS": TOKENS_ENV, "FLOWWATCH_LOG_LEVEL": "WARNING"}
SERVICE_ENV: dict[str, dict[str, str]] = {
    "ingest": {
        "FLOWWATCH_INGEST_CHECKPOINT_S": "0.5",
        "FLOWWATCH_INGEST_SESSION_TIMEOUT_S": "8",
        "FLOWWATCH_INGEST_TOKEN": TOKENS["admin"],
    },
    "detector": {
        "FLOWWATCH_DETECTOR_CHECKPOINT_S": "0.5",
        "FLOWWATCH_DETECTOR_SESSION_TIMEOUT_S": "8",
        "FLOWWATCH_DETECTOR_BATCH_WAIT_S": "0.05",
    },
    "forecaster": {
        "FLOWWATCH_FORECASTER_CHECKPOINT_S": "1",
        "FLOWWATCH_FORECASTER_IDLE_PARTITION_S": "3",
        "FLOWWATCH_FORECASTER_SESSION_TIMEOUT_S": "8",
    },
    "alerts": {},
}


def reading_key(payload: Any) -> Key | None:
    if not isinstance(payload, dict):
        return None
    ts = parse_ts(payload.get("ts"))
    sid = payload.get("sensor_id")
    return (sid, ts) if isinstance(sid, str) and ts is not None else None


class Ledger:
    """Follows topics of the pipeline from their start, in the background, and keeps what the suite counts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scores: Counter[Key] = Counter()
        self.quarantined: Counter[Key] = Counter()
        self.risk: list[dict[str, Any]] = []
        self.dlq: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._level = logging.NOTSET
        self._handlers: dict[str, Callable[[Any], None]] = {
            settings.topic("scores"): self._score,
            settings.topic("readings.quarantine"): self._quarantine,
            settings.topic("risk"): self.risk.append,
            settings.topic("alerts.dlq"): self.dlq.append,
        }

    def _score(self, record: dict[str, Any]) -> None:
        self.scores[(record["sensor_id"], record["ts"])] += 1

    def _quarantine(self, record: dict[str, Any]) -> None:
        payload = record.get("payload")
        if isinstance(payload, str):
            with contextlib.suppress(ValueError):
                payload = orjson.loads(payload)
        key = reading_key(payload)
        if key is not None:
            self.quarantined[key] += 1

    async def start(self) -> None:
        # The suite takes the broker away on purpose: the client's reconnect errors are expected noise.
        self._level = logging.getLogger("aiokafka").level
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        consumer = AIOKafkaConsumer(
            *self._handlers,
            **self.settings.kafka_client_options(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            metadata_max_age_ms=2000,
        )
        await consumer.start()
        self._task = asyncio.ensure_future(self._follow(consumer))

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=300, max_records=10_000)).items():
                    handle = self._handlers[tp.topic]
                    for r in records:
                        handle(orjson.loads(r.value))
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        logging.getLogger("aiokafka").setLevel(self._level)


@dataclass
class Accounting:
    """One scenario's readings: what was sent and where each one ended up."""

    sent: int
    scored: int
    quarantined: int
    lost: int
    duplicates: int
    score_records: int
    missing_examples: list[Key] = field(default_factory=list)

    def row(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "scored": self.scored,
            "quarantined": self.quarantined,
            "lost": self.lost,
            "duplicates": self.duplicates,
        }


def account(expected: set[Key], ledger: Ledger) -> Accounting:
    scored = {k for k in expected if k in ledger.scores}
    quarantined = {k for k in expected - scored if k in ledger.quarantined}
    lost = expected - scored - quarantined
    records = sum(ledger.scores[k] for k in scored)
    return Accounting(
        sent=len(expected),
        scored=len(scored),
        quarantined=len(quarantined),
        lost=len(lost),
        duplicates=records - len(scored),
        score_records=records,
        missing_examples=sorted(lost)[:5],
    )


class SimulatorRun:
    """``python -m services.simulator run --sink kafka`` in real time, and the ground truth of what it sends.

    ``count`` bounds the run; :meth:`stop` ends it earlier (SIGTERM: the simulator flushes its sink and
    reports). Either way the report's ``messages`` were handed to the sink, and they are the first
    ``messages`` lines of the ground truth, which is generated in the same order.
    """

    def __init__(self, settings: Settings, workdir: Path, *, count: int, rate: float, seed: int) -> None:
        self.settings = settings
        self.workdir = workdir
        self.report_path = workdir / f"simulator-{seed}.json"
        self.log_path = workdir / f"simulator-{seed}.log"
        start = int(time.time() * 1000)
        self.args = [
            "--count", str(count),
            "--rate", str(rate),
            "--seed", str(seed),
            "--start", str(start),
            "--faults", "clean",
        ]  # fmt: skip
        self.order = self._ground_truth(seed)
        self.proc: subprocess.Popen[bytes] | None = None
        self.report: dict[str, Any] = {}

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "services.simulator", "--log-level", "WARNING", "run", *self.args, *args]

    @property
    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(ROOT)}

    def _ground_truth(self, seed: int) -> list[Key]:
        out = self.workdir / f"sent-{seed}.ndjson"
        cmd = self._command("--sink", "file", "--out", str(out), "--speed", "max")
        subprocess.run(cmd, cwd=ROOT, env=self._env, check=True, capture_output=True, timeout=120)
        keys = [reading_key(orjson.loads(line)) for line in out.read_bytes().splitlines()]
        assert None not in keys and len(set(keys)) == len(keys), "a clean run sends distinct valid readings"
        return keys  # type: ignore[return-value]

    @property
    def expected(self) -> set[Key]:
        """The readings sent (the whole ground truth until the run has reported)."""
        sent = self.report.get("messages", len(self.order))
        return set(self.order[:sent])

    def start(self) -> SimulatorRun:
        self.proc = subprocess.Popen(
            self._command("--sink", "kafka", "--report", str(self.report_path)),
            cwd=ROOT,
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),
            start_new_session=True,
        )
        return self

    async def finished(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"the simulator did not finish within {timeout}s")
        assert self.proc.returncode == 0, self.log_path.read_text()[-3000:]
        self.report = orjson.loads(self.report_path.read_bytes())
        return self.report

    async def stop(self, timeout: float = 120) -> dict[str, Any]:
        """Ends the run now; the report."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return await self.finished(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Pipeline:
    """The four services on a private stack, a webhook receiver, and the ledger."""

    stack: StackInstance
    settings: Settings
    workdir: Path
    receiver: WebhookReceiver
    ledger: Ledger
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    caught_up_at: float = 0.0

    def service(self, name: str) -> ServiceProcess:
        env = {**COMMON_ENV, **SERVICE_ENV[name]}
        if name == "alerts":
            config = self.workdir / "alerts.yaml"
            config.write_text(anomaly_config(self.receiver.url("/hook"), group_wait="500ms", resolve_after="1h"))
            return alerts_process(self.settings, config, **env)
        return ServiceProcess(name, self.settings, extra_env=env)

    async def start(self, names: list[str]) -> None:
        # One at a time: on a cold broker and a busy machine, workers joining together slow each other down.
        for name in names:
            self.procs[name] = self.service(name)
            await self.restart(name)

    async def restart(self, name: str) -> None:
        """Starts (again) the service and waits until it is ready and reads every partition of its input."""
        proc = self.procs[name].start()
        await asyncio.to_thread(proc.wait_ready, 240)
        if name == "alerts":
            return
        every = f"partitions [{', '.join(str(p) for p in range(self.settings.partitions))}]"
        detail = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detail = proc.wait_ready(60)["readings"]["detail"]
            if detail.startswith(every):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"{name} is the only worker of its group but reads {detail!r}:\n{proc.tail()}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def get(self, name: str, path: str) -> httpx.Response:
        return httpx.get(f"{self.procs[name].url}{path}", headers=ADMIN, timeout=5)

    def metric(self, name: str, prefix: str) -> float:
        """Sum of the samples of ``name``'s /metrics whose line starts with ``prefix``."""
        total = 0.0
        for line in self.get(name, "/metrics").text.splitlines():
            if line.startswith(prefix):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def drained(self, expected: set[Key], timeout: float) -> Accounting:
        """Waits until every expected reading is scored or quarantined (or time runs out); the accounting.

        ``caught_up_at`` is when that happened (monotonic clock), for recovery times.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = account(expected, self.ledger)
            if result.lost == 0:
                break
            await asyncio.sleep(0.5)
        self.caught_up_at = time.monotonic()
        await asyncio.sleep(2)  # replays still on their way are counted as duplicates, not missed
        return account(expected, self.ledger)


@dataclass
class Notifications:
    """What the webhook receiver got: a duplicate is a notification id answered 2xx twice, or a notification
    whose content (group, and each alert's fingerprint, status and start) repeats an earlier one's under a
    new id — the same news told twice."""

    received: int
    distinct: int
    duplicate_ids: int
    repeated_content: int

    def row(self) -> dict[str, int]:
        return {
            "notifications": self.distinct,
            "duplicate_notifications": self.duplicate_ids + self.repeated_content,
        }


def notifications(hits: list[Any]) -> Notifications:
    delivered = [h for h in hits if h.status < 300]
    ids = Counter(h.headers["Idempotency-Key"] for h in delivered)
    seen: dict[Any, str] = {}
    repeated = 0
    for h in delivered:
        nid, body = h.headers["Idempotency-Key"], h.json
        content = (
            body["groupKey"],
            tuple(sorted((a["fingerprint"], a["status"], a["startsAt"]) for a in body["alerts"])),
        )
        if seen.setdefault(content, nid) != nid:
            repeated += 1
    return Notifications(
        received=len(hits),
        distinct=len(ids),
        duplicate_ids=sum(n - 1 for n in ids.values()),
        repeated_content=repeated,
    )
