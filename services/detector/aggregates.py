"""Tumbling-window summaries per site, zone and utility: built per micro-batch, merged, closed by event time.

The scoring worker turns each micro-batch into *partials* (one per zone and window),
merges them across batches for ``partials_every_s`` and sends them to an internal topic keyed by zone, so one agent instance owns a
zone's windows whichever partitions its sensors live on. Partials merge by
addition (count, sums, min, max: :mod:`shared.window_stats`), so the merge is order-free.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from shared import window_stats
from shared.codec import dumps
from shared.records import Aggregate

log = logging.getLogger(__name__)

Partial = dict[str, Any]  # {"n": int, "anomalies": int, "ts": max ts, "m": {metric: [n, sum, min, max]}}


WINDOW_START = re.compile(r"-?[0-9]{1,18}")


def _number(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def problem(partials: Any, key: Any) -> str:
    """Why a message of the zone-partials topic cannot be merged ('' when it can): the shape :func:`merge` reads."""
    if not isinstance(key, bytes) or not key or len(key) > 1024:
        return "no zone key"
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        return "the zone key is not UTF-8"
    if not isinstance(partials, dict):
        return f"expected a map of windows, got {type(partials).__name__}"
    for ws, p in partials.items():
        if not WINDOW_START.fullmatch(ws):
            return f"window start {ws[:40]!r} is not an integer"
        if not isinstance(p, dict):
            return "a window is not a map"
        if not all(type(p.get(k, 0)) is int for k in ("n", "anomalies", "ts")):
            return "n, anomalies and ts must be integers"
        stats = p.get("m", {})
        if not isinstance(stats, dict) or not all(
            type(s) is list and len(s) == 4 and all(_number(x) for x in s) and s[0] > 0 for s in stats.values()
        ):
            return "m must map metrics to [count, sum, min, max]"
    return ""


#: Largest zone-partials message written: half the broker's record limit (:data:`shared.batching.MAX_RECORD_BYTES`).
MESSAGE_BYTES = 500_000


def messages(windows: dict[str, Partial], limit: int = MESSAGE_BYTES) -> list[bytes]:
    """A zone's partials as messages of at most ``limit`` bytes: whole windows, oldest first, as many as fit in each.

    One message per zone could grow past what the broker takes (many windows held), and a message it refuses would
    be refused again on every retry. A window is never split: the aggregator could close it between two pieces. One
    over the limit alone (thousands of metric names in one zone) keeps the metrics that fit, in name order, and says
    so in the log.
    """
    value = dumps(windows)
    if len(value) <= limit:
        return [value]
    out: list[bytes] = []
    part: dict[str, Partial] = {}
    size = 2  # the braces
    for ws in sorted(windows, key=int):
        p = windows[ws]
        one = len(dumps({ws: p})) - 1  # in a message: its own bytes less the braces, plus a comma
        if one >= limit:
            p = _fitted(ws, p, limit)
            one = len(dumps({ws: p})) - 1
        if part and size + one > limit:
            out.append(dumps(part))
            part, size = {}, 2
        part[ws] = p
        size += one
    out.append(dumps(part))
    return out


def _fitted(ws: str, p: Partial, limit: int) -> Partial:
    """Window ``ws`` with as many of its metrics (in name order) as fit in a message of ``limit`` bytes alone."""
    stats = p.get("m", {})
    kept: dict[str, Any] = {}
    size = len(dumps({ws: {**p, "m": {}}}))
    for name in sorted(stats):
        entry = len(dumps({name: stats[name]}))  # its braces stand for the comma before it, with a byte to spare
        if size + entry > limit:
            break
        kept[name] = stats[name]
        size += entry
    log.warning(
        "zone window %s has %d metrics, over %d bytes in one message: sent with the first %d by name",
        ws,
        len(stats),
        limit,
        len(kept),
    )
    return {**p, "m": kept}


def zone_key(site: str, zone: str, utility: str) -> str:
    return f"{site}/{zone}/{utility}"


def window_start(ts_ms: int, window_ms: int) -> int:
    return ts_ms - ts_ms % window_ms


def add_reading(p: Partial, values: dict[str, float], anomaly: bool, ts_ms: int) -> None:
    p["n"] = p.get("n", 0) + 1
    p["anomalies"] = p.get("anomalies", 0) + int(anomaly)
    p["ts"] = max(p.get("ts", 0), ts_ms)
    stats = p.setdefault("m", {})
    for metric, v in values.items():
        if v == v:  # NaN: nothing measured
            window_stats.add(stats, metric, v)


def merge(a: Partial, b: Partial) -> Partial:
    out: Partial = {
        "n": a.get("n", 0) + b.get("n", 0),
        "anomalies": a.get("anomalies", 0) + b.get("anomalies", 0),
        "ts": max(a.get("ts", 0), b.get("ts", 0)),
        "m": window_stats.merged(a.get("m", {}), b.get("m", {})),
    }
    return out


def apply(
    windows: dict[str, Partial], partials: dict[str, Partial], watermark: int, window_ms: int, grace_ms: int
) -> tuple[dict[str, Partial], list[tuple[int, Partial]]]:
    """Merge new partials (by window start, as str) into open windows; close those the watermark passed."""
    merged = dict(windows)
    for ws, p in partials.items():
        merged[ws] = merge(merged[ws], p) if ws in merged else p
    closed = sorted((int(ws), p) for ws, p in merged.items() if int(ws) + window_ms + grace_ms <= watermark)
    for ws, _ in closed:
        del merged[str(ws)]
    return merged, closed


def to_record(key: str, ws: int, p: Partial, window_ms: int) -> Aggregate:
    site, zone, utility = [*key.split("/", 2), "", ""][:3]
    metrics = {
        m: {"count": s[0], "mean": window_stats.mean(s), "min": s[2], "max": s[3]}
        for m, s in sorted(p.get("m", {}).items())
    }
    return Aggregate(
        window_start=ws,
        window_end=ws + window_ms,
        site=site,
        zone=zone,
        utility=utility,
        count=p.get("n", 0),
        anomaly_count=p.get("anomalies", 0),
        metrics=metrics,
    )
