"""Fuzz: hostile inputs on the detector's and forecaster's input topics, against real workers on the real Kafka.

One detector and one forecaster worker read the same readings.clean: 10,000 generated hostile
messages (hypothesis, fixed seed) plus the known killers (:mod:`tests.fuzz`), with valid readings
mixed in. Then the internal topics: unusable ``models`` events (both services) and zone partials
(detector aggregates, forecaster stage 2), every one unusable by construction.

Asserted: no worker died and both are ready afterwards; every input is accounted for from the
output topics, exactly — detector: scores + its quarantine records = inputs; forecaster: readings
folded into zone partials + its quarantine records = inputs; every unusable internal record is on
the deadletter topic with its origin and a reason; the valid readings were all scored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.forecaster.offline import synthetic
from services.forecaster.settings import ForecasterSettings
from shared.codec import loads
from shared.settings import Settings
from tests import fuzz
from tests.helpers import ServiceProcess, produce

pytestmark = pytest.mark.timeout(900)

READINGS = 10_000  # generated hostile readings (the killers come on top)
INTERNAL = 500  # generated unusable records per internal topic
VALID = 300


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.forecaster.offline.training import train

    root = tmp_path_factory.mktemp("fuzz-models")
    history = synthetic.generate(days=0.5, zones={"water": 1}, incident_rate_per_day=6.0, seed=5)
    train(history, ForecasterSettings(), root, epochs=1, seed=3, promote="production")
    return root


class Tally:
    """Every message of some topics from the start, decoded (what is not JSON is kept as bytes)."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.settings = settings
        self.names = {settings.topic(t): t for t in topics}
        self.seen: dict[str, list[Any]] = {t: [] for t in topics}

    async def until(self, done: Callable[[dict[str, list[Any]]], bool], timeout: float) -> bool:
        consumer = AIOKafkaConsumer(
            *self.names,
            **self.settings.kafka_client_options(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        self.seen = {t: [] for t in self.names.values()}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=300, max_records=20_000)).items():
                    self.seen[self.names[tp.topic]].extend(decoded(r.value) for r in records)
                if done(self.seen):
                    return True
        finally:
            await consumer.stop()
        return False


def decoded(value: bytes | None) -> Any:
    try:
        return loads(value or b"")
    except ValueError:
        return value


def folded(partials: list[Any]) -> int:
    """Readings folded into the forecaster's zone partials (watermarks carry none)."""
    return sum(b["n"] for p in partials if isinstance(p, dict) and "zone" in p for b in p["b"].values())


def quarantined(records: list[Any], source: str) -> list[dict[str, Any]]:
    return [q for q in records if isinstance(q, dict) and q.get("source") == source]


def letters(records: list[Any], service: str, topic_suffix: str, key_prefix: str) -> list[dict[str, Any]]:
    return [
        d
        for d in records
        if d["service"] == service and d["topic"].endswith(topic_suffix) and (d["key"] or "").startswith(key_prefix)
    ]


def alive_and_ready(proc: ServiceProcess) -> dict[str, Any]:
    assert proc.proc is not None and proc.proc.poll() is None, f"{proc.service} died:\n{proc.tail()}"
    r = httpx.get(f"{proc.url}/ready", timeout=10)
    assert r.status_code == 200, (proc.service, r.text)
    return r.json()


