import numpy as np

from shared.codec import decode, dumps, loads
from shared.records import Anomaly, Reading, Risk


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
