"""The risk classes the forecaster predicts, and how incident labels map onto them.

The simulator labels incidents by mechanism (``pump_cavitation``, ``stuck_sensor``...);
operators act on a coarser question (is it the pump? the sensor? the network?), so
several mechanisms share one risk class.
"""

from __future__ import annotations

NONE = "none"

#: Order matters: it is the order of the classifier's softmax outputs. Append only.
RISK_CLASSES: tuple[str, ...] = (
    NONE,
    "leak",
    "burst",
    "contamination",
    "pump_fault",
    "sensor_fault",
    "overconsumption",
    "gas_pressure_excursion",
    "tampering",
)
INCIDENT_CLASSES: tuple[str, ...] = RISK_CLASSES[1:]
CLASS_INDEX = {name: i for i, name in enumerate(RISK_CLASSES)}

#: Risk class of each incident mechanism (every one of shared.records.INCIDENT_TYPES, a unit test checks).
MECHANISM_CLASS: dict[str, str] = {
    "leak": "leak",
    "burst": "burst",
    "contamination": "contamination",
    "pump_cavitation": "pump_fault",
    "bearing_fault": "pump_fault",
    "stuck_sensor": "sensor_fault",
    "drift": "sensor_fault",
    "spike": "sensor_fault",
    "overconsumption": "overconsumption",
    "gas_pressure_excursion": "gas_pressure_excursion",
    "tampering": "tampering",
}

#: Incident label type (simulator, user CSV) -> risk class: the mechanisms, and each class by its own name.
LABEL_TO_CLASS: dict[str, str] = {**MECHANISM_CLASS, **{c: c for c in INCIDENT_CLASSES}}

#: Classes whose loss is extra volume over the forecast (the key metric runs high).
VOLUME_LOSS_CLASSES = frozenset({"leak", "burst", "overconsumption"})


def risk_class(label_type: str) -> str:
    """The risk class of an incident label; unknown labels raise so a new type is noticed, not ignored."""
    try:
        return LABEL_TO_CLASS[label_type.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown incident type {label_type!r}; known: {', '.join(sorted(LABEL_TO_CLASS))}") from None
