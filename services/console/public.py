"""The public side: the supply situation per locality in plain words, and leak reports from the public.

Nothing internal leaves here: no sensor, zone or model names, no probabilities; a locality is a site.
A report is validated field by field (a 400 names the field) and becomes a record of the ``reports``
topic in the shape the history sink keeps (id, ts, site, zone, utility, kind, text).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

MESSAGES = {
    "green": "Water supply is normal.",
    "amber": "We are checking unusual readings in the network of your area. Supply is not affected so far.",
    "red": "A problem in the network affects your area (for example a leak or a burst). Our teams are on it; "
    "supply may be interrupted or at low pressure for a while.",
}
#: what the public sees: only pressure and level trouble (and incidents) change the light
WATCHED_METRICS = {"pressure", "level"}
LIMITS = {"name": 100, "locality": 100, "remark": 2000, "contact": 200}


class ReportError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def localities(
    sites: list[str], zone_states: list[dict[str, Any]], anomalous_watched: set[str], open_incident_sites: set[str]
) -> list[dict[str, Any]]:
    """A traffic light per site: red with an open incident or a zone at risk, amber when a pressure or level
    sensor of the site is anomalous, else green."""
    at_risk = {z["site"] for z in zone_states if z["status"] == "at_risk"}
    out = []
    for site in sites:
        if site in open_incident_sites or site in at_risk:
            light = "red"
        elif site in anomalous_watched:
            light = "amber"
        else:
            light = "green"
        out.append({"locality": site, "status": light, "message": MESSAGES[light]})
    return out


def _field(body: dict[str, Any], name: str, required: bool) -> str:
    value = body.get(name, "")
    if value is None and not required:
        value = ""
    if not isinstance(value, str):
        raise ReportError(name, "must be text")
    value = " ".join(value.split())  # one line: no control characters reach an operator's screen or a CSV
    if required and not value:
        raise ReportError(name, "is required")
    if len(value) > LIMITS[name]:
        raise ReportError(name, f"at most {LIMITS[name]} characters")
    return value


def report_record(body: Any, known_localities: list[str], now_ms: int | None = None) -> dict[str, Any]:
    """The ``reports`` record of a valid public report, else :class:`ReportError` naming the field."""
    if not isinstance(body, dict):
        raise ReportError("body", "must be a JSON object with name, locality, remark and optionally contact")
    name = _field(body, "name", True)
    locality = _field(body, "locality", True)
    if locality not in known_localities:
        raise ReportError("locality", f"unknown; one of {', '.join(known_localities)}")
    remark = _field(body, "remark", True)
    contact = _field(body, "contact", False)
    return {
        "id": f"pr-{uuid.uuid4().hex[:20]}",
        "ts": now_ms if now_ms is not None else int(time.time() * 1000),
        "site": locality,
        "zone": "",
        "utility": "water",
        "kind": "leak",
        "text": remark,
        "locality": locality,
        "name": name,
        "contact": contact,
        "source": "public",
        "v": 1,
    }
