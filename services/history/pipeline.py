"""The pure core of the history sink: messages in, rows out. No Kafka, no database.

* :class:`Decoder` turns one fetched batch (messages of every consumed topic) into a
  :class:`Batch` of rows per table: readings folded into per-sensor one-minute rollups,
  quarantined inputs counted per minute, source and reason (plus a bounded sample),
  everything else one row per record. A message that cannot be read becomes a reject
  with its reason; nothing raises.
* :func:`fold_episodes` puts a sensor's new anomalies into its episodes (event frames);
  :func:`fold_incidents` does the same for a zone's risk records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

MINUTE_MS = 60_000
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
MAX_REASONS = 10
MAX_TOP_METRICS = 5
ANNOTATIONS = ("ack", "comment", "assign", "verdict")


@dataclass(slots=True)
class Message:
    """One consumed message: topic name without the prefix, partition, offset, raw value."""

    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class Batch:
    """Rows for each table from one fetched batch (column order as in the store)."""

    rollups: dict[tuple[str, str, int], list[Any]] = field(default_factory=dict)
    anomalies: list[tuple[Any, ...]] = field(default_factory=list)
    aggregates: list[tuple[Any, ...]] = field(default_factory=list)
    risk: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    sensor_events: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine_counts: dict[tuple[int, str, str], int] = field(default_factory=dict)
    quarantine_samples: list[tuple[Any, ...]] = field(default_factory=list)
    reports: list[tuple[Any, ...]] = field(default_factory=list)
    feedback: list[tuple[Any, ...]] = field(default_factory=list)
    labels: list[tuple[Any, ...]] = field(default_factory=list)
    rejects: list[tuple[str, int, int, str, str]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> next offset
    counts: dict[str, int] = field(default_factory=dict)  # messages per topic
    # Messages per topic that made rows (or counted in them); with the rejects and the duplicates, all of them.
    accepted: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    readings: int = 0
    newest_ts: int = 0  # newest event time seen (the stream's clock for closing episodes)

    def rollup_rows(self) -> list[tuple[Any, ...]]:
        return [(s, m, minute, *v) for (s, m, minute), v in self.rollups.items()]


def last_per_key(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """The last row of each key (its first ``width`` columns), in the order the keys first came.

    One upsert may not touch a row twice (PostgreSQL: "ON CONFLICT DO UPDATE command cannot affect
    row a second time"), yet one batch can hold a record and its update: the detector re-sends a
    window a late reading changed, the simulator extends a label. The later one wins, as it would
    one batch later.
    """
    latest: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        latest[row[:width]] = row
    return list(latest.values())


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL: it becomes U+FFFD (else the batch would fail and be retried forever)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _text(value: Any, limit: int = 2000) -> str:
    return _clean(value[:limit] if isinstance(value, str) else ("" if value is None else str(value)[:limit]))


def _json(value: Any) -> str:
    """JSON for a jsonb column. jsonb refuses the escape of NUL (``\\u0000``): it becomes U+FFFD, as in :func:`_text`."""
    out = orjson.dumps(value).decode()
    return out.replace("\\u0000", "\\ufffd") if "\\u0000" in out else out


def _int(value: Any, bits: int = 64) -> int:
    """A whole number for a ``bigint`` (or, ``bits=32``, an ``integer``) column; beyond its range it is a
    reject here, not an error of the database that would fail the whole batch again and again."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    out = int(value)  # OverflowError (infinity) and ValueError (NaN) are rejects too
    if not -(1 << (bits - 1)) <= out < 1 << (bits - 1):
        raise ValueError(f"out of range for a {bits}-bit integer: {value!r}")
    return out


#: Latest event time kept (the end of year 9999, as the alerts' silences): beyond it a time has no calendar day,
#: and the day partition it would go to cannot be named, so the whole batch would fail again and again.
MAX_MS = 253_402_300_799_999


def _ms(value: Any) -> int:
    """An event time in epoch milliseconds, 1970 to the end of year 9999 (else a reject)."""
    out = _int(value)
    if not 0 <= out <= MAX_MS:
        raise ValueError(f"not a time between 1970 and the year 9999 in epoch milliseconds: {value!r}")
    return out


def _of(value: Any, kind: type, what: str) -> Any:
    """A JSON object (``kind=dict``) or array (``list``) the store reads again later (episodes, incidents,
    verdicts); empty when absent. Any other type would fail the write of the whole batch, again and again."""
    if not value:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{what} must be {'an object' if kind is dict else 'an array'}, got {type(value).__name__}")
    return value


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    out = float(value)
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def reason_code(reason: str) -> str:
    """The code of a quarantine reason (`range: flow 9e9 above 1e6` -> `range`)."""
    return _clean(reason.split(":", 1)[0].strip()[:64]) or "unknown"


class Decoder:
    """Decodes fetched batches; remembers what it needs across batches (bounded).

    ``dedup_memory`` newest reading times per sensor catch a reading sent twice (an upstream
    service replaying after its own restart) so it is not counted twice in the rollups.
    """

    def __init__(self, *, samples_per_minute: int = 3, sample_max_bytes: int = 4096, dedup_memory: int = 64):
        self.samples_per_minute = samples_per_minute
        self.sample_max_bytes = sample_max_bytes
        self.dedup_memory = dedup_memory
        self.seen: dict[str, set[int]] = {}
        self.sampled: dict[tuple[int, str, str], int] = {}
        self.sample_minute = 0

    def forget(self) -> None:
        self.seen.clear()
        self.sampled.clear()

    def snapshot(self) -> tuple[dict[str, set[int]], dict[tuple[int, str, str], int], int]:
        """What decoding changes, to :meth:`restore` when the rows decoded were not written after all."""
        return {k: set(v) for k, v in self.seen.items()}, dict(self.sampled), self.sample_minute

    def restore(self, state: tuple[dict[str, set[int]], dict[tuple[int, str, str], int], int]) -> None:
        self.seen, self.sampled, self.sample_minute = state

    def decode(self, messages: list[Message]) -> Batch:
        """One batch of messages (any topics, in offset order per partition) -> rows."""
        groups: dict[tuple[str, int], list[Message]] = {}
        for msg in messages:
            groups.setdefault((msg.topic, msg.partition), []).append(msg)
        return self.decode_groups([(t, p, ms) for (t, p), ms in groups.items()])

    def decode_groups(self, groups: list[tuple[str, int, list[Any]]]) -> Batch:
        """Like :meth:`decode` for ``(topic, partition, records)`` groups; a record has ``.offset`` and ``.value``."""
        batch = Batch()
        handlers = {
            "anomalies": self._anomaly,
            "aggregates": self._aggregate,
            "risk": self._risk,
            "alerts": self._alert,
            "sensor.events": self._sensor_event,
            "readings.quarantine": self._quarantined,
            "reports": self._report,
            "feedback": self._feedback,
            "labels": self._label,
        }
        for topic, partition, records in groups:
            if not records:
                continue
            batch.offsets[(topic, partition)] = records[-1].offset + 1
            batch.counts[topic] = batch.counts.get(topic, 0) + len(records)
            if topic == "readings.clean":
                self._readings(topic, partition, records, batch)
                continue
            handler = handlers[topic]
            for rec in records:
                try:
                    data = orjson.loads(rec.value)
                    if not isinstance(data, dict):
                        raise ValueError(f"a JSON object is expected, got {type(data).__name__}")
                    handler(data, batch)
                except Exception as exc:  # noqa: BLE001 - a bad message is a reject with its reason, never a crash
                    self._reject(batch, topic, partition, rec, exc)
                    continue
                batch.accepted[topic] = batch.accepted.get(topic, 0) + 1
        return batch

    @staticmethod
    def _reject(batch: Batch, topic: str, partition: int, rec: Any, exc: BaseException) -> None:
        payload = _clean((rec.value or b"")[:4096].decode("utf-8", "replace"))
        batch.rejects.append((topic, partition, rec.offset, f"{type(exc).__name__}: {exc}"[:500], payload))

    # --- per topic --------------------------------------------------------------------------

    def _readings(self, topic: str, partition: int, records: list[Any], batch: Batch) -> None:
        """The hot path (tens of thousands a second): fold readings into minute rollups, inline."""
        loads = orjson.loads
        seen = self.seen
        rollups = batch.rollups
        memory_size = self.dedup_memory
        newest = batch.newest_ts
        count = 0
        for rec in records:
            try:
                r = loads(rec.value)
                sensor = r["sensor_id"]
                ts = r["ts"]
                values = r["values"]
                if type(sensor) is not str or type(ts) is not int or type(values) is not dict:
                    raise ValueError("sensor_id must be a string, ts an integer and values an object")
                if not 0 <= ts <= MAX_MS:
                    raise ValueError(f"ts {ts} is not a time between 1970 and the year 9999 in epoch milliseconds")
                if "\x00" in sensor:
                    raise ValueError("sensor_id holds a NUL character")
            except Exception as exc:  # noqa: BLE001 - a bad message is a reject with its reason, never a crash
                self._reject(batch, topic, partition, rec, exc)
                continue
            recent = seen.get(sensor)
            if recent is None:
                recent = seen[sensor] = set()
            elif ts in recent:
                batch.duplicates += 1
                continue
            recent.add(ts)
            if len(recent) > 2 * memory_size:
                # Keep the newest: a replay repeats recent readings (amortised: one sort per `memory_size` readings).
                seen[sensor] = set(sorted(recent)[-memory_size:])
            count += 1
            if ts > newest:
                newest = ts
            minute = ts - ts % MINUTE_MS
            place = None
            for metric, value in values.items():
                if type(value) is not float and (type(value) is not int or value != value):
                    if type(value) is not int:
                        continue
                key = (sensor, metric, minute)
                row = rollups.get(key)
                if row is None:
                    if "\x00" in metric:  # PostgreSQL text cannot hold it; checked once per new key
                        continue
                    if place is None:
                        place = (_text(r.get("site")), _text(r.get("zone")), _text(r.get("utility")))
                    rollups[key] = [*place, 1, value, value, value]
                else:
                    row[3] += 1
                    if value < row[4]:
                        row[4] = value
                    if value > row[5]:
                        row[5] = value
                    row[6] += value
        batch.readings += count
        batch.accepted[topic] = batch.accepted.get(topic, 0) + count
        batch.newest_ts = newest

    def _anomaly(self, a: dict[str, Any], batch: Batch) -> None:
        ts = _ms(a["ts"])
        batch.newest_ts = max(batch.newest_ts, ts)
        batch.anomalies.append(
            (
                _text(a["sensor_id"]),
                ts,
                _text(a.get("site")),
                _text(a.get("zone")),
                _text(a.get("utility")),
                _text(a.get("asset")),
                _num(a["score"]),
                _num(a.get("threshold", 0.0)),
                _text(a.get("severity") or "warning"),
                _text(a.get("reason")),
                _text(a.get("model_version")),
                _json(_of(a.get("top_metrics"), list, "top_metrics")),
                _json(_of(a.get("values"), dict, "values")),
            )
        )

    def _aggregate(self, g: dict[str, Any], batch: Batch) -> None:
        batch.aggregates.append(
            (
                _text(g.get("site")),
                _text(g.get("zone")),
                _text(g.get("utility")),
                _ms(g["window_start"]),
                _ms(g["window_end"]),
                _int(g["count"], 32),
                _int(g.get("anomaly_count", 0), 32),
                _json(g.get("metrics") or {}),
            )
        )

    def _risk(self, r: dict[str, Any], batch: Batch) -> None:
        ts = _ms(r["ts"])
        batch.newest_ts = max(batch.newest_ts, ts)
        batch.risk.append(
            (
                _text(r.get("site")),
                _text(r["zone"]),
                _text(r.get("utility")),
                ts,
                _int(r.get("horizon_s", 0), 32),
                _num(r["probability"]),
                _text(r.get("incident_type") or "normal"),
                _json(_of(r.get("class_probs"), dict, "class_probs")),
                _json(_of(r.get("forecast"), dict, "forecast")),
                _json(_of(r.get("loss"), dict, "loss")),
                _text(r.get("model_version")),
            )
        )

    def _alert(self, a: dict[str, Any], batch: Batch) -> None:
        labels = a.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValueError("labels must be an object")
        status = _text(a["status"])
        ts = _ms(a.get("updated_at") or (a.get("ends_at") if status == "resolved" else 0) or a.get("starts_at"))
        batch.alerts.append(
            (
                _text(a["fingerprint"]),
                ts,
                "state",
                status,
                _text(a.get("generator")),
                _text((a.get("annotations") or {}).get("summary", "")),
                None,
                _json(labels),
                _json(_of(a.get("annotations"), dict, "annotations")),
                _ms(a.get("starts_at", 0)),
                _ms(a.get("ends_at", 0)),
            )
        )

    def _sensor_event(self, e: dict[str, Any], batch: Batch) -> None:
        batch.sensor_events.append(
            (
                _text(e["sensor_id"]),
                _ms(e["ts"]),
                _text(e["kind"]),
                _text(e.get("site")),
                _text(e.get("zone")),
                _text(e.get("utility")),
                _text(e.get("asset")),
                _ms(e.get("last_seen_ms", 0)),
                _int(e.get("expected_interval_ms", 0)),
            )
        )

    def _quarantined(self, q: dict[str, Any], batch: Batch) -> None:
        received = _ms(q["received_ms"])
        minute = received - received % MINUTE_MS
        source = _text(q.get("source") or "unknown", 64)
        reasons = q.get("reasons") or ["unknown"]
        if not isinstance(reasons, list):
            reasons = [str(reasons)]
        codes = sorted({reason_code(str(r)) for r in reasons})
        if minute > self.sample_minute:
            # Sample budgets of minutes long gone are dropped (bounded memory).
            self.sample_minute = minute
            self.sampled = {k: v for k, v in self.sampled.items() if k[0] >= minute - 10 * MINUTE_MS}
        payload = q.get("payload")
        text = _clean(payload) if isinstance(payload, str) else _json(payload)
        for code in codes:
            key = (minute, source, code)
            batch.quarantine_counts[key] = batch.quarantine_counts.get(key, 0) + 1
            taken = self.sampled.get(key, 0)
            if taken < self.samples_per_minute:
                self.sampled[key] = taken + 1
                kept = text.encode()[: self.sample_max_bytes].decode("utf-8", "ignore")
                batch.quarantine_samples.append(
                    (
                        minute,
                        source,
                        code,
                        received,
                        _text(q.get("sensor_id")),
                        _json([str(r) for r in reasons]),
                        kept,
                        hashlib.md5(kept.encode()).hexdigest(),
                    )
                )

    def _report(self, r: dict[str, Any], batch: Batch) -> None:
        raw = orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
        rid = r.get("id") or r.get("report_id")
        if not rid:
            rid = hashlib.sha1(raw).hexdigest()[:20]
        ts = _ms(r.get("ts") or r.get("received_ms"))
        batch.reports.append(
            (
                _text(rid, 200),
                ts,
                _text(r.get("site")),
                _text(r.get("zone")),
                _text(r.get("utility")),
                _text(r.get("kind") or r.get("type") or "leak"),
                _text(r.get("text") or r.get("description")),
                _json(r),
            )
        )

    def _feedback(self, f: dict[str, Any], batch: Batch) -> None:
        verdict = _text(f["verdict"])
        if verdict not in ("true_positive", "false_positive"):
            raise ValueError(f"unknown verdict {verdict!r}")
        batch.feedback.append(
            (
                _text(f["fingerprint"]),
                _ms(f["ts"]),
                _text(f.get("author")),
                verdict,
                _text(f.get("comment")),
                _json(_of(f.get("labels"), dict, "labels")),
            )
        )

    def _label(self, lb: dict[str, Any], batch: Batch) -> None:
        sensors = lb.get("sensors") or []
        if not isinstance(sensors, list):
            raise ValueError("sensors must be a list")
        batch.labels.append(
            (
                _text(lb["incident_id"], 200),
                _text(lb["type"]),
                _ms(lb["start_ms"]),
                _ms(lb["end_ms"]),
                _text(lb.get("site")),
                _text(lb.get("zone")),
                _text(lb.get("utility")),
                _json([str(s) for s in sensors]),
            )
        )


# --- episodes (event frames) -------------------------------------------------------------------


def _merge_top(current: list[dict[str, Any]], new: list[Any]) -> list[dict[str, Any]]:
    """Metrics behind an episode: how often each was among an anomaly's top metrics, most first."""
    counts = {m["metric"]: m["count"] for m in current}
    for i, item in enumerate(new):
        name = item.get("metric") if isinstance(item, dict) else item
        if isinstance(name, str) and i < 3:
            counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_TOP_METRICS]
    return [{"metric": m, "count": c} for m, c in ranked]


