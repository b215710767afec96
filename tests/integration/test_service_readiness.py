"""Readiness follows the group's assignment: a worker assigned nothing of a topic is not ready, and says why.

Found by the fault suite: Faust workers that joined before one of their topics was in the broker's
metadata were assigned nothing of it ("Ignoring missing topic") and still reported ready. Here the
alerts worker starts while one of its input topics (risk) does not exist yet; it must say "not
ready" with the topic in the reason, and become ready by itself once the topic exists.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.settings import Settings
from shared.topics import RISK, create_all
from tests.helpers import ServiceProcess

pytestmark = pytest.mark.timeout(300)


def ready_answer(proc: ServiceProcess) -> tuple[int, dict[str, Any]] | None:
    try:
        r = httpx.get(f"{proc.url}/ready", timeout=5)
    except httpx.HTTPError:
        return None
    return r.status_code, r.json()


async def test_a_worker_whose_assignment_misses_a_topic_is_not_ready_until_it_has_it(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        await admin.delete_topics([settings.topic(RISK.name)])
    finally:
        await admin.close()
    alerts = ServiceProcess("alerts", settings).start()
    try:
        # Joined, tables recovered: what made it "ready" before; now the assignment check says no.
        deadline = time.monotonic() + 180
        answer = None
        while time.monotonic() < deadline:
            answer = ready_answer(alerts)
            if answer and answer[1].get("joined_group") and "assignment" in answer[1]:
                break
            assert alerts.proc is not None and alerts.proc.poll() is None, alerts.tail()
            time.sleep(0.5)
        assert answer is not None, alerts.tail()
        status, body = answer
        assert status == 503 and body["ready"] is False, body
        assert body["assignment"]["ok"] is False
        assert settings.topic(RISK.name) in body["assignment"]["detail"], body["assignment"]
        # The topic appears: the worker's next metadata refresh rejoins the group and covers it.
        await create_all(settings, out=open("/dev/null", "w"))
        ready = alerts.wait_ready(timeout=180)
        assert ready["assignment"]["ok"] is True, ready
    finally:
        alerts.stop()
