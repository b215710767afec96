"""Silences: matchers plus a time window, created and expired through the API (Alertmanager's model)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from services.alerts.matchers import Matcher, MatcherError, parse_matchers


class SilenceError(ValueError):
    """A silence request that cannot be accepted; the message is for the API client."""


def parse_time_ms(value: Any, field: str) -> int:
    """Epoch ms from an RFC 3339 string (``2026-01-02T03:04:05Z``) or a number of epoch ms."""
    if isinstance(value, bool):
        raise SilenceError(f"{field}: expected an RFC 3339 time or epoch milliseconds")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SilenceError(f"{field}: {value!r} is not an RFC 3339 time") from None
        if dt.tzinfo is None:
            raise SilenceError(f"{field}: {value!r} needs a timezone (e.g. Z)")
        return int(dt.timestamp() * 1000)
    raise SilenceError(f"{field}: expected an RFC 3339 time or epoch milliseconds")


def rfc3339(ms: int) -> str:
    if ms <= 0:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_silence(body: Any, now_ms: int, author_default: str = "") -> dict[str, Any]:
    """Validate an API request body into a stored silence (a plain dict, as kept in the table)."""
    if not isinstance(body, Mapping):
        raise SilenceError("body must be a JSON object with matchers, startsAt, endsAt, createdBy, comment")
    try:
        matchers = parse_matchers(body.get("matchers"))
    except MatcherError as exc:
        raise SilenceError(f"matchers: {exc}") from None
    if not matchers:
        raise SilenceError("matchers: at least one matcher is required")
    if all(m.matches({}) for m in matchers):
        raise SilenceError("matchers: would silence every alert (each matcher matches empty labels)")
    starts = parse_time_ms(body.get("startsAt", now_ms), "startsAt")
    if "endsAt" not in body:
        raise SilenceError("endsAt: is required")
    ends = parse_time_ms(body["endsAt"], "endsAt")
    if ends <= starts:
        raise SilenceError("endsAt: must be after startsAt")
    if ends <= now_ms:
        raise SilenceError("endsAt: is in the past")
    author = str(body.get("createdBy") or author_default).strip()
    comment = str(body.get("comment") or "").strip()
    if not author:
        raise SilenceError("createdBy: is required")
    if not comment:
        raise SilenceError("comment: is required (say why, for the next person on call)")
    return {
        "id": str(body.get("id") or uuid.uuid4()),
        "matchers": [m.to_dict() for m in matchers],
        "starts_at": max(starts, 0),
        "ends_at": ends,
        "created_by": author,
        "comment": comment,
        "updated_at": now_ms,
    }


def status(silence: Mapping[str, Any], now_ms: int) -> str:
    if now_ms < silence["starts_at"]:
        return "pending"
    return "active" if now_ms < silence["ends_at"] else "expired"


def matchers_of(silence: Mapping[str, Any]) -> tuple[Matcher, ...]:
    return parse_matchers(silence["matchers"])


def silenced_by(labels: Mapping[str, str], silences: Iterable[Mapping[str, Any]], now_ms: int) -> list[str]:
    """IDs of active silences that match these labels."""
    return [
        s["id"] for s in silences if status(s, now_ms) == "active" and all(m.matches(labels) for m in matchers_of(s))
    ]


def view(silence: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """The API shape (Alertmanager's field names)."""
    return {
        "id": silence["id"],
        "matchers": silence["matchers"],
        "startsAt": rfc3339(silence["starts_at"]),
        "endsAt": rfc3339(silence["ends_at"]),
        "updatedAt": rfc3339(silence["updated_at"]),
        "createdBy": silence["created_by"],
        "comment": silence["comment"],
        "status": {"state": status(silence, now_ms)},
    }