async def test_hostile_inputs_on_every_input_topic_are_accounted_for_and_stop_nothing(
    settings: Settings, model_dir: Path
) -> None:
    started = time.monotonic()
    s = settings.replace(model_dir=model_dir)
    # The detector keeps state, so a batch that raises rewinds it to its last checkpoint and the batches since are
    # scored again (at-least-once, docs/reliability.md): a checkpoint after every batch makes that window empty, so
    # the exact count below is about the hostile inputs, not about where the last checkpoint happened to fall.
    detector_env = {"FLOWWATCH_DETECTOR_NEW_SENSORS_PER_MINUTE": "0", "FLOWWATCH_DETECTOR_CHECKPOINT_S": "0.001"}
    detector = ServiceProcess("detector", s, detector_env).start()
    forecaster = ServiceProcess("forecaster", s.replace(web_port=0)).start()
    try:
        # generated while the workers start
        hostile = fuzz.killers() + fuzz.generate(fuzz.readings_inputs, READINGS)
        valid = [fuzz.reading(f"fz-ok-{i % 30}", fuzz.T0 + (i // 30) * 1000) for i in range(VALID)]
        messages: list[tuple[bytes | None, Any]] = [(b"fz-%d" % i, raw) for i, raw in enumerate(hostile)]
        for i, r in enumerate(valid):  # spread among the hostile ones, so they share batches with them
            messages.insert(i * len(hostile) // VALID, (r["sensor_id"].encode(), r))
        models = fuzz.generate(fuzz.models_inputs, INTERNAL, at=11)
        fpartials = fuzz.generate(fuzz.forecaster_partials_inputs, INTERNAL, at=12)
        dpartials = fuzz.generate(fuzz.detector_partials_inputs, INTERNAL, at=13)
        generated_s = time.monotonic() - started
        detector.wait_ready(timeout=180)
        forecaster.wait_ready(timeout=240)
        sent_at = time.monotonic()
        await produce(s, "readings.clean", messages)
        total = len(messages)
        tally = Tally(s, ["scores", "readings.quarantine", "forecaster.zone-partials"])

        def readings_done(seen: dict[str, list[Any]]) -> bool:
            det = len(seen["scores"]) + len(quarantined(seen["readings.quarantine"], "detector"))
            fc = folded(seen["forecaster.zone-partials"]) + len(quarantined(seen["readings.quarantine"], "forecaster"))
            return det >= total and fc >= total

        assert await tally.until(readings_done, timeout=300), "not every reading was accounted for in time"
        readings_s = time.monotonic() - sent_at
        await asyncio.sleep(2)  # anything beyond the expected count (a replay) would show now
        await tally.until(lambda seen: False, timeout=3)
        seen = tally.seen
        det_q, fc_q = (
            quarantined(seen["readings.quarantine"], "detector"),
            quarantined(seen["readings.quarantine"], "forecaster"),
        )
        assert len(seen["scores"]) + len(det_q) == total
        assert folded(seen["forecaster.zone-partials"]) + len(fc_q) == total
        scored = {(x["sensor_id"], x["ts"]) for x in seen["scores"]}
        assert {(r["sensor_id"], r["ts"]) for r in valid} <= scored
        assert all(q["reasons"] for q in det_q + fc_q)
        alive_and_ready(detector)
        alive_and_ready(forecaster)

        # Internal topics. Both services read models with a group-less consumer from the end: probe until both hear.
        dl = Tally(s, ["deadletter"])

        def both_heard(seen: dict[str, list[Any]]) -> bool:
            return all(letters(seen["deadletter"], svc, "models", "probe") for svc in ("detector", "forecaster"))

        for n in range(120):
            await produce(s, "models", [(b"probe-%d" % n, b"not an event")])
            if await dl.until(both_heard, 1.0):
                break
        internal_at = time.monotonic()
        await produce(s, "models", [(b"fzm-%d" % i, v) for i, v in enumerate(models)])
        await produce(s, "forecaster.zone-partials", [(b"fzp-%d" % i, v) for i, v in enumerate(fpartials)])
        await produce(s, "detector.zone-partials", [(b"fzd-%d" % i, v) for i, v in enumerate(dpartials)])

        def internal_done(seen: dict[str, list[Any]]) -> bool:
            d = seen["deadletter"]
            return (
                len(letters(d, "detector", "models", "fzm-")) >= INTERNAL
                and len(letters(d, "forecaster", "models", "fzm-")) >= INTERNAL
                and len(letters(d, "forecaster", "forecaster.zone-partials", "fzp-")) >= INTERNAL
                and len(letters(d, "detector", "detector.zone-partials", "fzd-")) >= INTERNAL
            )

        assert await dl.until(internal_done, timeout=180), "not every unusable internal record was dead-lettered"
        internal_s = time.monotonic() - internal_at
        d = dl.seen["deadletter"]
        for service, topic, prefix in (
            ("detector", "models", "fzm-"),
            ("forecaster", "models", "fzm-"),
            ("forecaster", "forecaster.zone-partials", "fzp-"),
            ("detector", "detector.zone-partials", "fzd-"),
        ):
            got = letters(d, service, topic, prefix)
            assert len(got) == INTERNAL, (service, topic, len(got))
            assert len({x["key"] for x in got}) == INTERNAL  # each once
            assert all(x["reasons"] and x["offset"] is not None for x in got)
        det_ready = alive_and_ready(detector)
        alive_and_ready(forecaster)
        assert "load errors" not in str(det_ready)  # no event was acted on
    finally:
        detector.stop()
        forecaster.stop()
    print(
        f"\nfuzz: readings.clean {total} inputs ({len(hostile)} hostile, {VALID} valid) -> detector "
        f"{len(seen['scores'])} scored + {len(det_q)} quarantined, forecaster "
        f"{folded(seen['forecaster.zone-partials'])} folded + {len(fc_q)} quarantined in {readings_s:.1f}s; "
        f"models {INTERNAL}x2, zone partials {INTERNAL}x2 dead-lettered in {internal_s:.1f}s; "
        f"generation and start-up {generated_s:.1f}s, total {time.monotonic() - started:.1f}s; crashes 0"
    )
