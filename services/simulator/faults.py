"""Field faults: what a real deployment does to readings between the sensor and us.

Fractions are per generated reading. Faults and incidents are kept apart: a reading
that belongs to an incident is never also faulted (so a detector's recall is measured
on readings that arrive intact), and the fault fractions are scaled up over the
remaining readings so each fraction holds over *all* readings. Gateway bursts are a
delivery property of whole windows: every reading of a site in a burst window is
held back and flushed at the end of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from services.simulator.hashing import uniform

#: Codes stored in Batch.fault, in this order.
FAULTS: tuple[str, ...] = ("", "noise", "missing", "corrupt", "duplicate", "late", "out_of_order")
FAULT_CODE = {name: i for i, name in enumerate(FAULTS)}
#: Kinds of corrupt payload and how often each occurs among corrupt ones.
CORRUPT_KINDS: dict[str, float] = {
    "garbage": 0.15,  # bytes that are not JSON at all
    "truncated": 0.15,  # a payload cut off mid-way
    "nan": 0.15,  # a NaN literal where a number belongs
    "infinity": 0.05,
    "string_value": 0.12,  # "values": {"pressure": "431.2 kPa"}
    "bad_ts": 0.1,  # a timestamp that is no time at all
    "missing_field": 0.1,  # no sensor_id, or no values
    "wrong_type": 0.08,  # values as a list
    "sentinel": 0.1,  # a device's "no reading" sentinel, -9999
}
MISSING_KINDS = ("omit", "null")
#: Codes stored in Batch.detail: 0 none, then missing kinds, then corrupt kinds.
DETAILS: tuple[str, ...] = ("", *MISSING_KINDS, *CORRUPT_KINDS)
DETAIL_CODE = {name: i for i, name in enumerate(DETAILS)}


@dataclass(frozen=True)
class FaultConfig:
    """Fractions of readings with each field fault (0..1), and how the faults look."""

    noise: float = 0.0
    missing: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    late: float = 0.0
    out_of_order: float = 0.0
    burst: float = 0.0
    #: Extra noise of a noisy reading, in multiples of the sensor's own noise.
    noise_factor: float = 4.0
    #: Delay of a late reading, seconds (uniform).
    late_min_s: float = 60.0
    late_max_s: float = 1800.0
    #: Length of a gateway burst window, seconds.
    burst_window_s: float = 60.0

    FRACTIONS = ("noise", "missing", "corrupt", "duplicate", "late", "out_of_order", "burst")

    @classmethod
    def preset(cls, name: str) -> FaultConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown fault preset {name!r}; known: {', '.join(PRESETS)}") from None

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        """A preset name, ``key=value`` pairs (``noise=0.1,corrupt=0.05``), or a preset followed by overrides."""
        base = cls()
        changes: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if "=" not in part:
                base = cls.preset(part)
                continue
            key, _, value = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in {f.name for f in fields(cls)}:
                raise ValueError(f"unknown fault setting {key!r}; known: {', '.join(f.name for f in fields(cls))}")
            try:
                changes[key] = float(value)
            except ValueError:
                raise ValueError(f"fault setting {key}: {value!r} is not a number") from None
        return replace(base, **changes)

    def total(self) -> float:
        return sum(getattr(self, k) for k in self.FRACTIONS)

    def validate(self, anomaly_fraction: float = 0.0) -> None:
        for k in self.FRACTIONS:
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"fault fraction {k}={v} is not within 0..1")
        if self.total() + anomaly_fraction > 0.95:
            raise ValueError(
                f"faults ({self.total():.2f}) and anomalies ({anomaly_fraction:.2f}) leave too few normal readings;"
                " keep their sum at or below 0.95"
            )
        if not 0 < self.late_min_s <= self.late_max_s:
            raise ValueError("late_min_s must be positive and at most late_max_s")
        if self.burst_window_s <= 0:
            raise ValueError("burst_window_s must be positive")

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PRESETS: dict[str, FaultConfig] = {
    "clean": FaultConfig(),
    # What a reasonably healthy deployment looks like.
    "realistic": FaultConfig(
        noise=0.03, missing=0.01, corrupt=0.005, duplicate=0.01, late=0.005, out_of_order=0.01, burst=0.01
    ),
    # The mix from the issue: normal 0.5, anomalies 0.15 (SimConfig), noise 0.15, missing 0.1, corrupt 0.05, burst 0.05.
    "harsh": FaultConfig(noise=0.15, missing=0.1, corrupt=0.05, burst=0.05),
    # Every fault kind, often enough to test ingest's handling of each.
    "stress": FaultConfig(
        noise=0.05, missing=0.05, corrupt=0.05, duplicate=0.05, late=0.05, out_of_order=0.05, burst=0.05
    ),
}


@dataclass
class Assigned:
    """Fault decisions for the rows of a block."""

    fault: np.ndarray  # int8 codes
    detail: np.ndarray  # int8 codes
    burst: np.ndarray  # bool
    deliver: np.ndarray  # int64
    duplicates: np.ndarray  # row indices to send twice
    duplicate_deliver: np.ndarray  # int64, when the copy goes


def assign(
    cfg: FaultConfig,
    anomaly_fraction: float,
    rng: np.random.Generator,
    seed: int,
    ts: np.ndarray,
    site: np.ndarray,
    interval: np.ndarray,
    anomalous: np.ndarray,
) -> Assigned:
    """Decide each row's fault and delivery time. ``interval`` is each row's sensor interval (ms)."""
    n = len(ts)
    fault = np.zeros(n, dtype=np.int8)
    detail = np.zeros(n, dtype=np.int8)
    deliver = ts.copy()

    burst = np.zeros(n, dtype=bool)
    if cfg.burst > 0:
        window_ms = int(cfg.burst_window_s * 1000)
        window = ts // window_ms
        # Which (site, window) bursts is a pure function of the seed, not of how blocks are cut.
        burst = uniform(seed, 0xB0, site, window) < cfg.burst
        deliver[burst] = (window[burst] + 1) * window_ms + (
            uniform(seed, 0xB1, site[burst], window[burst]) * 500
        ).astype(np.int64)

    names = ["noise", "missing", "corrupt", "duplicate", "late", "out_of_order"]
    p = np.array([getattr(cfg, k) for k in names])
    eligible = ~anomalous & ~burst
    share = 1.0 - anomaly_fraction - cfg.burst
    if p.sum() > 0 and share > 0:
        cum = np.cumsum(p / share)
        draw = rng.random(n)
        code = np.searchsorted(cum, draw, side="right") + 1  # 1..6 -> names, 7 -> none
        code[code > len(names)] = 0
        code[~eligible] = 0
        fault[:] = code
    r = rng.random(n)
    missing = fault == FAULT_CODE["missing"]
    detail[missing] = np.where(r[missing] < 0.5, DETAIL_CODE["omit"], DETAIL_CODE["null"])
    corrupt = fault == FAULT_CODE["corrupt"]
    kinds = list(CORRUPT_KINDS)
    ckum = np.cumsum(list(CORRUPT_KINDS.values()))
    ckum /= ckum[-1]
    picked = np.minimum(np.searchsorted(ckum, r[corrupt], side="right"), len(kinds) - 1)
    detail[corrupt] = np.array([DETAIL_CODE[k] for k in kinds], dtype=np.int8)[picked]

    late = fault == FAULT_CODE["late"]
    deliver[late] = ts[late] + (rng.uniform(cfg.late_min_s, cfg.late_max_s, late.sum()) * 1000).astype(np.int64)
    ooo = fault == FAULT_CODE["out_of_order"]
    # Held for more than one interval, so it arrives after the sensor's next reading.
    deliver[ooo] = ts[ooo] + (rng.uniform(1.3, 4.0, ooo.sum()) * interval[ooo]).astype(np.int64)
    dup = np.flatnonzero(fault == FAULT_CODE["duplicate"])
    dup_deliver = deliver[dup] + (rng.uniform(0.0, 2.0, len(dup)) * interval[dup]).astype(np.int64)
    fault[dup] = 0  # the original is a normal reading; the copy carries the fault
    return Assigned(
        fault=fault,
        detail=detail,
        burst=burst,
        deliver=deliver,
        duplicates=dup,
        duplicate_deliver=dup_deliver,
    )
