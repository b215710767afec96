"""Unit normalisation: every value leaves ingest in its metric's canonical unit.

Conversions are physics, not configuration, so they live here; which canonical unit
a metric has (and its range) is configuration (``ranges.yaml``). Unit spellings are
matched after :func:`normalise_unit` folds case, degree signs, micro signs, superscripts
and a few word forms, so ``"°F"``, ``"degF"`` and ``"F"`` are the same unit.
"""

from __future__ import annotations

from functools import lru_cache

#: canonical unit -> {unit spelling (normalised) -> (scale, offset)}: canonical = value * scale + offset.
CONVERSIONS: dict[str, dict[str, tuple[float, float]]] = {
    "kpa": {
        "kpa": (1.0, 0.0),
        "pa": (1e-3, 0.0),
        "millipa": (1e-6, 0.0),
        "hpa": (0.1, 0.0),
        "mbar": (0.1, 0.0),
        "bar": (100.0, 0.0),
        "mpa": (1000.0, 0.0),
        "psi": (6.894757293168361, 0.0),
        "atm": (101.325, 0.0),
        "mh2o": (9.80665, 0.0),
        "mmhg": (0.133322387415, 0.0),
        "inhg": (3.386389, 0.0),
    },
    "m3/h": {
        "m3/h": (1.0, 0.0),
        "m3/s": (3600.0, 0.0),
        "m3/min": (60.0, 0.0),
        "l/s": (3.6, 0.0),
        "l/min": (0.06, 0.0),
        "l/h": (1e-3, 0.0),
        "ml/s": (3.6e-3, 0.0),
        "gpm": (0.22712470704, 0.0),  # US gallons per minute
        "mgd": (157.725491, 0.0),  # million US gallons per day
        "cfm": (1.69901082, 0.0),  # cubic feet per minute
        "ft3/h": (0.0283168466, 0.0),
        "m3/d": (1 / 24, 0.0),
        "gal/h": (3.785411784e-3, 0.0),
        "l/d": (1e-3 / 24, 0.0),
    },
    "m3": {
        "m3": (1.0, 0.0),
        "l": (1e-3, 0.0),
        "ml": (1e-6, 0.0),
        "kl": (1.0, 0.0),
        "gal": (3.785411784e-3, 0.0),  # US gallon
        "ft3": (0.0283168466, 0.0),
    },
    "m": {"m": (1.0, 0.0), "cm": (0.01, 0.0), "mm": (1e-3, 0.0), "ft": (0.3048, 0.0), "in": (0.0254, 0.0)},
    "ph": {"ph": (1.0, 0.0), "": (1.0, 0.0)},
    "ntu": {"ntu": (1.0, 0.0), "fnu": (1.0, 0.0), "ftu": (1.0, 0.0)},
    "mg/l": {"mg/l": (1.0, 0.0), "ppm": (1.0, 0.0), "g/m3": (1.0, 0.0), "ug/l": (1e-3, 0.0), "ppb": (1e-3, 0.0)},
    "us/cm": {"us/cm": (1.0, 0.0), "ms/cm": (1000.0, 0.0), "s/m": (1e4, 0.0), "ms/m": (10.0, 0.0)},
    "c": {"c": (1.0, 0.0), "f": (5 / 9, -32 * 5 / 9), "k": (1.0, -273.15)},
    "kwh": {
        "kwh": (1.0, 0.0),
        "wh": (1e-3, 0.0),
        "milliwh": (1e-6, 0.0),
        "mwh": (1000.0, 0.0),
        "gwh": (1e6, 0.0),
        "j": (1 / 3.6e6, 0.0),
        "kj": (1 / 3600, 0.0),
        "mj": (1 / 3.6, 0.0),
        "gj": (1000 / 3.6, 0.0),
    },
    "kw": {"kw": (1.0, 0.0), "w": (1e-3, 0.0), "milliw": (1e-6, 0.0), "mw": (1000.0, 0.0), "hp": (0.745699872, 0.0)},
    "v": {"v": (1.0, 0.0), "mv": (1e-3, 0.0), "kv": (1000.0, 0.0), "megav": (1e6, 0.0)},
    "a": {"a": (1.0, 0.0), "ma": (1e-3, 0.0), "ka": (1000.0, 0.0)},
    "kg/m3": {"kg/m3": (1.0, 0.0), "g/l": (1.0, 0.0), "g/cm3": (1000.0, 0.0), "lb/ft3": (16.0184634, 0.0)},
    "state": {"state": (1.0, 0.0), "": (1.0, 0.0)},  # a status channel: 0 off, 1 on, ...
    "mm/s": {"mm/s": (1.0, 0.0), "m/s": (1000.0, 0.0), "in/s": (25.4, 0.0), "um/s": (1e-3, 0.0)},
}

# SI prefixes where case is the whole meaning (MW is 10^9 times mW): looked up before case folding.
_CASE_SENSITIVE = {
    "MW": "mw",
    "mW": "milliw",
    "MWh": "mwh",
    "mWh": "milliwh",
    "MPa": "mpa",
    "mPa": "millipa",
    "MJ": "mj",
    "mJ": "millij",
    "MV": "megav",
    "mV": "mv",
    "MA": "megaa",
    "mA": "ma",
}

# Spellings folded before lookup; order matters (longer forms first).
_REPLACEMENTS = (
    ("³", "3"),
    ("^3", "3"),
    ("µ", "u"),
    ("μ", "u"),
    ("°", ""),
    ("º", ""),
    ("deg", ""),
    ("celsius", "c"),
    ("fahrenheit", "f"),
    ("kelvin", "k"),
    (" per ", "/"),
    ("/hr", "/h"),
    ("/sec", "/s"),
    ("ltr", "l"),
    ("litre", "l"),
    ("liter", "l"),
    ("cu.m", "m3"),
    (" ", ""),
)


@lru_cache(maxsize=4096)
def normalise_unit(unit: str) -> str:
    """Fold a unit spelling to the key used in :data:`CONVERSIONS` (``"°F"`` -> ``"f"``)."""
    u = unit.strip()
    if u in _CASE_SENSITIVE:
        return _CASE_SENSITIVE[u]
    u = u.lower()
    for old, new in _REPLACEMENTS:
        u = u.replace(old, new)
    return u


@lru_cache(maxsize=4096)
def conversion(canonical: str, unit: str) -> tuple[float, float] | None:
    """``(scale, offset)`` turning a value in ``unit`` into ``canonical``; None when not a unit of it."""
    table = CONVERSIONS.get(normalise_unit(canonical))
    if table is None:
        # A canonical unit we have no table for: only the identity is known.
        return (1.0, 0.0) if normalise_unit(unit) == normalise_unit(canonical) else None
    return table.get(normalise_unit(unit))


def to_canonical(value: float, canonical: str, unit: str) -> float | None:
    """``value`` in ``unit`` expressed in ``canonical``, or None when the unit is unknown for it."""
    conv = conversion(canonical, unit)
    if conv is None:
        return None
    scale, offset = conv
    return value * scale + offset
