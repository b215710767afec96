"""What the network looks like now: zone and sensor state from Redis (the services' read cache). What only
history knows (anomaly counts, losses, what is usual for a sensor) comes from the history API.

Status of a zone: ``at_risk`` when its latest risk is at or above ``incident_threshold`` and not ``normal``,
else ``anomalous`` when one of its sensors' latest score is anomalous, else ``normal``.
"""

from __future__ import annotations

from typing import Any

from services.console.network import Topology
from shared.cache import Cache

INCIDENT_THRESHOLD = 0.5


def zone_status(risk: dict[str, Any] | None, anomalous: bool) -> str:
    if risk and float(risk.get("probability") or 0) >= INCIDENT_THRESHOLD and risk.get("incident_type") != "normal":
        return "at_risk"
    return "anomalous" if anomalous else "normal"


class Status:
    def __init__(self, topology: Topology, cache: Cache):
        self.topology = topology
        self.cache = cache

    async def zone_states(self) -> list[dict[str, Any]]:
        """Every zone's status, probability and incident type (Redis: risk per zone, score per sensor)."""
        net = self.topology.network
        risks = await self.cache.get_many("risk", [z.id for z in net.zones])
        scores = await self.cache.get_many("score", [s.id for s in net.sensors])
        flagged = {s.zone for s in net.sensors if (scores.get(s.id) or {}).get("is_anomaly")}
        out = []
        for z in net.zones:
            risk = risks.get(z.id)
            out.append(
                {
                    "site": z.site,
                    "zone": z.id,
                    "utility": z.utility,
                    "status": zone_status(risk, z.id in flagged),
                    "probability": risk.get("probability") if risk else None,
                    "incident_type": risk.get("incident_type") if risk else None,
                }
            )
        return out

    async def zone(self, zone_id: str) -> dict[str, Any] | None:
        z = self.topology.zone(zone_id)
        if z is None:
            return None
        sensors = self.topology.sensors_of(zone_id)
        ids = [s.id for s in sensors]
        latest = await self.cache.get_many("sensor", ids)
        scores = await self.cache.get_many("score", ids)
        risk = await self.cache.get("risk", zone_id)
        rows = []
        for s in sensors:
            score = scores.get(s.id) or {}
            rows.append(
                {
                    "id": s.id,
                    "asset": s.asset,
                    "latest": ((latest.get(s.id) or {}).get("reading") or {}).get("values", {}),
                    "score": score.get("score"),
                    "anomalous": bool(score.get("is_anomaly")),
                }
            )
        return {
            "site": z.site,
            "zone": z.id,
            "utility": z.utility,
            "status": zone_status(risk, any(r["anomalous"] for r in rows)),
            "risk": {k: risk.get(k) for k in ("probability", "incident_type", "ts")} if risk else None,
            "sensors": rows,
            "forecast": {k: risk.get(k) for k in ("horizon_s", "forecast", "class_probs", "loss", "ts")}
            if risk
            else None,
        }

    async def sensor(self, sensor_id: str) -> dict[str, Any] | None:
        s = self.topology.sensor(sensor_id)
        if s is None:
            return None
        cached = await self.cache.get("sensor", sensor_id) or {}
        score = await self.cache.get("score", sensor_id) or {}
        return {
            "id": s.id,
            "site": s.site,
            "zone": s.zone,
            "asset": s.asset,
            "metrics": list(s.metrics),
            "latest": (cached.get("reading") or {}).get("values", {}),
            "score": score.get("score"),
            "threshold": score.get("threshold"),
            "anomalous": bool(score.get("is_anomaly")),
        }
