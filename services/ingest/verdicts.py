"""HTTP requests waiting for the verdicts of their readings.

POST /v1/readings does not judge readings itself: it writes them to readings.raw like
every other door, and the agent (the only place with the per-sensor state that knows a
duplicate) decides. Each item carries a ``fw-request`` header
``<worker>:<request>:<index>``; when the agent of *this* worker decides an item of a
request registered here, :meth:`VerdictBoard.resolve` records it, and the request
answers once all its items are decided or its wait runs out.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field

from services.ingest.pipeline import CLEAN, QUARANTINED
from services.ingest.sensors import DUPLICATE

MAX_ERRORS_SHOWN = 1000


@dataclass
class PendingRequest:
    total: int
    statuses: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(self) -> dict[str, object]:
        counts = {CLEAN: 0, QUARANTINED: 0, DUPLICATE: 0}
        errors: list[dict[str, object]] = []
        for index in sorted(self.statuses):
            status, reasons = self.statuses[index]
            counts[status] += 1
            if status != CLEAN and len(errors) < MAX_ERRORS_SHOWN:
                errors.append({"index": index, "status": status, "reasons": reasons})
        body: dict[str, object] = {
            "accepted": counts[CLEAN],
            "quarantined": counts[QUARANTINED],
            "duplicates": counts[DUPLICATE],
            "pending": self.total - len(self.statuses),
            "errors": errors,
        }
        if counts[QUARANTINED] + counts[DUPLICATE] > len(errors):
            body["errors_truncated"] = True
        return body


class VerdictBoard:
    """Pending requests of this worker, by request number."""

    def __init__(self) -> None:
        self.worker = uuid.uuid4().hex[:12]
        self._prefix = f"{self.worker}:".encode()
        self._ids = itertools.count(1)
        self.pending: dict[int, PendingRequest] = {}

    def open(self, total: int) -> tuple[int, PendingRequest]:
        request_id = next(self._ids)
        pending = self.pending[request_id] = PendingRequest(total)
        if total == 0:
            pending.done.set()
        return request_id, pending

    def item_id(self, request_id: int, index: int) -> bytes:
        return b"%s%d:%d" % (self._prefix, request_id, index)

    def close(self, request_id: int) -> None:
        self.pending.pop(request_id, None)

    def record(self, request_id: int, index: int, status: str, reasons: list[str]) -> None:
        """A verdict known without the agent (e.g. an item that could not be sent)."""
        pending = self.pending.get(request_id)
        if pending is None or index in pending.statuses:
            return
        pending.statuses[index] = (status, reasons)
        if len(pending.statuses) >= pending.total:
            pending.done.set()

    def resolve(self, item: bytes, status: str, reasons: list[str]) -> None:
        """Record the agent's verdict for one item, if it belongs to a request waiting here."""
        if not item.startswith(self._prefix):
            return
        try:
            request_part, index_part = item[len(self._prefix) :].split(b":", 1)
            request_id, index = int(request_part), int(index_part)
        except ValueError:
            return
        self.record(request_id, index, status, reasons)
