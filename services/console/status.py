"""What the network looks like now: zone and sensor state from Redis (the services' read cache), with what
only history knows (anomaly counts, what is usual for a sensor, its reasons) read from the history database.

Status of a zone: ``at_risk`` when its latest risk is at or above ``incident_threshold`` and not ``normal``,
else ``anomalous`` when one of its sensors' latest score is anomalous, else ``normal``.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from services.console.network import Topology
from shared.cache import Cache

INCIDENT_THRESHOLD = 0.5
HOUR_MS = 3_600_000


def zone_status(risk: dict[str, Any] | None, anomalous: bool) -> str:
    if risk and float(risk.get("probability") or 0) >= INCIDENT_THRESHOLD and risk.get("incident_type") != "normal":
        return "at_risk"
    return "anomalous" if anomalous else "normal"


class Status:
    def __init__(self, topology: Topology, cache: Cache, db: asyncpg.Pool):
        self.topology = topology
        self.cache = cache
        self.db = db

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

    async def anomalies_since(self, since_ms: int) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM anomalies WHERE ts >= $1", since_ms) or 0)

    async def loss_today(self) -> dict[str, Any]:
        """Estimated loss of the incidents active today (UTC), from the history store's incidents."""
        day = int(time.time() // 86400 * 86400 * 1000)
        row = await self.db.fetchrow(
            "SELECT coalesce(sum(loss_volume), 0) AS volume, coalesce(sum(loss_cost), 0) AS cost, "
            "max(loss_unit) AS unit, max(currency) AS currency FROM incidents WHERE end_ts >= $1",
            day,
        )
        return {
            "volume": float(row["volume"]),
            "cost": float(row["cost"]),
            "unit": row["unit"] or "m3",
            "currency": row["currency"] or "",
        }

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

    async def risk_points(self, zone_id: str, start: int, to: int) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT ts, probability, incident_type FROM risk WHERE zone = $1 AND ts >= $2 AND ts < $3 ORDER BY ts "
            "LIMIT 20000",
            zone_id,
            start,
            to,
        )
        return [dict(r) for r in rows]

    async def sensor(self, sensor_id: str) -> dict[str, Any] | None:
        s = self.topology.sensor(sensor_id)
        if s is None:
            return None
        cached = await self.cache.get("sensor", sensor_id) or {}
        score = await self.cache.get("score", sensor_id) or {}
        since = int(time.time() * 1000) - 24 * HOUR_MS
        reasons = await self.db.fetch(
            "SELECT reason, max(ts) AS ts FROM anomalies WHERE sensor_id = $1 AND ts >= $2 GROUP BY reason "
            "ORDER BY 2 DESC LIMIT 5",
            sensor_id,
            since,
        )
        # What is usual: the mean and spread of its one-minute means over the last day.
        usual = await self.db.fetch(
            "SELECT metric, avg(sum / count) AS mean, coalesce(stddev_samp(sum / count), 0) AS std FROM rollups "
            "WHERE sensor_id = $1 AND minute >= $2 AND count > 0 GROUP BY metric",
            sensor_id,
            since,
        )
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
            "reasons": [r["reason"] for r in reasons],
            "usual": {r["metric"]: {"mean": float(r["mean"]), "std": float(r["std"])} for r in usual},
        }
