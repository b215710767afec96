"""Ticks of their own for partitions whose next group flush comes before the regular tick.

The regular tick (``tick_interval_s``, 1 s) runs every partition's timers; a group due in between
(``group_wait``, ``group_interval`` expiring) would wait for it, up to a whole interval. A
:class:`Wakeups` keeps one timer per partition, set to its earliest due flush, that sends a tick to that
partition at that moment, so a notification goes out when its timer says, not at the next tick. The tick
goes through the events topic as every tick does: the state it changes is written inside stream iteration
(recovered after a crash), and a tick for a partition that moved to another worker is that worker's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, send_tick: Callable[[int], Awaitable[None]]) -> None:
        self.send_tick = send_tick
        self.due: dict[int, float] = {}  # partition -> wall-clock time its timer fires
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def at(self, partition: int, when: float) -> None:
        """Tick ``partition`` at ``when`` (epoch seconds), unless an earlier tick is already set for it."""
        if not math.isfinite(when) or self.due.get(partition, math.inf) <= when:
            return
        old = self._handles.pop(partition, None)
        if old is not None:
            old.cancel()
        self.due[partition] = when
        delay = max(0.0, when - time.time())
        self._handles[partition] = asyncio.get_running_loop().call_later(delay, self._fire, partition)

    def _fire(self, partition: int) -> None:
        self.due.pop(partition, None)
        self._handles.pop(partition, None)
        task = asyncio.ensure_future(self._send(partition))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, partition: int) -> None:
        try:
            await self.send_tick(partition)
        except Exception as exc:  # noqa: BLE001 - the regular tick still comes; a lost wake-up only delays
            log.warning("wake-up tick for partition %d not sent (the regular tick will do): %s", partition, exc)

    def reset(self) -> None:
        """Forget every timer (partitions change hands; the schedule is rebuilt from the tables)."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self.due.clear()
