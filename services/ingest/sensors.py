"""What ingest remembers per sensor, and the decisions that need it.

A :class:`SensorState` is the value of the ``sensors`` table (keyed by sensor_id, so
co-partitioned with readings.clean): identity, last seen, last values, counts, the
learned reporting interval, and the newest timestamps it accepted. With it,
:meth:`SensorState.admit` decides for each valid reading whether it is new, a
duplicate (same sensor and ``ts``) or too late, and :func:`silence_transitions`
decides which sensors went quiet or came back. Pure code: the agent loads each
sensor's state once per micro-batch, admits the batch's readings in order and
writes the state back once.

Duplicates: a reading newer than the sensor's newest is never a duplicate. An older
one (out of order) is compared with the ``dedup_memory`` newest timestamps kept; one
older than all of those but still within the lateness cannot be checked and is
accepted (counted as ``unverified``): losing a real reading is worse than passing a
rare repeat downstream, where every consumer is idempotent on (sensor_id, ts) anyway.
Redelivery after a crash never reaches this point: the agent skips offsets it had
finished (see ``services.ingest.pipeline``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from shared.records import Reading

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
LATE = "late"

# A gap longer than this many learned intervals is an outage, not the reporting rhythm.
_GAP_FACTOR = 10.0
_INTERVAL_ALPHA = 0.2


@dataclass(slots=True)
class SensorState:
    sensor_id: str
    site: str = ""
    zone: str = ""
    utility: str = ""
    asset: str = ""
    first_seen_ms: int = 0
    last_seen_ms: int = 0  # wall clock of the last accepted reading's arrival
    newest_ts: int = 0
    interval_ms: float = 0.0
    count: int = 0
    duplicates: int = 0
    late: int = 0
    unverified: int = 0
    unknown_metrics: int = 0  # accepted readings flagged with metrics the ranges do not know
    counter_resets: int = 0  # cumulative counters seen going down (a reset or a replaced meter)
    last_values: dict[str, float] = field(default_factory=dict)
    last_quality: float | None = None
    #: Accepted timestamps, ascending, newest last; at most ``dedup_memory`` of them.
    recent: list[int] = field(default_factory=list)

    # --- decisions -----------------------------------------------------------------

    def admit(self, reading: Reading, lateness_ms: int, memory: int) -> str:
        """Accept, or call a duplicate or late, one valid reading; updates the state when accepted."""
        ts = reading.ts
        recent = self.recent
        if self.count == 0:
            self._identify(reading)
            self.first_seen_ms = reading.received_ms
            recent.append(ts)
            self.newest_ts = ts
            self._accepted(reading)
            return ACCEPTED
        newest = self.newest_ts
        if ts > newest:
            delta = ts - newest
            if self.interval_ms <= 0:
                self.interval_ms = float(delta)
            elif delta <= _GAP_FACTOR * self.interval_ms:
                self.interval_ms += _INTERVAL_ALPHA * (delta - self.interval_ms)
            recent.append(ts)
            if len(recent) > memory:
                if len(recent) == memory + 1:  # the usual case, without the slice
                    del recent[0]
                else:
                    del recent[: len(recent) - memory]
            self.newest_ts = ts
            # _identify and _accepted inline: the usual reading (the sensor's next one), once per reading
            self.site, self.zone, self.utility, self.asset = reading.site, reading.zone, reading.utility, reading.asset
            self.count += 1
            if reading.received_ms > self.last_seen_ms:
                self.last_seen_ms = reading.received_ms
            self.last_values = reading.values
            self.last_quality = reading.quality
            return ACCEPTED
        if ts == newest:
            self.duplicates += 1
            return DUPLICATE
        if ts < newest - lateness_ms:
            self.late += 1
            return LATE
        i = bisect.bisect_left(recent, ts)
        if i < len(recent) and recent[i] == ts:
            self.duplicates += 1
            return DUPLICATE
        if i == 0 and len(recent) >= memory:
            # Older than everything remembered: cannot be checked, accepted (see module doc).
            self.unverified += 1
        else:
            recent.insert(i, ts)
            if len(recent) > memory:
                del recent[0]
        self._accepted(reading, latest=False)
        return ACCEPTED

    def counter_resets_in(self, reading: Reading, counters: frozenset[str]) -> list[str]:
        """The cumulative counters of ``reading`` (the next one of this sensor) that went below their last value."""
        if self.count == 0 or reading.ts <= self.newest_ts:
            return []
        last = self.last_values
        values = reading.values
        # A plain loop: once per reading of a meter, and a reset is rare (no list built for the usual answer).
        for c in counters:
            if c in values and c in last and values[c] < last[c]:
                return [c for c in counters if c in values and c in last and values[c] < last[c]]
        return []

    def _identify(self, reading: Reading) -> None:
        self.site, self.zone, self.utility, self.asset = reading.site, reading.zone, reading.utility, reading.asset

    def _accepted(self, reading: Reading, latest: bool = True) -> None:
        self.count += 1
        if reading.received_ms > self.last_seen_ms:
            self.last_seen_ms = reading.received_ms
        if latest:
            self.last_values = reading.values
            self.last_quality = reading.quality

    # --- silence ---------------------------------------------------------------------

    def silence_threshold_ms(self, factor: float, min_ms: int) -> int:
        """Quiet time after which this sensor counts as silent."""
        return max(min_ms, int(factor * self.interval_ms))

    def is_silent(self, now_ms: int, factor: float, min_ms: int) -> bool:
        return self.count > 0 and now_ms - self.last_seen_ms > self.silence_threshold_ms(factor, min_ms)

    # --- serialisation (the table stores plain dicts; orjson does the bytes) ----------

    def to_dict(self) -> dict[str, Any]:
        newest = self.newest_ts
        return {
            "sensor_id": self.sensor_id,
            "site": self.site,
            "zone": self.zone,
            "utility": self.utility,
            "asset": self.asset,
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
            "newest_ts": newest,
            "interval_ms": round(self.interval_ms, 1),
            "count": self.count,
            "duplicates": self.duplicates,
            "late": self.late,
            "unverified": self.unverified,
            "unknown_metrics": self.unknown_metrics,
            "counter_resets": self.counter_resets,
            "last_values": self.last_values,
            "last_quality": self.last_quality,
            # Offsets back from the newest keep the changelog record small.
            "recent_back": [newest - t for t in self.recent],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensorState:
        newest = int(data.get("newest_ts", 0))
        return cls(
            sensor_id=data["sensor_id"],
            site=data.get("site", ""),
            zone=data.get("zone", ""),
            utility=data.get("utility", ""),
            asset=data.get("asset", ""),
            first_seen_ms=int(data.get("first_seen_ms", 0)),
            last_seen_ms=int(data.get("last_seen_ms", 0)),
            newest_ts=newest,
            interval_ms=float(data.get("interval_ms", 0.0)),
            count=int(data.get("count", 0)),
            duplicates=int(data.get("duplicates", 0)),
            late=int(data.get("late", 0)),
            unverified=int(data.get("unverified", 0)),
            unknown_metrics=int(data.get("unknown_metrics", 0)),
            counter_resets=int(data.get("counter_resets", 0)),
            last_values=dict(data.get("last_values") or {}),
            last_quality=data.get("last_quality"),
            recent=sorted(newest - int(b) for b in data.get("recent_back") or ()),
        )

    def stats(self) -> dict[str, Any]:
        """What the Redis ``sensor`` cache shows next to the latest reading."""
        return {
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
            "newest_ts": self.newest_ts,
            "interval_ms": round(self.interval_ms, 1),
            "count": self.count,
            "duplicates": self.duplicates,
            "late": self.late,
            "unverified": self.unverified,
            "unknown_metrics": self.unknown_metrics,
            "counter_resets": self.counter_resets,
        }


def silence_transitions(
    states: dict[str, SensorState], silent: set[str], now_ms: int, factor: float, min_ms: int
) -> tuple[list[SensorState], list[SensorState]]:
    """``(went_silent, came_back)`` given which sensors were announced silent before."""
    went: list[SensorState] = []
    back: list[SensorState] = []
    for sensor_id, state in states.items():
        quiet = state.is_silent(now_ms, factor, min_ms)
        if quiet and sensor_id not in silent:
            went.append(state)
        elif not quiet and sensor_id in silent:
            back.append(state)
    return went, back
