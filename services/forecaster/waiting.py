"""Zones whose open steps wait on a watermark, per partials partition.

A zone closes its steps when every source partition's watermark has passed them. Stage 2 looks at a
zone when a partial of it arrives; but the watermark that completes its last steps can come after its
last partial (one readings partition catching up after the other, as a restart that isolates a suspect
range does; the idle-partition timer at the end of a stream). Without another look then, those steps
stay open until the zone's next partial — for good when the zone has gone quiet. This keeps, per
partials partition, each waiting zone's oldest open step, so a watermark that moves looks again at
exactly the zones it completes a step of.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.forecaster.zonestate import ZoneState
from shared.batching import PartitionMap


class WaitingZones:
    def __init__(self, partitions: int, source_partitions: int, lateness_ms: int) -> None:
        self.partition_of = PartitionMap(partitions)
        self.sources = [str(p) for p in range(source_partitions)]
        self.lateness_ms = lateness_ms
        self._due: dict[int, dict[bytes, int]] = {}  # partials partition -> zone -> event time that closes a step
        self.seeded = False

    def seed(self, keys: Iterable[bytes]) -> None:
        """Zones already in the table (a restart): each is looked at on its partition's next watermark."""
        for key in keys:
            self._due.setdefault(self.partition_of(key), {})[key] = -1
        self.seeded = True

    def update(self, partition: int, key: bytes, state: ZoneState | None) -> None:
        """After ``key``'s zone was looked at: waiting for the end of its oldest open step, or not at all."""
        zones = self._due.setdefault(partition, {})
        if state is None or not state.open:
            zones.pop(key, None)
        else:
            zones[key] = (min(state.open) + 1) * state.step_ms + self.lateness_ms

    def due(self, partition: int, marks: Mapping[str, int]) -> list[bytes]:
        """Zones of ``partition`` whose oldest open step every source partition's watermark has now passed.

        The zone's own data can only move it further (its progress per source is the newer of the two).
        """
        progress = min((marks.get(p, -1) for p in self.sources), default=-1)
        return [key for key, due in self._due.get(partition, {}).items() if due <= progress]
