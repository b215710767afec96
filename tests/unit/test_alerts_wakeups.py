"""Wake-up ticks: a partition whose group timer is due before the regular tick gets a tick of its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.alerts.wakeups import Wakeups

pytestmark = pytest.mark.unit


class Ticks:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.arrived = asyncio.Event()

    async def __call__(self, partition: int) -> None:
        self.sent.append(partition)
        self.arrived.set()


async def test_a_due_timer_sends_one_tick_to_its_partition() -> None:
    ticks = Ticks()
    wake = Wakeups(ticks)
    wake.at(3, time.time() + 0.01)
    await asyncio.wait_for(ticks.arrived.wait(), 30)
    assert ticks.sent == [3]
    assert wake.due == {}  # fired: nothing left pending


async def test_the_earliest_timer_of_a_partition_wins() -> None:
    ticks = Ticks()
    wake = Wakeups(ticks)
    wake.at(1, time.time() + 3600)
    wake.at(1, time.time() + 0.01)  # earlier: replaces the hour
    wake.at(1, time.time() + 7200)  # later: ignored, the earlier one stands
    await asyncio.wait_for(ticks.arrived.wait(), 30)
    assert ticks.sent == [1]
    assert wake.due == {}
    wake.reset()


async def test_no_timer_for_a_partition_without_groups_and_none_after_a_reset() -> None:
    ticks = Ticks()
    wake = Wakeups(ticks)
    wake.at(0, float("inf"))  # no group waiting: nothing to wake up for
    assert wake.due == {}
    wake.at(2, time.time() + 0.05)
    wake.reset()  # partitions changed hands
    assert wake.due == {}
    wake.at(5, time.time())  # the marker: due at once, sent after anything still pending
    await asyncio.wait_for(ticks.arrived.wait(), 30)
    await asyncio.sleep(0.2)
    assert ticks.sent == [5]


async def test_a_tick_that_cannot_be_sent_is_only_logged() -> None:
    failed = asyncio.Event()

    async def broken(partition: int) -> None:
        failed.set()
        raise ConnectionError("broker down")

    wake = Wakeups(broken)
    wake.at(0, time.time())
    await asyncio.wait_for(failed.wait(), 30)
    await asyncio.sleep(0)
    assert wake.due == {} and not wake._tasks  # done, the error swallowed (the regular tick still comes)
