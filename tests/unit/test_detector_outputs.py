"""What one micro-batch of the detector engine writes: a score per reading, keyed and partitioned by its sensor.

The engine runs on Faust's memory store with a capturing producer (tests/unit/test_foundation_pump.py); the
broker side of the same path is tests/integration/test_detector_stream.py.
"""

from __future__ import annotations

import faust
import orjson

from services.detector.pipeline import ModelStore, Scorer
from services.detector.profiles import ProfileSet
from services.detector.settings import DEFAULT_PROFILES_FILE, DetectorSettings
from services.detector.worker import DetectorEngine
from shared.batching import PartitionMap, kafka_partition
from shared.codec import dumps_record
from shared.settings import Settings
from tests import fuzz
from tests.unit.test_foundation_pump import CapturingProducer
from tests.unit.test_foundation_pump_poison import messages


async def test_every_reading_gets_its_score_keyed_and_partitioned_by_its_sensor() -> None:
    app = faust.App("outputs-test", store="memory://", autodiscover=False)
    ds = DetectorSettings(compute_in_thread=False, cache_enabled=False)
    scorer = Scorer(ModelStore(ProfileSet.load(DEFAULT_PROFILES_FILE)), packed=False)
    engine = DetectorEngine(app, Settings(partitions=3), ds, scorer)
    producer = CapturingProducer()
    engine.producer = producer  # type: ignore[assignment]
    engine.partition_maps = {name: PartitionMap(3) for name in engine.names.values()}
    engine.local = frozenset({0, 1, 2})
    sensors = [f"sensor-{i}" for i in range(7)]
    values = [orjson.dumps(fuzz.reading(sid, fuzz.T0 + 1000 * j)) for j in range(3) for sid in sensors]

    sub = await engine.submit(messages(values))
    await engine.complete(sub)

    scores = sub.work.result.scores
    assert [s.sensor_id for s in scores] == [orjson.loads(v)["sensor_id"] for v in values]
    written = producer.messages(engine.names["scores"])
    assert len(written) == len(values)
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for partition, key, value in written:
        assert key is not None and partition == kafka_partition(key, 3)
        by_partition.setdefault(partition, []).append((key, value))
    expected: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for s in scores:  # in each partition, in the readings' order
        key = s.sensor_id.encode()
        expected.setdefault(kafka_partition(key, 3), []).append((key, dumps_record(s)))
    assert by_partition == expected
