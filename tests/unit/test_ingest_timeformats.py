"""Local times read in a mapping's zone: the memoised offsets give exactly what zoneinfo gives, transitions included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from services.ingest import timeformats

# Zones with DST (one by 30 minutes: Lord Howe), half-hour and 45-minute offsets, and a fixed offset.
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Chatham", "+04:00"]
# Two days around each 2026 transition of those zones (northern spring/autumn, southern autumn/spring).
DAYS = ["2026-03-07", "2026-03-28", "2026-04-04", "2026-09-26", "2026-10-03", "2026-10-24", "2026-10-31"]


@pytest.mark.parametrize("zone", ZONES)
def test_local_times_around_transitions_match_zoneinfo(zone: str) -> None:
    tz = ZoneInfo(zone) if "/" in zone else timezone(timedelta(hours=4))
    checked = 0
    for day in DAYS:
        t = datetime.fromisoformat(day)
        while t < datetime.fromisoformat(day) + timedelta(days=2):
            text = t.isoformat()
            want = round(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)
            assert timeformats.to_epoch_ms(text, "iso", tz) == want, text
            # and again, now from the memo
            assert timeformats.to_epoch_ms(text, "iso", tz) == want, text
            t += timedelta(minutes=7, seconds=13, microseconds=250)
            checked += 1
    assert checked > 2000


def test_an_offset_in_the_text_wins_over_the_zone() -> None:
    tz = ZoneInfo("Asia/Baku")
    assert timeformats.to_epoch_ms("2026-01-25T07:50:07+00:00", "iso", tz) == 1769327407000
    assert timeformats.to_epoch_ms("2026-01-25T11:50:07", "iso", tz) == 1769327407000
