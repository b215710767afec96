"""The network: the default one, description files, and the reasons a bad description is refused."""

from __future__ import annotations

import json

import pytest

from services.simulator import Network, NetworkError
from services.simulator.assets import ASSETS
from services.simulator.network import default_description


def test_default_network_has_a_few_hundred_sensors_of_every_kind() -> None:
    net = Network.default(7)
    assert 200 <= len(net) <= 400
    assert len(net.sites) == 4
    assert {s.asset for s in net.sensors} == set(ASSETS)
    assert {s.utility for s in net.sensors} == {"water", "energy", "gas"}
    assert len({z.id for z in net.zones}) == len(net.zones)
    assert 10 < net.natural_rate() < 40
    # Device quirks: most devices plain, some not.
    formats = [s.ts_format for s in net.sensors]
    assert formats.count("ms") > len(net) / 2 and {"s", "iso", "iso_local"} <= set(formats)
    assert 0 < sum(bool(s.units) for s in net.sensors) < len(net) / 4
    assert len(Network.default(7, scale=3)) == 3 * len(net)


def test_same_seed_same_network_other_seed_other_baselines() -> None:
    a, b, c = Network.default(7), Network.default(7), Network.default(8)
    assert a.to_dict() == b.to_dict()
    assert [s.params for s in a.sensors] != [s.params for s in c.sensors]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix: str) -> None:
    net = Network.default(7)
    path = tmp_path / f"net{suffix}"
    net.save(path)
    again = Network.load(path)
    assert again.to_dict() == net.to_dict()


def test_compact_description_expands(tmp_path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(
        """
name: small
seed: 3
sites:
  - id: town
    tz_offset_h: 1
    zones:
      - id: town-dma1
        utility: water
        sensors:
          - {asset: pipe, count: 3, metrics: [pressure]}
          - {id: town-inlet, asset: pipe, params: {flow_base: 100}, units: {pressure: psi}, ts_format: iso}
      - id: town-gas
        utility: gas
        sensors: [{asset: gas_station, count: 2, interval_s: 15}]
"""
    )
    net = Network.load(path)
    ids = [s.id for s in net.sensors]
    assert ids == [
        "town-dma1-pipe01",
        "town-dma1-pipe02",
        "town-dma1-pipe03",
        "town-inlet",
        "town-gas-gasstation01",
        "town-gas-gasstation02",
    ]
    inlet = net.sensors[3]
    assert inlet.params["flow_base"] == 100 and inlet.units == {"pressure": "psi"} and inlet.ts_format == "iso"
    assert net.sensors[0].metrics == ("pressure",)
    assert net.sensors[-1].interval_s == 15 and net.zone_by_id["town-gas"].profile == "heating"


def _desc(**sensor) -> dict:
    return {"sites": [{"id": "a", "zones": [{"id": "a-z", "utility": "water", "sensors": [sensor]}]}]}


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        (_desc(asset="teapot"), "unknown asset"),
        (_desc(asset="pipe", metrics=["voltage"]), "measures some of"),
        (_desc(asset="pipe", units={"pressure": "L/s"}), "does not fit"),
        (_desc(asset="pipe", id="a b"), "may not"),
        (_desc(asset="pipe", ts_format="julian"), "ts_format"),
        (_desc(asset="pipe", interval_s=0), "positive"),
        ({"sites": [{"id": "a", "zones": [{"id": "z", "profile": "nocturnal", "sensors": []}]}]}, "unknown profile"),
        ({"sites": "nope"}, "must be a list"),
        (
            {"sites": [{"id": "a", "zones": [{"id": "z", "sensors": []}, {"id": "z", "sensors": []}]}]},
            "used twice",
        ),
    ],
)
def test_bad_descriptions_say_why(description: dict, reason: str) -> None:
    with pytest.raises(NetworkError, match=reason):
        Network.from_dict(description)


def test_unreadable_files_say_why(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(NetworkError, match="not valid JSON"):
        Network.load(bad)
    with pytest.raises(NetworkError, match="cannot read"):
        Network.load(tmp_path / "missing.yaml")


def test_default_description_is_plain_data() -> None:
    assert json.loads(json.dumps(default_description(2)))["sites"][5]["id"] == "hillcrest2"
