"""TableImage: the state stage's decoded per-partition copy of a table; the table stays the truth."""

from __future__ import annotations

import pytest

from services.alerts.config import parse_config
from services.alerts.image import TableImage
from services.alerts.overlay import Overlay
from services.alerts.pipeline import Processor, Schedule
from services.alerts.settings import AlertsSettings

pytestmark = pytest.mark.unit


class CountingTable(dict):
    """A table stand-in that counts reads and scans (a Faust table on rocksdb decodes on each)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.reads = 0
        self.scans = 0

    def __getitem__(self, key):
        self.reads += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.reads += 1
        return super().get(key, default)

    def items(self):
        self.scans += 1
        return super().items()


def test_each_partition_holds_its_rows_and_writes_go_through_to_the_table():
    table = CountingTable(a={"partition": 0, "v": 1}, b={"partition": 1, "v": 2}, c={"partition": 1, "v": 3})
    image = TableImage(table)
    p0, p1 = image.view(0), image.view(1)
    assert dict(p0) == {"a": {"partition": 0, "v": 1}} and sorted(p1) == ["b", "c"] and len(p1) == 2
    assert p1.get("a") is None and "a" not in p1 and p0["a"]["v"] == 1
    p1["d"] = {"partition": 1, "v": 4}
    del p1["b"]
    with pytest.raises(KeyError):
        del p1["b"]
    assert table == {"a": {"partition": 0, "v": 1}, "c": {"partition": 1, "v": 3}, "d": {"partition": 1, "v": 4}}
    assert sorted(p1) == ["c", "d"] and image.view(2).get("a") is None
    assert table.scans == 1 and table.reads == 0  # one load, then memory


def test_a_reset_reloads_from_the_table_another_worker_may_have_changed():
    table = CountingTable(a={"partition": 0, "v": 1})
    image = TableImage(table)
    view = image.view(0)
    assert view["a"]["v"] == 1
    table["a"] = {"partition": 0, "v": 2}  # written elsewhere while the partition was away
    table["b"] = {"partition": 0, "v": 3}
    image.reset()
    assert view["a"]["v"] == 2 and sorted(view) == ["a", "b"] and table.scans == 2


def test_the_state_stage_over_images_decides_as_over_the_tables():
    """Batches of the same events through images and straight over dicts: same tables, same notifications."""
    data = {
        "rules": [{"name": "A", "source": "anomaly", "when": ["score >= threshold"],
                   "labels": {"site": "{site}", "zone": "{zone}", "sensor": "{sensor_id}"}, "resolve_after": "1m"}],
        "route": {"receiver": "r", "group_by": ["site", "zone"], "group_wait": "0s", "group_interval": "1s"},
        "receivers": [{"name": "r", "kafka_configs": [{"topic": "alerts"}]}],
    }  # fmt: skip
    config = parse_config(data, "t.yaml", {})
    names = ("alerts", "groups", "outbox", "limits", "counters", "inhibitors")

    def record(sensor, zone):
        return {"sensor_id": sensor, "ts": 1, "site": "a", "zone": zone, "utility": "w", "asset": "p",
                "score": 1.0, "threshold": 0.5, "model_version": "1", "reason": "r"}  # fmt: skip

    events = [
        (now, {"type": "obs", "obs": [config.rules[0].evaluate(record(f"s{i}", f"z{i % 3}")).to_dict()]})
        for i, now in enumerate([1000.0, 1000.1, 1000.2, 1000.3, 1001.5, 1002.0])
    ] + [(1100.0, {"type": "tick"}), (1200.0, {"type": "tick"})]

    def run(view_of):
        tables = {k: {} for k in names}
        images = {k: TableImage(t) for k, t in tables.items()}
        schedule, sent = Schedule(), []
        for now, value in events:
            overlays = {k: Overlay(view_of(tables[k], images[k])) for k in names}
            proc = Processor(config, AlertsSettings(), **overlays, silences={}, schedule=schedule)
            changes = proc.handle(value, 0, now)
            if now >= schedule.next_flush.get(0, 0.0):
                changes.dispatch += proc.handle({"type": "tick"}, 0, now).dispatch
            for o in overlays.values():
                o.flush()
            sent += [(e["notification"]["groupKey"], len(e["notification"]["alerts"])) for e in changes.dispatch]
        return tables, sent

    direct, sent_direct = run(lambda table, image: table)
    imaged, sent_imaged = run(lambda table, image: image.view(0))
    assert imaged == direct and sent_imaged == sent_direct
    assert len(sent_direct) >= 4  # three groups told at once (group_wait 0), then changes and resolutions


def test_a_faust_tables_batch_goes_to_its_store_and_into_the_box_as_faust_would_write_its_changelog():
    import faust

    from shared.batching import Outbox, PartitionEvent
    from shared.streaming import event_context

    app = faust.App("image-test", store="memory://", autodiscover=False)
    schema = faust.Schema(key_type=str, key_serializer="json", value_serializer="orjson")
    table = app.Table("alerts-img", partitions=2, schema=schema)  # as the alerts worker declares its tables
    changelog = table.changelog_topic.get_topic_name()
    image = TableImage(table)
    box = Outbox(producer=None)  # type: ignore[arg-type]  # nothing is sent here: what is collected is checked
    gone = object()
    with event_context(PartitionEvent(changelog, 1)):
        table.data["old"] = {"partition": 1, "v": 0}  # in the store before the image loads
        assert image.commit(1, {"new": {"partition": 1, "v": 2}, "old": gone, "never": gone}, box, gone) == 2
        assert table.get("new") == {"partition": 1, "v": 2} and table.get("old") is None
    records = box._pending[(changelog, 1)]

    def dumps_key(key):
        return app.serializers.dumps_key(str, key, serializer="json")

    def dumps_value(value):
        return app.serializers.dumps_value(None, value, serializer="orjson")

    assert [(key, value) for key, value, _ in records] == [
        (dumps_key("new"), dumps_value({"partition": 1, "v": 2})),  # the bytes Faust's changelog would hold
        (dumps_key("old"), None),  # a deleted row is a tombstone, as Faust writes one
    ]
    assert box.count == 2 and image.view(1).get("old") is None
