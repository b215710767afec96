"""The network the console draws: sites, zones and sensors from the simulator's description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.simulator.network import Network


@dataclass(frozen=True)
class Topology:
    """Lookups over one network description, built once at start."""

    network: Network

    @classmethod
    def load(cls, path: str = "") -> Topology:
        return cls(Network.load(path) if path else Network.default())

    def describe(self) -> dict[str, Any]:
        """``{sites: [{id, utility, zones: [{id, utility, sensors: [...]}]}]}`` (a site's utility: its first zone's)."""
        sites = []
        for site in self.network.sites:
            zones = []
            for zone in self.zones_of(site.id):
                sensors = [{"id": s.id, "asset": s.asset, "metrics": list(s.metrics)} for s in self.sensors_of(zone.id)]
                zones.append({"id": zone.id, "utility": zone.utility, "sensors": sensors})
            sites.append({"id": site.id, "utility": zones[0]["utility"] if zones else "", "zones": zones})
        return {"sites": sites}

    def zones_of(self, site: str) -> list[Any]:
        return [z for z in self.network.zones if z.site == site]

    def sensors_of(self, zone: str) -> list[Any]:
        return [s for s in self.network.sensors if s.zone == zone]

    def zone(self, zone_id: str) -> Any | None:
        return self.network.zone_by_id.get(zone_id)

    def sensor(self, sensor_id: str) -> Any | None:
        i = self.network.sensor_index.get(sensor_id)
        return None if i is None else self.network.sensors[i]

    def site_ids(self) -> list[str]:
        return [s.id for s in self.network.sites]