def new_episode(anomaly: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": None,
        "sensor_id": anomaly["sensor_id"],
        "site": anomaly["site"],
        "zone": anomaly["zone"],
        "utility": anomaly["utility"],
        "asset": anomaly["asset"],
        "start_ts": anomaly["ts"],
        "end_ts": anomaly["ts"],
        "state": "open",
        "anomaly_count": 0,
        "peak_score": anomaly["score"],
        "severity": anomaly["severity"],
        "top_metrics": [],
        "reasons": [],
    }


def fold_episodes(episodes: list[dict[str, Any]], anomalies: list[dict[str, Any]], gap_ms: int) -> list[dict[str, Any]]:
    """Put one sensor's new anomalies into its episodes; returns the episodes changed or created.

    ``episodes`` are the sensor's episodes near the anomalies (any state); an anomaly within
    ``gap_ms`` of an episode's span joins it (extending it either way, so anomalies arriving
    out of order land where they belong), otherwise it starts a new one. Pure: the dicts
    given are copied, not changed. Episode dicts carry at least the columns of `new_episode`.
    """
    frames = [dict(e) for e in sorted(episodes, key=lambda e: e["start_ts"])]
    changed: dict[int, dict[str, Any]] = {}
    for a in sorted(anomalies, key=lambda x: x["ts"]):
        ts = a["ts"]
        target = None
        for e in frames:
            if e["start_ts"] - gap_ms <= ts <= e["end_ts"] + gap_ms:
                target = e
                break
        if target is None:
            target = new_episode(a)
            frames.append(target)
            frames.sort(key=lambda e: e["start_ts"])
        target["start_ts"] = min(target["start_ts"], ts)
        if ts > target["end_ts"]:
            target["end_ts"] = ts
            target["state"] = "open"  # a late anomaly may reopen an episode the stream closed too early
        target["anomaly_count"] += 1
        target["peak_score"] = max(target["peak_score"], a["score"])
        if SEVERITY_RANK.get(a["severity"], 1) > SEVERITY_RANK.get(target["severity"], 1):
            target["severity"] = a["severity"]
        target["top_metrics"] = _merge_top(target["top_metrics"], a.get("top_metrics") or [])
        reason = a.get("reason") or ""
        if reason and reason not in target["reasons"] and len(target["reasons"]) < MAX_REASONS:
            target["reasons"] = [*target["reasons"], reason]
        changed[id(target)] = target
    return list(changed.values())


