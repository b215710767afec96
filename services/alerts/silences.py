"""Silences: matchers plus a time window, created and expired through the API (Alertmanager's model)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.alerts.matchers import Matcher, MatcherError, cheapest_first, parse_matchers


class SilenceError(ValueError):
    """A silence request that cannot be accepted; the message is for the API client."""


#: Times a silence may carry: from the epoch to the last millisecond of year 9999 (what RFC 3339 can write).
MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one silence may hold (from :class:`~services.alerts.settings.AlertsSettings`)."""

    max_matchers: int = 32
    max_comment: int = 2000
    max_duration_ms: int = 366 * 24 * 3600 * 1000
    max_regex_total: int = 256  # regular expressions in all silences not yet expired, together

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(
            settings.silence_max_matchers,
            settings.silence_max_comment,
            int(settings.silence_max_duration_s * 1000),
            settings.silence_max_regex_matchers,
        )


def parse_time_ms(value: Any, field: str) -> int:
    """Epoch ms from an RFC 3339 string (``2026-01-02T03:04:05Z``) or a number of epoch ms, in 0..year 9999."""
    if isinstance(value, bool):
        raise SilenceError(f"{field}: expected an RFC 3339 time or epoch milliseconds")
    if isinstance(value, (int, float)):
        if value != value or not 0 <= value <= MAX_MS:
            raise SilenceError(f"{field}: {value!r} is out of range (0 to year 9999 in epoch milliseconds)")
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SilenceError(f"{field}: {value[:64]!r} is not an RFC 3339 time") from None
        if dt.tzinfo is None:
            raise SilenceError(f"{field}: {value[:64]!r} needs a timezone (e.g. Z)")
        try:
            ms = int(dt.timestamp() * 1000)
        except (OverflowError, ValueError):
            ms = -1
        if not 0 <= ms <= MAX_MS:
            raise SilenceError(f"{field}: {value[:64]!r} is out of range (1970 to year 9999)")
        return ms
    raise SilenceError(f"{field}: expected an RFC 3339 time or epoch milliseconds")


def rfc3339(ms: int) -> str:
    if ms <= 0:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(min(ms, MAX_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _fields(body: Any, now_ms: int, limits: Limits) -> dict[str, Any]:
    """The client-settable fields of a silence, validated: matchers, startsAt, endsAt, comment."""
    if not isinstance(body, Mapping):
        raise SilenceError("body must be a JSON object with matchers, startsAt, endsAt and comment")
    specs = body.get("matchers")
    if isinstance(specs, list) and len(specs) > limits.max_matchers:
        raise SilenceError(f"matchers: at most {limits.max_matchers}")
    try:
        matchers = parse_matchers(specs)
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
    if ends - max(starts, now_ms) > limits.max_duration_ms:
        raise SilenceError(f"endsAt: a silence may last at most {limits.max_duration_ms // 1000} s")
    comment = body.get("comment")
    if not isinstance(comment, str) or not comment.strip():
        raise SilenceError("comment: is required (say why, for the next person on call)")
    comment = comment.strip()
    if len(comment) > limits.max_comment:
        raise SilenceError(f"comment: at most {limits.max_comment} characters")
    return {"matchers": [m.to_dict() for m in matchers], "starts_at": starts, "ends_at": ends, "comment": comment}


def new_silence(body: Any, now_ms: int, author: str, limits: Limits = Limits()) -> dict[str, Any]:
    """Validate an API request body into a stored silence (a plain dict, as kept in the table).

    The server assigns the id and ``created_by`` is the caller's identity: a body's ``id`` is refused
    (change a silence with ``PUT /v1/silences/{id}``) and its ``createdBy`` is ignored.
    """
    if isinstance(body, Mapping) and body.get("id") not in (None, ""):
        raise SilenceError("id: is assigned by the server; to change a silence use PUT /v1/silences/{id}")
    return {
        "id": str(uuid.uuid4()),
        **_fields(body, now_ms, limits),
        "created_by": author,
        "updated_at": now_ms,
    }


def updated_silence(
    existing: Mapping[str, Any], body: Any, now_ms: int, editor: str, limits: Limits = Limits()
) -> dict[str, Any]:
    """``existing`` with the body's matchers, times and comment; id and author stay, the editor is recorded."""
    if isinstance(body, Mapping) and body.get("id") not in (None, "", existing["id"]):
        raise SilenceError("id: differs from the silence in the path")
    return {**existing, **_fields(body, now_ms, limits), "updated_by": editor, "updated_at": now_ms}


_STORED = {"id": str, "matchers": list, "starts_at": int, "ends_at": int, "created_by": str, "comment": str}


def stored(value: Any, key: str | None = None) -> dict[str, Any]:
    """A silence read from the internal silences topic, checked before it is kept; else :class:`SilenceError`.

    The topic is written by the API only, but what is read from Kafka is never trusted: a record that is
    not a well-formed silence is dead-lettered by the caller, never stored (it would break every
    evaluation that reads the table).
    """
    if not isinstance(value, dict):
        raise SilenceError(f"not a JSON object but {type(value).__name__}")
    for name, kind in (*_STORED.items(), ("updated_at", int)):
        got = value.get(name)
        if not isinstance(got, kind) or isinstance(got, bool):
            raise SilenceError(f"{name}: missing or not {kind.__name__}")
    if key is not None and value["id"] != key:
        raise SilenceError(f"id {value['id'][:64]!r} differs from the message key {key[:64]!r}")
    for name in ("starts_at", "ends_at", "updated_at"):
        if not 0 <= value[name] <= MAX_MS:
            raise SilenceError(f"{name}: {value[name]} out of range")
    try:
        matchers = parse_matchers(value["matchers"])
    except MatcherError as exc:
        raise SilenceError(f"matchers: {exc}") from None
    if not matchers:
        raise SilenceError("matchers: empty")
    return value


def collectable(silences: Iterable[Mapping[str, Any]], now_ms: int, retention_ms: int) -> list[str]:
    """IDs of silences expired for longer than ``retention_ms``: to be forgotten."""
    return [s["id"] for s in silences if s and s["ends_at"] + retention_ms <= now_ms]


def status(silence: Mapping[str, Any], now_ms: int) -> str:
    if now_ms < silence["starts_at"]:
        return "pending"
    return "active" if now_ms < silence["ends_at"] else "expired"


def matchers_of(silence: Mapping[str, Any]) -> tuple[Matcher, ...]:
    """A silence's matchers, compiled once (every batch and API call asks again), equality matchers first."""
    return _compiled(orjson.dumps(silence["matchers"]))


@functools.lru_cache(maxsize=4096)
def _compiled(matchers: bytes) -> tuple[Matcher, ...]:
    return cheapest_first(parse_matchers(orjson.loads(matchers)))


def regex_matchers(silences: Iterable[Mapping[str, Any]], now_ms: int) -> int:
    """Regular expressions in the silences not yet expired: every alert may be matched against each of them."""
    return sum(sum(1 for m in matchers_of(s) if m.is_regex) for s in silences if status(s, now_ms) != "expired")


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
        **({"updatedBy": silence["updated_by"]} if silence.get("updated_by") else {}),
        "comment": silence["comment"],
        "status": {"state": status(silence, now_ms)},
    }
