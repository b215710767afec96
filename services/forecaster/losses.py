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


def update_incident(
    incident: dict[str, Any] | None,
    *,
    probability: float,
    incident_type: str,
    step_start_ms: int,
    step_s: int,
    metric: str | None,
    actual: float | None,
    expected: float | None,
    unit: str,
    tariff: float,
    currency: str,
    threshold: float,
    horizon_s: int,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Advance a zone's incident accounting by one step; returns ``(new incident state, loss for the record)``.

    An incident starts when the probability reaches ``threshold`` and ends when it
    falls below half of it (hysteresis, so one noisy step does not split it).
    Volume counts only for classes whose loss is extra flow (leak, burst,
    overconsumption) and only what runs above the forecast median.
    """
    volume_u, per_hour = volume_unit(unit)
    excess_rate = 0.0
    if actual is not None and expected is not None:
        excess_rate = max(0.0, actual - expected)
    if incident is None and probability >= threshold:
        incident = {"since_ms": step_start_ms, "type": incident_type, "volume": 0.0, "steps": 0}
    elif incident is not None and probability < threshold / 2.0:
        incident = None
    if incident is not None:
        counts = incident_type in VOLUME_LOSS_CLASSES
        lost = excess_rate * per_hour * step_s / 3600.0 if counts else 0.0
        incident = {
            "since_ms": incident["since_ms"],
            "type": incident_type if probability >= threshold else incident["type"],
            "volume": incident["volume"] + lost,
            "steps": incident["steps"] + 1,
        }
    rate_h = excess_rate * per_hour if incident_type in VOLUME_LOSS_CLASSES else 0.0
    expected_volume = probability * rate_h * horizon_s / 3600.0
    volume = incident["volume"] if incident else 0.0
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
