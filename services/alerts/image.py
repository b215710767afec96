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

from collections.abc import Iterator, MutableMapping
from typing import Any


class TableImage:
    """The decoded rows of one table's active partitions, loaded on first use."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.parts: dict[int, dict[str, Any]] | None = None

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
