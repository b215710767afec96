"""Counter-based randomness: a uniform number that is a pure function of its inputs.

Used where a decision must not depend on how the timeline was cut into blocks or
batches (which gateway windows burst, a device's quality figure, a corrupt
payload's bytes), so the same seed gives the same data whatever the batch sizes.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) from integer keys (arrays broadcast), a pure function of the keys."""
    h = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = splitmix64(h ^ np.asarray(k).astype(np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
