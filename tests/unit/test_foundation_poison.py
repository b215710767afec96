"""The shared poison rule (shared.poison.isolate) for stateless readers: retried, isolated, set aside once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from shared.poison import JOB_FAILURES, failed_twice, isolate


def records(values: list[bytes]) -> list[Any]:
    return [SimpleNamespace(topic="src", partition=0, offset=i, key=None, value=v) for i, v in enumerate(values)]


class Job:
    def __init__(self, flaky: int = 0) -> None:
        self.delivered: list[int] = []
        self.calls: list[list[int]] = []
        self.flaky = flaky  # fail this many calls first, whatever they hold
        self.aside: list[tuple[int, list[str]]] = []

    async def process(self, batch: list[Any]) -> None:
        self.calls.append([r.offset for r in batch])
        if self.flaky:
            self.flaky -= 1
            raise ValueError("transient")
        if any(r.value == b"poison" for r in batch):
            raise ValueError("cannot read this")
        self.delivered.extend(r.offset for r in batch)

    async def set_aside(self, record: Any, reasons: list[str]) -> None:
        self.aside.append((record.offset, reasons))


async def test_a_poison_message_is_set_aside_once_and_the_rest_delivered_once() -> None:
    job = Job()
    before = JOB_FAILURES.labels("poisontest")._value.get()
    aside = await isolate(
        records([b"a", b"b", b"poison", b"d"]), job.process, job.set_aside, service="poisontest", backoff_s=0
    )
    assert aside == 1
    assert job.delivered == [0, 1, 3]
    assert job.aside == [(2, ["processing failed twice: ValueError: cannot read this"])]
    # the batch twice, then each message alone, the poison one twice
    assert job.calls == [[0, 1, 2, 3], [0, 1, 2, 3], [0], [1], [2], [2], [3]]
    assert JOB_FAILURES.labels("poisontest")._value.get() == before + 4


async def test_a_transient_failure_is_retried_as_a_batch() -> None:
    job = Job(flaky=1)
    assert await isolate(records([b"a", b"b"]), job.process, job.set_aside, service="poisontest", backoff_s=0) == 0
    assert job.delivered == [0, 1] and job.calls == [[0, 1], [0, 1]] and job.aside == []


async def test_broker_errors_are_not_the_messages_fault() -> None:
    async def broken(batch: list[Any]) -> None:
        raise KafkaConnectionError("broker gone")

    job = Job()
    with pytest.raises(KafkaConnectionError):
        await isolate(records([b"a"]), broken, job.set_aside, service="poisontest", backoff_s=0)
    assert job.aside == []


def test_the_reason_names_the_error() -> None:
    assert failed_twice(RuntimeError("x")) == "processing failed twice: RuntimeError: x"
