"""take_ready: batches of what is ready, never waiting to fill one; every event once, in order."""

from __future__ import annotations

import asyncio

import faust
import pytest

from shared.streaming import take_ready

pytestmark = pytest.mark.unit


async def test_batches_hold_what_is_ready_and_nothing_waits_to_fill_one() -> None:
    # No broker is contacted: agent.test_context() feeds the agent's stream directly.
    app = faust.App("take-ready-test", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    batches: list[list[int]] = []
    got = asyncio.Event()

    @app.agent(app.channel())
    async def agent(stream):  # type: ignore[no-untyped-def]
        # idle_s of an hour: were a batch to wait for more events (as take_events waits ``within``), the lone
        # events below would never arrive within the test's bounds.
        async for batch in take_ready(stream, 7, 3600.0):
            batches.append([e.value for e in batch])
            got.set()
            await asyncio.sleep(0.01)  # events arriving meanwhile make the next batch

    async with agent.test_context() as ag:
        for i in range(50):
            await ag.put(i)
        while sum(map(len, batches)) < 50:
            got.clear()
            await asyncio.wait_for(got.wait(), 30)
        got.clear()
        await ag.put(50)  # a lone event after the backlog: handed over alone
        await asyncio.wait_for(got.wait(), 30)
        got.clear()
        await ag.put(51)
        await asyncio.wait_for(got.wait(), 30)

    assert [v for b in batches for v in b] == list(range(52))  # every event once, in order
    assert all(1 <= len(b) <= 7 for b in batches)
    assert max(len(b) for b in batches) == 7  # a backlog makes full batches
    assert batches[-2:] == [[50], [51]]
