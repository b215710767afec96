"""An ingest worker with a bug on purpose, for the poison test of its Kafka source door.

``python -m tests.ingest_poison worker`` runs ``python -m services.ingest worker`` with one change: a
fetch of mapped source messages that holds :data:`POISON` makes the door's handling raise (a
``RuntimeError`` out of :meth:`~services.ingest.worker.Ingest.map_items`), the way a bug beyond the
per-message mapping errors would; one that holds :data:`KILLER` kills the worker outright (SIGKILL to
itself). Those mapping errors are quarantined message by message and never raise; these take the
door's whole fetch down with them.
"""

from __future__ import annotations

import os
import runpy
import signal
from typing import Any

POISON = b"ingest-poison-raises"
KILLER = b"ingest-poison-kills"
ERROR = "this door cannot handle a poison message"


def install() -> None:
    from services.ingest.worker import Ingest

    original = Ingest.map_items

    def map_items(self: Ingest, mapping: Any, messages: list[Any], topic: str | None = None, lazy: bool = False) -> Any:
        if any(KILLER in msg.value for msg in messages):
            os.kill(os.getpid(), signal.SIGKILL)  # what a segfault or the OOM killer does: no unwinding
        if any(POISON in msg.value for msg in messages):
            raise RuntimeError(ERROR)
        return original(self, mapping, messages, topic, lazy)

    Ingest.map_items = map_items  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    runpy.run_module("services.ingest", run_name="__main__", alter_sys=True)
