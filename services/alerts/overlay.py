"""A write-back view of a table for one micro-batch: reads see the batch's own writes; each key is written once.

The state stage processes a batch of events per partition through overlays
and then flushes them inside that partition's event context, so a key changed by
500 events in a batch costs one changelog write, not 500 (design: state updated
once per key per batch).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

#: A key the batch deleted, in :attr:`Overlay.writes`.
DELETED = object()


class Overlay(MutableMapping[str, Any]):
    def __init__(self, table: MutableMapping[str, Any]):
        self.table = table
        self.writes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.writes:
            value = self.writes[key]
            if value is DELETED:
                raise KeyError(key)
            return value
        return self.table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.writes[key] = DELETED

    def __contains__(self, key: object) -> bool:
        if key in self.writes:
            return self.writes[key] is not DELETED
        return key in self.table

    def __iter__(self) -> Iterator[str]:
        for key in list(self.table.keys()):
            if self.writes.get(key) is not DELETED:
                yield key
        for key, value in list(self.writes.items()):
            if value is not DELETED and key not in self.table:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def take(self) -> dict[str, Any]:
        """The batch's changes, each key once (its value, or :data:`DELETED`); the overlay starts empty again."""
        writes, self.writes = self.writes, {}
        return writes

    def flush(self) -> int:
        """Write every changed key to the table once (call inside the partition's event context)."""
        n = 0
        for key, value in self.writes.items():
            if value is DELETED:
                if key in self.table:
                    del self.table[key]
                    n += 1
            else:
                self.table[key] = value
                n += 1
        self.writes.clear()
        return n
