"""Decoded in-memory images of the state tables, one dict per partition this worker owns.

Every read of a Faust table on rocksdb is a store lookup and a JSON decode, and every
scan (group timers, sweeps, the outbox) decodes the whole table, all partitions, to keep
one partition's rows: a group flush cost one decode per group the worker holds, paid per
micro-batch (bench/bench_alerts.py, docs/performance.md). The state stage is the only
writer of its partitions (operator actions and delivery results come through the events
topic), so it can keep what it read: each table is loaded once into per-partition dicts
(a single scan, rows sorted by the ``partition`` they carry), reads and scans of a
partition are dict operations, and writes go to the dict and through to the table — the
table (changelog, rocksdb) stays the only truth. :meth:`TableImage.reset` on every
rebalance forgets the image; the next batch loads it again from the recovered tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from faust.serializers import codecs
from faust.stores.base import SerializedStore

from shared.batching import Outbox, persisted

#: Encoded keys remembered per table (fingerprints, group keys, outbox ids come back batch after batch).
KEYS_KEPT = 100_000


class TableImage:
    """The decoded rows of one table's active partitions, loaded on first use."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.parts: dict[int, dict[str, Any]] | None = None
        self.writer = ChangelogWriter(table) if hasattr(table, "changelog_topic") else None

    def reset(self) -> None:
        self.parts = None

    def partition(self, partition: int) -> dict[str, Any]:
        if self.parts is None:
            parts: dict[int, dict[str, Any]] = {}
            for key, value in list(self.table.items()):
                if value is not None:
                    parts.setdefault(int(value.get("partition", 0)), {})[key] = value
            self.parts = parts
        return self.parts.setdefault(partition, {})

    def view(self, partition: int) -> PartitionView:
        return PartitionView(self, partition)

    def commit(self, partition: int, writes: Mapping[str, Any], box: Outbox | None, deleted: object) -> int:
        """A batch's changes of ``partition`` (each key once: its value, or ``deleted``) to memory and the table.

        With ``box`` (and a Faust table), they go to the local store and, as one record batch per changelog
        partition, into ``box`` (:class:`ChangelogWriter`): the caller sends it and, once the broker has it,
        records the offsets (:meth:`persisted`). Otherwise each goes through ``table[key] = value`` (a plain
        mapping in tests). Call inside an event context of ``partition`` (pitfall 10). Returns the keys written.
        """
        rows = self.partition(partition)
        writer = self.writer if box is not None else None
        n = 0
        for key, value in writes.items():
            if value is deleted:
                if key not in rows:
                    continue
                if writer is not None:
                    writer.delete(partition, key, box)  # type: ignore[arg-type]
                elif key in self.table:
                    del self.table[key]
                del rows[key]
            else:
                if writer is not None:
                    writer.put(partition, key, value, box)  # type: ignore[arg-type]
                else:
                    self.table[key] = value  # the table first: should it raise, memory still matches it
                rows[key] = value
            n += 1
        return n

    def persisted(self, last_offsets: Mapping[tuple[str, int], int]) -> None:
        """The broker has the changelog records :meth:`commit` put into a box: recovery may start after them."""
        if self.writer is not None:
            persisted(self.table, last_offsets)


class ChangelogWriter:
    """What ``table[key] = value`` and ``del table[key]`` do to a Faust table, for a batch of keys at once.

    Faust's per-key path (its producer buffer, a future and a callback per key, the serializer registry on
    every key and value) cost ~50 µs a key and one produce request after another; here a key is encoded once
    (remembered), a value once for both the store and the changelog (the table's own codec, so the bytes are
    Faust's), and the changelog records of a batch go out as one record batch per partition through the
    caller's :class:`~shared.batching.Outbox`.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.changelog = table.changelog_topic.get_topic_name()
        self.key_serializer = table.key_serializer
        self.value_serializer = table.value_serializer
        self.keys: dict[str, bytes] = {}

    def key(self, key: str) -> bytes:
        raw = self.keys.get(key)
        if raw is None:
            if len(self.keys) >= KEYS_KEPT:
                self.keys.clear()  # bounded (pitfall 8)
            raw = self.keys[key] = codecs.dumps(self.key_serializer, key)
        return raw

    def put(self, partition: int, key: str, value: Any, box: Outbox) -> None:
        raw_key, raw = self.key(key), codecs.dumps(self.value_serializer, value)
        store = self.table.data
        if isinstance(store, SerializedStore):
            store._set(raw_key, raw)  # the store keeps the changelog's bytes (what recovery would write)
        else:
            store[key] = value
        box.add(self.changelog, partition, raw_key, raw)

    def delete(self, partition: int, key: str, box: Outbox) -> None:
        raw_key = self.key(key)
        store = self.table.data
        if isinstance(store, SerializedStore):
            store._del(raw_key)
        else:
            store.pop(key, None)
        box.add(self.changelog, partition, raw_key, None)  # a tombstone, as Faust writes for a deleted key


class PartitionView(MutableMapping[str, Any]):
    """One partition of a :class:`TableImage`: reads from memory, writes to memory and through to the table.

    Writes must happen inside an event context of ``partition`` (the caller's
    :class:`~services.alerts.overlay.Overlay` flush does that), as for the table itself.
    """

    def __init__(self, image: TableImage, partition: int) -> None:
        self.image = image
        self.partition = partition

    @property
    def rows(self) -> dict[str, Any]:
        # Looked up each time: a rebalance may have dropped the image since this view was made.
        return self.image.partition(self.partition)

    def __getitem__(self, key: str) -> Any:
        return self.rows[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.rows.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __setitem__(self, key: str, value: Any) -> None:
        self.image.table[key] = value  # the table first: should it raise, memory still matches it
        self.rows[key] = value

    def __delitem__(self, key: str) -> None:
        rows = self.rows
        if key not in rows:
            raise KeyError(key)
        if key in self.image.table:
            del self.image.table[key]
        del rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.rows))

    def __len__(self) -> int:
        return len(self.rows)