def fold_incidents(
    incidents: list[dict[str, Any]], risks: list[dict[str, Any]], threshold: float, gap_ms: int
) -> list[dict[str, Any]]:
    """Put one zone's new risk records into its incidents; returns the incidents changed or created.

    A record counts when its probability reaches ``threshold`` and its type is not `normal`;
    records within ``gap_ms`` of an incident's span join it. The loss is the largest the
    forecaster reported during the incident (its own running total).
    """
    frames = [dict(i) for i in sorted(incidents, key=lambda i: i["start_ts"])]
    changed: dict[int, dict[str, Any]] = {}
    for r in sorted(risks, key=lambda x: x["ts"]):
        if r["probability"] < threshold or r["incident_type"] == "normal":
            continue
        ts = r["ts"]
        target = next((i for i in frames if i["start_ts"] - gap_ms <= ts <= i["end_ts"] + gap_ms), None)
        loss = r.get("loss") or {}
        if target is None:
            target = {
                "id": None,
                "site": r["site"],
                "zone": r["zone"],
                "utility": r["utility"],
                "incident_type": r["incident_type"],
                "start_ts": ts,
                "end_ts": ts,
                "state": "open",
                "peak_probability": r["probability"],
                "loss_volume": 0.0,
                "loss_cost": 0.0,
                "loss_unit": _text(loss.get("unit", "")),
                "currency": _text(loss.get("currency", "")),
            }
            frames.append(target)
        target["start_ts"] = min(target["start_ts"], ts)
        if ts > target["end_ts"]:
            target["end_ts"] = ts
            target["state"] = "open"
        if r["probability"] >= target["peak_probability"]:
            target["peak_probability"] = r["probability"]
            target["incident_type"] = r["incident_type"]
        volume, cost = loss.get("volume"), loss.get("cost")
        if isinstance(volume, (int, float)):
            target["loss_volume"] = max(target["loss_volume"], float(volume))
        if isinstance(cost, (int, float)):
            target["loss_cost"] = max(target["loss_cost"], float(cost))
        changed[id(target)] = target
    return list(changed.values())
