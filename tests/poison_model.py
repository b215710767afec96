"""A detector model with a bug on purpose, for the pump's poison tests (pickled into a test registry).

A reading whose flow is :data:`RAISES` makes it raise; one whose flow is :data:`KILLS` kills the
worker outright (SIGKILL to itself: what a segfault or the OOM killer does, no Python unwinding).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from services.detector.model import AnomalyModel

RAISES = 666.0
KILLS = 999.0


class PoisonModel(AnomalyModel):
    def features(self, state: Any, x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if np.any(x == KILLS):
            os.kill(os.getpid(), signal.SIGKILL)
        if np.any(x == RAISES):
            raise ValueError("this model cannot score a flow of 666")
        return super().features(state, x, *args, **kwargs)
