"""The network being simulated: sites, zones and the sensors in them.

A network is described by a YAML or JSON file (see docs/simulator.md) or built by
:meth:`Network.default`. A description may be compact — ``{asset: pipe, count: 6}``
— and anything it leaves out (sensor ids, baselines, noise, device quirks) is drawn
deterministically from the network's seed and each sensor's id, so the same file
always expands to the same network. :meth:`Network.save` writes the expanded form.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.simulator.assets import ASSETS
from services.simulator.profiles import PROFILES
from services.simulator.units import CANONICAL_UNITS, DEVICE_UNIT_BASE

TS_FORMATS = ("ms", "s", "iso", "iso_local")
UTILITY_PROFILE = {"water": "residential", "energy": "office", "gas": "heating"}
#: Device units a quirky device may use instead of the canonical one.
_ALT_UNITS = {"pressure": ("psi", "bar"), "flow": ("L/s",), "temperature": ("°F",), "energy": ("Wh",)}


@dataclass
class Sensor:
    id: str
    site: str
    zone: str
    utility: str
    asset: str
    metrics: tuple[str, ...]
    interval_s: float
    params: dict[str, float] = field(default_factory=dict)
    #: Non-canonical units this device reports in, per metric.
    units: dict[str, str] = field(default_factory=dict)
    ts_format: str = "ms"
    send_units: bool = True
    send_quality: bool = False


@dataclass
class Zone:
    id: str
    site: str
    utility: str
    profile: str
    scale: float = 1.0
    #: Shift of this zone's daily curve against the site clock (people are not synchronised).
    phase_h: float = 0.0


@dataclass
class Site:
    id: str
    tz_offset_h: float = 0.0


def _stable_seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class NetworkError(ValueError):
    """A network description that cannot be used, with the reason."""


class Network:
    """Sites, zones and sensors; sensors are in a fixed order (their index in every array)."""

    def __init__(
        self, sites: list[Site], zones: list[Zone], sensors: list[Sensor], name: str = "network", seed: int = 0
    ):
        self.name = name
        self.seed = seed
        self.sites = sites
        self.zones = zones
        self.sensors = sensors
        self._validate()
        self.site_by_id = {s.id: s for s in sites}
        self.zone_by_id = {z.id: z for z in zones}
        self.sensor_index = {s.id: i for i, s in enumerate(sensors)}

    def __len__(self) -> int:
        return len(self.sensors)

    def __repr__(self) -> str:
        return f"Network({self.name!r}: {len(self.sites)} sites, {len(self.zones)} zones, {len(self.sensors)} sensors)"

    def _validate(self) -> None:
        site_ids = {s.id for s in self.sites}
        zone_ids: set[str] = set()
        for z in self.zones:
            if z.id in zone_ids:
                raise NetworkError(f"zone id {z.id!r} is used twice (zone ids are unique across sites)")
            zone_ids.add(z.id)
            if z.site not in site_ids:
                raise NetworkError(f"zone {z.id!r} is in unknown site {z.site!r}")
            if z.profile not in PROFILES:
                raise NetworkError(f"zone {z.id!r}: unknown profile {z.profile!r}; known: {', '.join(PROFILES)}")
        seen: set[str] = set()
        for s in self.sensors:
            where = f"sensor {s.id!r}"
            if s.id in seen:
                raise NetworkError(f"{where} is defined twice")
            seen.add(s.id)
            if any(c in s.id for c in "/+# ") or not s.id:
                raise NetworkError(f"{where}: ids may not be empty or contain '/', '+', '#' or spaces (MQTT topics)")
            if s.zone not in zone_ids:
                raise NetworkError(f"{where} is in unknown zone {s.zone!r}")
            kind = ASSETS.get(s.asset)
            if kind is None:
                raise NetworkError(f"{where}: unknown asset {s.asset!r}; known: {', '.join(ASSETS)}")
            bad = [m for m in s.metrics if m not in kind.metrics]
            if bad or not s.metrics:
                raise NetworkError(
                    f"{where}: a {s.asset} measures some of {list(kind.metrics)}, not {bad or 'nothing'}"
                )
            missing = [p for p in kind.param_ranges if p not in s.params]
            if missing:
                raise NetworkError(f"{where}: missing parameters {missing}")
            if s.interval_s <= 0:
                raise NetworkError(f"{where}: interval_s must be positive")
            if s.ts_format not in TS_FORMATS:
                raise NetworkError(f"{where}: ts_format must be one of {TS_FORMATS}")
            for metric, unit in s.units.items():
                if (
                    metric not in s.metrics
                    or DEVICE_UNIT_BASE.get(unit, CANONICAL_UNITS[metric]) != CANONICAL_UNITS[metric]
                ):
                    raise NetworkError(f"{where}: unit {unit!r} does not fit metric {metric!r}")

    # ---- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def default(cls, seed: int = 7, scale: int = 1) -> Network:
        """The demo network: ``4 * scale`` sites with water, pumps, quality, energy and gas; ~270 sensors per 4 sites."""
        return cls.from_dict(default_description(scale), seed=seed)

    @classmethod
    def load(cls, path: str | Path, seed: int | None = None) -> Network:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise NetworkError(f"cannot read network file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise NetworkError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
        if not isinstance(data, dict):
            raise NetworkError(f"{path}: expected a mapping with 'sites'")
        return cls.from_dict(data, seed=seed)

    @classmethod
    def from_dict(cls, data: dict[str, Any], seed: int | None = None) -> Network:
        """Expand a (possibly compact) description; ``seed`` overrides the description's own seed."""
        seed = int(data.get("seed", 7) if seed is None else seed)
        sites: list[Site] = []
        zones: list[Zone] = []
        sensors: list[Sensor] = []
        for site_d in _items(data, "sites", "network"):
            site = Site(id=str(_req(site_d, "id", "site")), tz_offset_h=float(site_d.get("tz_offset_h", 0.0)))
            sites.append(site)
            for zone_d in _items(site_d, "zones", f"site {site.id}"):
                zid = str(_req(zone_d, "id", f"a zone of site {site.id}"))
                utility = str(zone_d.get("utility", "water"))
                zrng = np.random.default_rng(_stable_seed(seed, "zone", zid))
                zone = Zone(
                    id=zid,
                    site=site.id,
                    utility=utility,
                    profile=str(zone_d.get("profile", UTILITY_PROFILE.get(utility, "residential"))),
                    scale=float(zone_d.get("scale", round(float(zrng.uniform(0.85, 1.15)), 3))),
                    phase_h=float(zone_d.get("phase_h", round(float(zrng.uniform(-0.6, 0.6)), 3))),
                )
                zones.append(zone)
                counters: dict[str, int] = {}
                for sd in _items(zone_d, "sensors", f"zone {zid}"):
                    asset = str(_req(sd, "asset", f"a sensor of zone {zid}"))
                    if asset not in ASSETS:
                        raise NetworkError(f"zone {zid}: unknown asset {asset!r}; known: {', '.join(ASSETS)}")
                    count = int(sd.get("count", 1))
                    if "id" in sd and count != 1:
                        raise NetworkError(f"zone {zid}: a sensor with an explicit id cannot have count {count}")
                    for _ in range(count):
                        counters[asset] = counters.get(asset, 0) + 1
                        sid = str(sd.get("id") or f"{zid}-{asset.replace('_', '')}{counters[asset]:02d}")
                        sensors.append(_expand_sensor(sd, sid, site, zone, seed))
        return cls(sites, zones, sensors, name=str(data.get("name", "network")), seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The expanded description: loading it gives this exact network."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "sites": []}
        for site in self.sites:
            zones = []
            for zone in (z for z in self.zones if z.site == site.id):
                sensors = []
                for s in (s for s in self.sensors if s.zone == zone.id):
                    d = asdict(s)
                    del d["site"], d["zone"], d["utility"]
                    d["metrics"] = list(s.metrics)
                    sensors.append(d)
                zd = asdict(zone)
                del zd["site"]
                zones.append({**zd, "sensors": sensors})
            out["sites"].append({**asdict(site), "zones": zones})
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
        else:
            path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    # ---- queries --------------------------------------------------------------------------------------------------

    def sensors_in(self, zone: str | None = None, site: str | None = None, asset: str | None = None) -> list[int]:
        return [
            i
            for i, s in enumerate(self.sensors)
            if (zone is None or s.zone == zone)
            and (site is None or s.site == site)
            and (asset is None or s.asset == asset)
        ]

    def natural_rate(self) -> float:
        """Readings per second the network sends at its configured intervals."""
        return float(sum(1.0 / s.interval_s for s in self.sensors))

    def summary(self) -> str:
        lines = [repr(self), f"natural rate: {self.natural_rate():.1f} readings/s"]
        for site in self.sites:
            for zone in (z for z in self.zones if z.site == site.id):
                members = [s for s in self.sensors if s.zone == zone.id]
                kinds: dict[str, int] = {}
                for s in members:
                    kinds[s.asset] = kinds.get(s.asset, 0) + 1
                detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
                lines.append(f"  {zone.id:24s} {zone.utility:7s} {zone.profile:12s} {detail}")
        return "\n".join(lines)


def _items(d: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = d.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise NetworkError(f"{where}: '{key}' must be a list of mappings")
    return items


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise NetworkError(f"{where}: '{key}' is required")
    return d[key]


def _expand_sensor(sd: dict[str, Any], sid: str, site: Site, zone: Zone, seed: int) -> Sensor:
    kind = ASSETS[sd["asset"]]
    rng = np.random.default_rng(_stable_seed(seed, "sensor", sid))
    params = {**kind.sample_params(rng), **{k: float(v) for k, v in (sd.get("params") or {}).items()}}
    metrics = tuple(sd.get("metrics") or kind.metrics)
    # Device quirks: most devices are plain (epoch ms, canonical units), some are not.
    roll = rng.random(4)
    if "units" in sd:
        units = dict(sd["units"] or {})
    elif roll[0] < 0.12:
        units = {m: str(rng.choice(_ALT_UNITS[m])) for m in metrics if m in _ALT_UNITS}
    else:
        units = {}
    fmt_default = "ms" if roll[1] < 0.8 else ("iso" if roll[1] < 0.88 else ("iso_local" if roll[1] < 0.92 else "s"))
    return Sensor(
        id=sid,
        site=site.id,
        zone=zone.id,
        utility=zone.utility,
        asset=kind.name,
        metrics=metrics,
        interval_s=float(sd.get("interval_s", kind.interval_s)),
        params=params,
        units=units,
        ts_format=str(sd.get("ts_format", fmt_default)),
        send_units=bool(sd.get("send_units", bool(units) or roll[2] < 0.7)),
        send_quality=bool(sd.get("send_quality", roll[3] < 0.3)),
    )


_SITE_NAMES = ("riverside", "hillcrest", "lakeside", "oldtown")


def default_description(scale: int = 1) -> dict[str, Any]:
    """The compact description of the default network (``scale`` copies of four sites)."""
    sites = []
    for n in range(4 * max(1, scale)):
        name = _SITE_NAMES[n % 4] + (str(n // 4 + 1) if n >= 4 else "")
        dmas = []
        for d in range(1, 6):
            dmas.append(
                {
                    "id": f"{name}-dma{d}",
                    "utility": "water",
                    "profile": "industrial" if (d == 5 and n % 2 == 0) else "residential",
                    "sensors": [
                        {"asset": "pipe", "count": 1, "metrics": ["pressure", "flow"]},  # the DMA inlet meter
                        {"asset": "pipe", "count": 5, "metrics": ["pressure"]},
                        {"asset": "pipe", "count": 1, "metrics": ["flow"]},
                        {"asset": "quality_station", "count": 2},
                    ],
                }
            )
        sites.append(
            {
                "id": name,
                "tz_offset_h": 0 if n % 4 < 2 else 1,
                "zones": [
                    {
                        "id": f"{name}-plant",
                        "utility": "water",
                        "profile": "residential",
                        "sensors": [
                            {"asset": "pump", "count": 4},
                            {"asset": "reservoir", "count": 2},
                            {"asset": "quality_station", "count": 1},
                        ],
                    },
                    *dmas,
                    {
                        "id": f"{name}-bldg-a",
                        "utility": "energy",
                        "profile": "office",
                        "sensors": [{"asset": "meter", "count": 7}],
                    },
                    {
                        "id": f"{name}-bldg-b",
                        "utility": "energy",
                        "profile": "office" if n % 2 else "residential",
                        "sensors": [{"asset": "meter", "count": 6}],
                    },
                    {
                        "id": f"{name}-gas",
                        "utility": "gas",
                        "profile": "heating",
                        "sensors": [{"asset": "gas_station", "count": 4}],
                    },
                ],
            }
        )
    return {"name": "flowwatch-default", "sites": sites}
