"""Fast encoding of the records ingest writes (a literal dict is ~3x faster for orjson than a slotted dataclass).

A unit test checks these match ``dataclasses.asdict`` of the records, so they cannot drift.
"""

from __future__ import annotations

from typing import Any

import orjson

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


def reading_bytes(r: Reading) -> bytes:
    # Everything in ``extra`` came out of a JSON decoder that gives orjson-writable values (validation.decode).
    # reading_dict's literal again, not called: once per clean reading (test_reading_bytes_is_the_records_dict).
    return _dumps(
        {
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
    )


_dumps = orjson.dumps
