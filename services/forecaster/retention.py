"""Bounded zone state in stage 2: new zones per site are budgeted, silent zones expire from the ``zones`` table.

Zone ids come from readings, so from outside: without bounds a stream of made-up zones grows the
table (and each worker's store) forever. A partial for a zone that has no state yet may create it
only within its site's budget (:class:`shared.limits.NewIdBudget`); beyond it the partial is
dead-lettered with the reason. A zone whose newest event time is older than the TTL is deleted
(``del zones[key]``, so the changelog gets a tombstone) by :func:`sweep_zones`.
"""

from __future__ import annotations

from typing import Any

from services.forecaster.zonestate import ZoneState
from shared.batching import PartitionEvent, PartitionMap
from shared.streaming import event_context


def newest_event_ms(raw: bytes) -> int:
    """The newest event time a zone state has seen (-1 when unreadable: as good as gone)."""
    try:
        st = ZoneState.from_bytes(raw)
    except Exception:  # noqa: BLE001 - an unreadable state is expired, not a crash
        return -1
    return max(st.watermarks.values(), default=-1)


def sweep_zones(zones: Any, topic: str, partitions: int, cutoff_ms: int, limit: int = 10_000) -> list[str]:
    """Delete the zones (of the partitions held here) whose newest event is older than ``cutoff_ms``."""
    pmap = PartitionMap(partitions)
    stale = []
    for key, raw in list(zones.data.items()):
        if newest_event_ms(raw) < cutoff_ms:
            stale.append(key)
            if len(stale) >= limit:
                break
    for key in stale:
        with event_context(PartitionEvent(topic, pmap(key))):
            del zones[key]
    return [k.decode("utf-8", "replace") for k in stale]
