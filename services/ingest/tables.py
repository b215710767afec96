"""Writing many keys of a Faust table at once: local store plus changelog as record batches.

``table[key] = value`` sends one changelog message through Faust's producer buffer per key
(~50 µs of Python each on the reference machine); a checkpoint of a few thousand sensors
would cost a large share of a core. :func:`write_many` does what ``Table.__setitem__`` does —
store the value in the partition's local store and append it to the changelog partition of
the same number — but sends the changelog records as one batch per partition, then records
the persisted changelog offset in the store as Faust's own ack callback does, so recovery
after a restart starts where it should.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from faust.types import TP

from services.ingest.outbox import Outbox
from shared.streaming import event_context


async def write_many(table: Any, outbox: Outbox, by_partition: Mapping[int, Mapping[bytes, Any]], events: Any) -> int:
    """Write ``{partition: {key: value}}`` into ``table``; ``events(partition)`` gives a stand-in event.

    Values must be JSON-serialisable (the tables use Faust's json codec, orjson underneath).
    The changelog records are added to ``outbox``; the caller flushes it and passes the
    result to :func:`persisted`.
    """
    store = table.data
    changelog = table.changelog_topic.get_topic_name()
    written = 0
    for partition, items in by_partition.items():
        with event_context(events(partition)):
            for key, value in items.items():
                store[key] = value
                outbox.add(changelog, partition, key, orjson.dumps(value))
                written += 1
    return written


def persisted(table: Any, last_offsets: Mapping[tuple[str, int], int]) -> None:
    """Record the changelog offsets now durable, so recovery replays only what came after."""
    changelog = table.changelog_topic.get_topic_name()
    for (topic, partition), offset in last_offsets.items():
        if topic == changelog:
            table.data.set_persisted_offset(TP(topic, partition), offset)
