import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.codec import decode, dumps, dumps_record, loads
from shared.records import Anomaly, Reading, Risk, Score


def test_reading_round_trips_through_orjson() -> None:
    r = Reading("s-1", 1_700_000_000_000, "north", "z1", "water", "pipe", {"pressure": 480.5, "flow": 12.0})
    back = decode(Reading, dumps(r))
    assert back == r
    assert back.v == 1


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    data = loads(dumps(Reading("s-1", 1, "a", "b", "gas", "gas_station", {"pressure": 1.0})))
    data["added_in_v2"] = {"x": 1}
    data["v"] = 2
    r = Reading.from_dict(data)
    assert r.sensor_id == "s-1" and r.v == 2
    assert not hasattr(r, "added_in_v2")


def test_numpy_values_serialise() -> None:
    a = Anomaly(
        "s", 1, "a", "b", "water", "pipe", np.float64(3.5), 2.5, "v1", "pressure high", values={"p": np.float32(1.5)}
    )
    assert loads(dumps(a))["score"] == 3.5
    risk = Risk("a", "z", "water", 1, 3600, 0.7, "leak", forecast={"flow": {"expected": np.float64(1.0)}})
    assert loads(dumps(risk))["forecast"]["flow"]["expected"] == 1.0


def no_plus(max_size: int) -> st.SearchStrategy[str]:
    """Text without ``+``, so the exponents' are the only ones in the bytes."""
    return st.text(st.characters(exclude_characters="+", exclude_categories=("Cs",)), max_size=max_size)


@hsettings(max_examples=300, deadline=None)
@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.dictionaries(no_plus(max_size=10), st.floats() | st.integers(-(2**63), 2**63 - 1), max_size=5),
    no_plus(max_size=30),
)
def test_dumps_record_writes_what_dumps_writes_but_for_the_exponents_plus(
    score: float, values: dict, text: str
) -> None:
    records = [
        Score(text or "s", 1, "si", "zo", "water", "pipe", score, 0.5, False, "pipe", "v1", values),
        Anomaly(
            "s",
            2,
            "si",
            "zo",
            "water",
            "pipe",
            score,
            0.5,
            "v1",
            text,
            [{"metric": text, "z": np.float64(score)}],
            values,
            "critical",
        ),
    ]
    for r in records:
        fast, slow = dumps_record(r), dumps(r)
        assert fast == slow.replace(b"e+", b"e") or (b"e+" not in slow and fast == slow)
        assert loads(fast) == loads(slow) or score != score or any(v != v for v in values.values())


def test_dumps_record_writes_numpy_as_dumps_does_and_refuses_what_it_cannot_write() -> None:
    a = Anomaly("s", 2, "si", "zo", "water", "pipe", 1.5, 0.5, "v1", "r", [{"z": np.float32(0.5), "n": np.int64(3)}])
    assert dumps_record(a) == dumps(a)
    with pytest.raises(TypeError):
        dumps_record(Anomaly("s", 2, "si", "zo", "water", "pipe", 1.5, 0.5, "v1", "r", [{"x": object()}]))
