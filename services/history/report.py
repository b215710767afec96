"""The planners' report (``GET /v1/history/report``, the console's report page and CSV): for a period, zones
ranked by incidents, risk and estimated losses, with daily trends.

Read from the history store's incidents and risk. Ranking: incidents,
then estimated loss cost, then peak risk, all descending.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import asyncpg

DAY = "to_char(to_timestamp({col} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
CSV_COLUMNS = (
    "rank",
    "site",
    "zone",
    "incidents",
    "risk_max",
    "risk_mean",
    "loss_volume",
    "loss_cost",
    "unit",
    "currency",
)


async def build(db: asyncpg.Pool, start: int, to: int) -> dict[str, Any]:
    incidents = await db.fetch(
        "SELECT site, zone, " + DAY.format(col="start_ts") + " AS day, count(*) AS n, "
        "sum(loss_volume) AS volume, sum(loss_cost) AS cost, max(loss_unit) AS unit, max(currency) AS currency "
        "FROM incidents WHERE start_ts < $2 AND end_ts >= $1 GROUP BY 1, 2, 3",
        start,
        to,
    )
    risk = await db.fetch(
        "SELECT site, zone, " + DAY.format(col="ts") + " AS day, max(probability) AS pmax, "
        "avg(probability) AS pmean, count(*) AS n FROM risk WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2, 3",
        start,
        to,
    )
    zones: dict[tuple[str, str], dict[str, Any]] = {}

    def zone(site: str, name: str) -> dict[str, Any]:
        return zones.setdefault(
            (site, name),
            {
                "site": site,
                "zone": name,
                "incidents": 0,
                "risk_max": 0.0,
                "risk_mean": 0.0,
                "loss_volume": 0.0,
                "loss_cost": 0.0,
                "unit": "",
                "currency": "",
                "_risk_n": 0,
                "_days": {},
            },
        )

    def day(z: dict[str, Any], d: str) -> dict[str, Any]:
        return z["_days"].setdefault(d, {"day": d, "incidents": 0, "risk_max": 0.0, "loss_volume": 0.0})

    for r in incidents:
        z = zone(r["site"], r["zone"])
        z["incidents"] += r["n"]
        z["loss_volume"] += float(r["volume"] or 0)
        z["loss_cost"] += float(r["cost"] or 0)
        z["unit"] = z["unit"] or r["unit"] or ""
        z["currency"] = z["currency"] or r["currency"] or ""
        d = day(z, r["day"])
        d["incidents"] += r["n"]
        d["loss_volume"] += float(r["volume"] or 0)
    for r in risk:
        z = zone(r["site"], r["zone"])
        z["risk_max"] = max(z["risk_max"], float(r["pmax"]))
        total = z["risk_mean"] * z["_risk_n"] + float(r["pmean"]) * r["n"]
        z["_risk_n"] += r["n"]
        z["risk_mean"] = total / z["_risk_n"]
        d = day(z, r["day"])
        d["risk_max"] = max(d["risk_max"], float(r["pmax"]))
    ranked = sorted(zones.values(), key=lambda z: (-z["incidents"], -z["loss_cost"], -z["risk_max"], z["zone"]))
    out = []
    for z in ranked:
        days = z.pop("_days")
        z.pop("_risk_n")
        z["risk_mean"] = round(z["risk_mean"], 4)
        z["trend"] = [days[d] for d in sorted(days)]
        out.append(z)
    return {"from": start, "to": to, "zones": out}


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for rank, z in enumerate(report["zones"], 1):
        writer.writerow([rank, *(z[c] for c in CSV_COLUMNS[1:])])
    return buf.getvalue()
