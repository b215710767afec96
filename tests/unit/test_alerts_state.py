"""The alerts state stage (StateJob): a batch's deliveries start only once the broker has its table writes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.alerts.settings import AlertsSettings
from services.alerts.state import Applied, StateJob
from shared.pump import Batch
from shared.settings import Settings

pytestmark = pytest.mark.unit


async def test_the_state_stage_starts_deliveries_only_once_the_broker_has_the_batchs_table_writes():
    # A notification whose alert state is not durable could be sent again after a crash (the state says not sent
    # yet): StateJob hands a batch's deliveries to the dispatcher in complete(), after the acknowledgement only.
    submitted: list[dict] = []
    persisted: list[dict] = []
    stage = SimpleNamespace(persisted=persisted.append)
    dispatcher = SimpleNamespace(submit=submitted.append)
    events = SimpleNamespace(get_topic_name=lambda: "alerts-events")

    async def declare() -> None:
        return None

    job = StateJob(Settings(), AlertsSettings(), events, declare, "alerts", stage, dispatcher)  # type: ignore[arg-type]
    acked: asyncio.Future = asyncio.get_running_loop().create_future()
    entry = {"id": "n1", "receiver": "ops"}
    completing = asyncio.ensure_future(job.complete(Batch(Applied(dispatch=[entry], written=1), 1, acked, 0.0)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert submitted == [] and not completing.done()
    acked.set_result({("alerts-state-changelog", 0): 7})
    await completing
    assert submitted == [entry] and persisted == [{("alerts-state-changelog", 0): 7}]
