"""The one duration parser (shared.timeutil): the alerts config, the console's silences, history's query
parameters, the simulator's and retrain's flags all read durations through it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.history.queries import QueryError, duration_ms
from shared.timeutil import parse_duration_ms, parse_duration_s

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("15 min", 900.0),
        ("1h30m", 5400.0),
        ("7d", 604_800.0),
        ("2w", 1_209_600.0),
        ("90", 90.0),
        ("1.5h", 5400.0),
        ("4H", 14_400.0),
        (45, 45.0),
        (0.25, 0.25),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_durations_in_every_written_form(value: object, seconds: float) -> None:
    assert parse_duration_s(value) == seconds  # type: ignore[arg-type]
    assert parse_duration_ms(value) == round(seconds * 1000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", "  ", "5 minutes", "m5", "5x", "-5m", "-3", -1, float("inf"), float("nan"), True, None, [5]]
)
def test_what_is_not_a_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s(value)  # type: ignore[arg-type]


def test_history_names_the_query_parameter_of_a_bad_duration() -> None:
    assert duration_ms("5m", "step") == 300_000
    with pytest.raises(QueryError, match="'step'"):
        duration_ms("-5m", "step")
