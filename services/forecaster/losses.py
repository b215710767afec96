"""What an incident costs: excess volume over the forecast, priced with a tariff.

The key metrics are rates (m³/h of water or gas, kW of power); a step's excess
rate times the step's length is the volume lost in it (m³, kWh).
"""

from __future__ import annotations

from typing import Any

from services.forecaster.classes import VOLUME_LOSS_CLASSES

#: Rate unit -> (volume unit, volume per hour at a rate of 1).
RATE_UNITS: dict[str, tuple[str, float]] = {
    "m3/h": ("m3", 1.0),
    "m3/s": ("m3", 3600.0),
    "L/s": ("m3", 3.6),
    "l/s": ("m3", 3.6),
    "L/min": ("m3", 0.06),
    "kW": ("kWh", 1.0),
    "W": ("kWh", 0.001),
    "MW": ("kWh", 1000.0),
}


def volume_unit(rate_unit: str) -> tuple[str, float]:
    """Volume unit and hourly factor of a rate unit; unknown units count as "<unit>·h"."""
    return RATE_UNITS.get(rate_unit, (f"{rate_unit}*h" if rate_unit else "unit*h", 1.0))


def incident_transition(
    incident: dict[str, Any] | None, probability: float, incident_type: str, step_start_ms: int, threshold: float
) -> dict[str, Any] | None:
    """A zone's incident state after one step (a new dict, or None).

    An incident starts when the probability reaches ``threshold`` and ends when it
    falls below half of it (hysteresis, so one noisy step does not split it in two).
    """
    if incident is None:
        if probability < threshold:
            return None
        return {"since_ms": step_start_ms, "type": incident_type, "steps": 1}
    if probability < threshold / 2.0:
        return None
    return {
        "since_ms": incident["since_ms"],
        "type": incident_type if probability >= threshold else incident["type"],
        "steps": incident.get("steps", 0) + 1,
    }


def account_loss(
    incident: dict[str, Any] | None,
    volume_before: float,
    *,
    probability: float,
    incident_type: str,
    step_s: int,
    metric: str | None,
    actual: float | None,
    expected: float | None,
    unit: str,
    tariff: float,
    currency: str,
    horizon_s: int,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Add one step's lost volume to the incident; returns ``(incident, loss for the record)``.

    Volume counts only for classes whose loss is extra flow (leak, burst,
    overconsumption), only while an incident runs, and only what runs above the
    forecast median. The expected loss over the horizon is probability x current
    excess rate x horizon, so a rising risk already carries a price.
    """
    volume_u, per_hour = volume_unit(unit)
    counts = incident_type in VOLUME_LOSS_CLASSES
    excess_rate = max(0.0, actual - expected) if actual is not None and expected is not None else 0.0
    rate_h = excess_rate * per_hour if counts else 0.0
    if incident is not None:
        lost = rate_h * step_s / 3600.0
        incident = {**incident, "volume": volume_before + lost}
    volume = incident["volume"] if incident else 0.0
    expected_volume = probability * rate_h * horizon_s / 3600.0
    loss = {
        "metric": metric or "",
        "unit": volume_u,
        "ongoing": incident is not None,
        "since_ms": incident["since_ms"] if incident else 0,
        "volume": round(volume, 6),
        "cost": round(volume * tariff, 4),
        "excess_rate_per_h": round(rate_h, 6),
        "expected_volume_horizon": round(expected_volume, 6),
        "expected_cost_horizon": round(expected_volume * tariff, 4),
        "currency": currency,
        "tariff": tariff,
    }
    return incident, loss
