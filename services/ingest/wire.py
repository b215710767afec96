"""A clean reading as a dict, as readings.clean carries it (the Redis cache's latest reading per sensor).

The reading itself goes to readings.clean by :func:`shared.codec.dumps_record`. A unit test checks both match
``dataclasses.asdict`` of the record, so they cannot drift.
"""

from __future__ import annotations

from typing import Any

from shared.records import Reading


def reading_dict(r: Reading) -> dict[str, Any]:
    return {
        "sensor_id": r.sensor_id,
        "ts": r.ts,
        "site": r.site,
        "zone": r.zone,
        "utility": r.utility,
        "asset": r.asset,
        "values": r.values,
        "units": r.units,
        "quality": r.quality,
        "extra": r.extra,
        "received_ms": r.received_ms,
        "source": r.source,
        "v": r.v,
    }
