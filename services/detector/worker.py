"""The detector's work on each micro-batch of readings.clean: score, publish, checkpoint states.

:class:`DetectorEngine` is the :class:`~shared.pump.BatchJob` of the detector's
:class:`~shared.pump.Pump`, which reads readings.clean in ``getmany`` fetches outside Faust's
per-message consumer path (why, and how it follows Faust's assignment and recovery: see
:mod:`shared.pump`).

Per micro-batch: decode, score (in a thread, so heartbeats keep flowing), then the
scores, anomalies and quarantined messages go out as one record batch per
topic-partition; once the broker has acknowledged them the batch counts as done. Zone
partials are merged across batches and go out with the first batch ``partials_every_s``
after the last send, ahead of each checkpoint, or from a timer when no batch comes.
At each checkpoint the states of the sensors that changed (once per sensor, however
many readings it had) are written to ``detector-sensor-state`` together with the pump's
offsets, so a restart resumes exactly there: readings after the checkpoint are scored
again from the checkpointed state, which reproduces the same scores (at-least-once
outputs, idempotent on sensor_id + ts).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any

import msgspec

from services.detector import aggregates, kernels
from services.detector import metrics as m
from services.detector.pipeline import BatchResult, Scorer
from services.detector.settings import DetectorSettings
from services.detector.state import Layout, pack, unpack
from shared.batching import Outbox, PartitionMap
from shared.cache import Cache
from shared.codec import dumps_record, encode_record, loads
from shared.limits import NewIdBudget
from shared.metrics import DECODE_ERRORS, EVENTS_OUT
from shared.pump import BatchJob, Checkpoint, PumpConfig, Undo
from shared.records import Reading, Score
from shared.settings import Settings
from shared.streaming import event_context
from shared.topics import ANOMALIES, DETECTOR_ZONE_PARTIALS, READINGS_CLEAN, READINGS_QUARANTINE, SCORES

log = logging.getLogger(__name__)

SERVICE = "detector"


NOT_NUMBERS = "invalid: values must be a map of numbers (finite, by metric name)"
ID_FIELDS = ("sensor_id", "site", "zone", "utility", "asset", "source")


def _id_name(r: Reading, value: Any) -> str:
    """The first id field of ``r`` holding ``value``."""
    return next(name for name in ID_FIELDS if getattr(r, name) is value)


_SENSOR_ID = attrgetter("sensor_id")

DEFAULT_SOURCE: str = Reading.__dataclass_fields__["source"].default  # type: ignore[assignment]

#: An ``extra`` longer than this goes the checked way: shorter, it cannot nest as deep as orjson refuses (its depth
#: counts from the message's top, while ``extra`` is read alone).
EXTRA_FAST_BYTES = 1_000


@functools.cache
def _wire(max_id_chars: int) -> msgspec.json.Decoder[Any]:
    """A decoder of what :func:`decode` takes, checked in C; what it refuses goes the checked way for the reason.

    Its fields are :class:`Reading`'s (tests/unit/test_detector_decode.py holds them equal and fuzzes both ways
    against each other), typed no looser than :func:`_checked`: ids as text up to ``max_id_chars``, a non-empty map
    of numbers (JSON has no NaN, and msgspec refuses a number out of a float's range), an integer ``ts``. The fields
    the checks leave alone are typed as ingest writes them; any other shape goes the checked way, which takes it.
    """
    ident = Annotated[str, msgspec.Meta(max_length=max_id_chars)]
    # orjson reads an integer past 2**64 - 1 as a float, msgspec as an int: beyond int64, the checked way
    int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    wire = msgspec.defstruct(
        "WireReading",
        [
            ("sensor_id", Annotated[str, msgspec.Meta(min_length=1, max_length=max_id_chars)]),
            ("ts", int64),
            ("site", ident),
            ("zone", ident),
            ("utility", ident),
            ("asset", ident),
            ("values", Annotated[dict[str, int64 | float], msgspec.Meta(min_length=1)]),
            ("units", dict[str, str], msgspec.field(default_factory=dict)),
            ("quality", int64 | float | None, None),
            # any JSON, read by orjson as the checked way reads it (msgspec's depth bound is the interpreter's)
            ("extra", msgspec.Raw, msgspec.Raw(b"{}")),
            ("received_ms", int64, 0),
            ("source", ident, DEFAULT_SOURCE),
            ("v", int64, 1),
        ],
        gc=False,
        # a field it does not know is skipped unread by msgspec (a number out of range, bad UTF-8, any depth):
        # a newer writer's reading goes the checked way, which reads it whole
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(wire)


def decode(value: bytes | None, max_id_chars: int = 200) -> tuple[Reading | None, str]:
    """A reading from its wire bytes, or the reason it is not one.

    msgspec takes a reading as ingest writes it to checked fields in ~1.3 µs, where orjson, the record and the checks
    in Python took ~3.5 (docs/performance.md); whatever it refuses is decoded again by :func:`_checked`, which says
    why, so what is taken and the reasons are what they always were.
    """
    if max_id_chars < len(DEFAULT_SOURCE):  # msgspec does not check a default: the checked way says it is too long
        return _checked(value, max_id_chars)
    try:
        w = _wire(max_id_chars).decode(value or b"")
        raw = bytes(w.extra)
        if len(raw) > EXTRA_FAST_BYTES:
            return _checked(value, max_id_chars)
        # what ingest writes, mostly: no parse. Otherwise orjson reads it as the checked way would: msgspec only
        # skipped over it (a number out of range or bad UTF-8 inside is found here)
        extra = {} if raw == b"{}" else loads(raw)
    except Exception:  # noqa: BLE001 - any refusal (not JSON, not UTF-8, a check, a shape): the checked way says why
        return _checked(value, max_id_chars)
    return Reading(
        w.sensor_id,
        w.ts,
        w.site,
        w.zone,
        w.utility,
        w.asset,
        w.values,
        w.units,
        w.quality,
        extra,
        w.received_ms,
        w.source,
        w.v,
    ), ""


def _checked(value: bytes | None, max_id_chars: int) -> tuple[Reading | None, str]:
    """:func:`decode` in Python, with the reason a message is not a reading."""
    try:
        data = loads(value or b"")
        if not isinstance(data, dict):
            return None, f"undecodable: expected a JSON object, got {type(data).__name__}"
        try:
            # what ingest writes has exactly the record's fields: built directly, without from_dict's filtering
            r = Reading(**data)
        except TypeError:
            r = Reading.from_dict(data)  # fields it does not know (a newer writer) are left out; a missing one raises
    except (ValueError, TypeError) as exc:
        return None, f"undecodable: {type(exc).__name__}: {exc}"
    if type(r.sensor_id) is not str or not r.sensor_id:
        return None, "invalid: missing sensor_id"
    if type(r.ts) is not int:
        return None, "invalid: ts is not an integer (epoch ms)"
    for v in (r.sensor_id, r.site, r.zone, r.utility, r.asset, r.source):
        if type(v) is not str or len(v) > max_id_chars:
            return None, f"invalid: {_id_name(r, v)} must be text of at most {max_id_chars} characters"
    values = r.values
    if type(values) is not dict:
        return None, NOT_NUMBERS
    isfinite = math.isfinite
    for k, v in values.items():
        if type(k) is not str or (type(v) is not float and type(v) is not int) or not isfinite(v):
            return None, NOT_NUMBERS
    if not values:
        # ingest refuses these too (no_values); under a profile that takes its metrics from the reading there
        # would be nothing to score
        return None, "invalid: values holds no metric"
    return r, ""


@dataclass(slots=True)
class Scored:
    """What a micro-batch decided, for :meth:`DetectorEngine.finish`."""

    partitions: dict[str, int]  # sensor -> its readings.clean partition
    result: BatchResult
    readings: int
    quarantined: int


class DetectorEngine(BatchJob[Scored]):
    batch_kind = "score"

    def __init__(self, app: Any, settings: Settings, ds: DetectorSettings, scorer: Scorer) -> None:
        self.clean_name = settings.topic(READINGS_CLEAN.name)
        self.names = {
            "scores": settings.topic(SCORES.name),
            "anomalies": settings.topic(ANOMALIES.name),
            "quarantine": settings.topic(READINGS_QUARANTINE.name),
            "partials": settings.topic(DETECTOR_ZONE_PARTIALS.name),
        }
        partitions = READINGS_CLEAN.partitions_for(settings)
        config = PumpConfig(
            service=SERVICE,
            topic=self.clean_name,
            progress_table="detector-progress",
            batch_size=ds.batch_size,
            within_s=ds.batch_wait_s,
            in_flight=ds.batches_in_flight,
            checkpoint_s=ds.checkpoint_s,
            mirror_group=f"{app.conf.id}-readings",
            # 1 by default: a fetch returns what has arrived, so only an idle pump waits (docs/performance.md).
            fill_bytes=ds.batch_fill_bytes,
        )
        super().__init__(settings, config, partitions, self.names.values())
        self.app = app
        self.ds = ds
        self.scorer = scorer
        self.states = app.Table(
            "detector-sensor-state",
            help="Rolling state per sensor (packed vector)",
            key_type=bytes,
            value_type=bytes,
            default=None,
            partitions=partitions,
        )
        self.cache = Cache(
            settings.redis_url, prefix=settings.topic_prefix, ttl_s=settings.cache_ttl_s, service=SERVICE
        )
        # latest state (metrics, vector) of every sensor seen since the assignment; packed at checkpoints
        self.memory: dict[str, tuple[tuple[str, ...], Any]] = {}
        self.dirty: dict[str, int] = {}  # sensor -> partition, changed since the last checkpoint
        self.cache_latest: dict[str, Score] = {}  # the latest score of each sensor since the last flush
        self.cache_counts: dict[str, int] = {}
        # zone key -> window start -> partial, of the batches decided since they last went out (_hold, _send_held)
        self.held: dict[str, dict[str, dict]] = {}
        self.held_since = time.monotonic()
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=20_000)
        self.new_sensors = NewIdBudget(ds.new_sensors_per_minute)
        self.totals = {"batches": 0, "readings": 0, "anomalies": 0, "late": 0, "quarantined": 0, "checkpoints": 0}

    # --- start-up and partitions ------------------------------------------------------------

    async def prepare(self) -> None:
        # Before the first batch, and before /ready: compiling the kernels takes seconds on a cold cache.
        await asyncio.to_thread(kernels.warm_up)

    async def close(self) -> None:
        await self.cache.close()

    def load_state(self, sensor_id: str, partition: int) -> tuple[tuple[str, ...], Any] | None:
        hit = self.memory.get(sensor_id)
        if hit is None:
            with event_context(self.event(partition)):
                raw = self.states.get(sensor_id.encode())
            if raw is not None:
                try:
                    hit = self.memory[sensor_id] = unpack(raw)
                except ValueError as exc:
                    m.STATE_ERRORS.inc()
                    log.warning("stored state of %s unreadable (%s); starting it afresh", sensor_id, exc)
        return hit

    def forget(self) -> None:
        # Held partials sum up readings past the last durable checkpoint (a settle whose checkpoint failed keeps
        # them): whoever reads those partitions next reads the readings again and makes them again.
        self.memory.clear()
        self.held = {}

    # --- one micro-batch ----------------------------------------------------------------------

    async def decide(self, records: list[Any], box: Outbox) -> Scored:
        readings: list[Reading] = []
        partitions: dict[str, int] = {}
        bad = 0
        max_id = self.ds.max_id_chars
        for rec in records:
            r, why = decode(rec.value, max_id)
            if r is None:
                bad += 1
                self._quarantine(box, rec.value, why, key=rec.key, source_partition=rec.partition)
                continue
            readings.append(r)
            partitions[r.sensor_id] = rec.partition
        states = {sid: self.load_state(sid, p) for sid, p in partitions.items()}
        if self.ds.new_sensors_per_minute > 0 and None in states.values():
            readings, refused = self._within_budget(readings, states)
            for r in refused:
                bad += 1
                why = self.new_sensors.reason(r.source)
                self._quarantine(box, None, why, sensor_id=r.sensor_id, decoded=r.to_dict(), decoded_ok=True)
                partitions.pop(r.sensor_id, None)
        # A scoring error raises out of here: the pump retries the batch, then isolates the reading that fails.
        if self.ds.compute_in_thread and len(readings) >= max(1, self.ds.thread_min_readings):
            result = await asyncio.to_thread(self.scorer.process, readings, states.get)
        else:
            result = self.scorer.process(readings, states.get)
        for sid, blob in result.states.items():
            self.memory[sid] = blob
        # Marked now, not once acknowledged: the pump takes a checkpoint with the batches in flight in it (their
        # offsets, so their states too) and writes it only once the broker has them.
        self.dirty.update(partitions)
        scores_t, anomalies_t = self.names["scores"], self.names["anomalies"]
        maps = self.partition_maps
        pscores, panom = maps[scores_t], maps[anomalies_t]
        keys = list(map(str.encode, map(_SENSOR_ID, result.scores)))
        box.add_all(scores_t, map(pscores, keys), keys, map(encode_record, result.scores))
        for a in result.anomalies:
            key = a.sensor_id.encode()
            box.add(anomalies_t, panom(key), key, dumps_record(a))
        self._hold(result.partials)
        if time.monotonic() - self.held_since >= self.ds.partials_every_s:
            self._send_held(box)
        return Scored(partitions, result, len(readings), bad)

    # --- zone partials ------------------------------------------------------------------------

    def _hold(self, partials: dict[str, dict[str, dict]]) -> None:
        """Merge a batch's zone partials into those held (the aggregator's own merge, so its windows end the same)."""
        held, merge = self.held, aggregates.merge
        for zone, windows in partials.items():
            have = held.get(zone)
            if have is None:
                held[zone] = dict(windows)
                continue
            for ws, p in windows.items():
                have[ws] = merge(have[ws], p) if ws in have else p

    def _send_held(self, box: Outbox) -> dict[str, dict[str, dict]]:
        """The held partials into ``box``, one message per zone (more when over ``aggregates.MESSAGE_BYTES``); returns
        them (to hold again should it fail).

        Into a batch's box they are durable with that batch; into a checkpoint's, with the checkpoint: either way
        before (or with) the offsets of the readings they sum up, so a crash replays what did not go out.
        """
        held = self.held
        if held:
            topic = self.names["partials"]
            part = self.partition_maps[topic]
            written = [(zone.encode(), aggregates.messages(windows)) for zone, windows in held.items()]
            for key, values in written:  # written first: should that raise, they are still held
                for value in values:
                    box.add(topic, part(key), key, value)
        self.held = {}
        self.held_since = time.monotonic()
        return held

    def stage(self, checkpoint: Checkpoint) -> Undo | None:
        """The changed states into ``checkpoint``, and the partials held ahead of it: its offsets must not pass
        readings whose partials have not gone out."""
        undo_states = super().stage(checkpoint)
        held = self._send_held(checkpoint.ahead)
        if not held:
            return undo_states

        def undo() -> None:
            if undo_states is not None:
                undo_states()
            if not checkpoint.ahead_sent:  # sent, they are out: held again they would count twice
                self._hold(held)

        return undo

    async def send_due_partials(self) -> bool:
        """Send the held partials once ``partials_every_s`` has passed with no batch to take them (an idle input);
        True when some went out. Call between batches (``async with pump.lock``).

        Without it they would wait for the next checkpoint (``checkpoint_s``, as long as the aggregate grace) while
        other workers' partials moved the aggregator's watermark past their windows.
        """
        if not self.held or self.producer is None or time.monotonic() - self.held_since < self.ds.partials_every_s:
            return False
        box = Outbox(self.producer)
        held = self._send_held(box)
        try:
            await box.flush()
        except Exception:
            self._hold(held)  # with the next batch or checkpoint (some may have landed: at least once)
            raise
        return True

    def _within_budget(self, readings: list[Reading], states: dict[str, Any]) -> tuple[list[Reading], list[Reading]]:
        """Readings of sensors that may be created now, and those of new sensors beyond their source's budget."""
        refused: set[str] = set()
        allowed: set[str] = set()
        for r in readings:
            sid = r.sensor_id
            if states.get(sid) is None and sid not in allowed and sid not in refused:
                (allowed if self.new_sensors.allow(r.source) else refused).add(sid)
        if not refused:
            return readings, []
        return [r for r in readings if r.sensor_id not in refused], [r for r in readings if r.sensor_id in refused]

    def _quarantine(self, box: Outbox, raw: bytes | None, why: str, **where: Any) -> None:
        self.quarantine(box, raw, [why], **where)
        m.QUARANTINED.labels(why.split(":")[0]).inc()

    def finish(self, sub: Scored, elapsed: float) -> None:
        """A batch the broker acknowledged: totals, metrics, cache."""
        result = sub.result
        self.recent.append((elapsed, sub.readings + sub.quarantined))
        t = self.totals
        t["batches"] += 1
        t["readings"] += sub.readings
        t["anomalies"] += len(result.anomalies)
        t["late"] += result.late
        t["quarantined"] += sub.quarantined
        if sub.quarantined:
            DECODE_ERRORS.labels(SERVICE, self.clean_name).inc(sub.quarantined)
        EVENTS_OUT.labels(SERVICE, self.names["scores"]).inc(len(result.scores))
        EVENTS_OUT.labels(SERVICE, self.names["anomalies"]).inc(len(result.anomalies))
        if result.late:
            m.LATE.inc(result.late)
        if result.bad_states:
            m.STATE_ERRORS.inc(result.bad_states)
        for name, n in result.scored.items():
            m.READINGS_SCORED.labels(name).inc(n)
        for name, n in result.flagged.items():
            if n:
                m.ANOMALIES.labels(name).inc(n)
        if self.ds.cache_enabled and (result.scores or result.anomalies):
            flagged: dict[str, int] = {}
            for a in result.anomalies:
                key = aggregates.zone_key(a.site, a.zone, a.utility)
                flagged[key] = flagged.get(key, 0) + 1
            # coalesced: a sensor scored many times between flushes costs one Redis write (and one entry, built then)
            self.cache_latest.update({s.sensor_id: s for s in result.scores})
            for key, n in flagged.items():
                self.cache_counts[key] = self.cache_counts.get(key, 0) + n

    async def flush_cache(self) -> None:
        """Write the latest score per sensor and the new anomaly counts per zone to Redis (best effort)."""
        latest, self.cache_latest = self.cache_latest, {}
        counts, self.cache_counts = self.cache_counts, {}
        if latest:
            entries = {
                sid: {
                    "ts": s.ts,
                    "score": s.score,
                    "threshold": s.threshold,
                    "is_anomaly": s.is_anomaly,
                    "model_version": s.model_version,
                    "zone": s.zone,
                }
                for sid, s in latest.items()
            }
            await self.cache.set_many("score", entries)
        if counts:
            await self.cache.incr_many("zone_anomalies", counts)

    def write_state(self, checkpoint: Checkpoint, dirty: dict[str, int]) -> None:
        """The states of the sensors changed since the last checkpoint, once per sensor, in its partition."""
        states: dict[int, dict[bytes, bytes]] = {}
        for sid, partition in dirty.items():
            held = self.memory.get(sid)
            if held is not None:
                states.setdefault(partition, {})[sid.encode()] = pack(*held)
        checkpoint.write(self.states, states)
        self.totals["checkpoints"] += 1
        if len(self.memory) > self.ds.memory_sensors:
            # Every state but those staged now (which include what the batches in flight changed) is durable in
            # the table already (kept, as the undo needs them should this checkpoint fail).
            self.memory = {sid: self.memory[sid] for sid in dirty if sid in self.memory}
            m.STATES_EVICTED.labels("memory").inc()

    async def sweep(self, now_ms: int | None = None, limit: int = 10_000) -> int:
        """Delete the states of sensors silent for longer than ``state_ttl_s`` (event time); returns how many.

        Call between batches (``async with pump.lock``). It skips sensors held in memory, so a deletion never
        races a checkpoint of the same sensor, and flushes Faust's producer before it returns.
        """
        ttl_ms = self.ds.state_ttl_s * 1000
        if ttl_ms <= 0:
            return 0
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - ttl_ms
        pmap = PartitionMap(self.states.partitions)
        local = self.local
        stale: list[tuple[int, bytes]] = []
        for key, raw in list(self.states.data.items()):
            p = pmap(key)
            if p not in local or key.decode("utf-8", "replace") in self.memory:
                continue
            try:
                metrics, vec = unpack(raw)
                last_ts = int(vec[Layout(len(metrics)).TS])
            except (ValueError, IndexError):
                last_ts = -1  # unreadable: as good as gone
            if last_ts < cutoff:
                stale.append((p, key))
                if len(stale) >= limit:
                    break
        for p, key in stale:
            with event_context(self.event(p)):
                del self.states[key]
        if stale:
            await self.app.producer.flush()
            m.STATES_EVICTED.labels("expired").inc(len(stale))
            log.info("deleted the state of %d sensors silent for more than %ds", len(stale), self.ds.state_ttl_s)
        return len(stale)
