"""Delivers outbox entries, each at most once per worker at a time, idempotently across crashes.

The at-least-once protocol, per notification id (``nid``):

1. The state stage writes the outbox entry to its table (the intent) and submits
   it here only once the broker has acknowledged the batch's changelog records
   (:class:`~services.alerts.state.StateJob`), so the intent is in the changelog
   before anything leaves the process. A crash before that point loses nothing:
   the events that made the entry are applied again (their offsets are checkpointed
   only with acknowledged batches); one after it but before the entry was submitted
   here leaves it in the outbox table, which the next tick's scan sends.
2. A Redis lease (``SET NX PX``, renewed while the sender lives) guards the send:
   after a rebalance the new owner of the partition sees the lease and waits instead
   of sending concurrently; a crashed sender's lease lapses after ``lease_s``.
3. Before sending, the Redis *done* marker is checked; after a 2xx it is set
   (synchronously, before anything else). Then a ``result`` event goes to the
   entry's partition and the state stage deletes the entry.
   A crash after the send but before the entry is deleted is therefore caught by
   the done marker: no second send.
4. The one window left is a crash *while the request is in flight*: the receiver
   may have it but we cannot know. The entry is retried (at-least-once) with the
   same ``Idempotency-Key`` header, so a receiver can drop the repeat.

After the last attempt (or a non-retryable error) the notification goes to
alerts.dlq with its error; ``python -m services.alerts resend-dlq`` sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from services.alerts.config import Config, EmailConfig, KafkaConfig, WebhookConfig
from services.alerts.delivery import DeliveryError, WebhookClient, send_email, send_webhook, with_retries
from services.alerts.metrics import ATTEMPT_FAILURES, DELIVERY_SECONDS, IDEMPOTENCY_DEGRADED, NOTIFICATIONS
from services.alerts.settings import AlertsSettings

log = logging.getLogger(__name__)

# (topic, [(key, record)]) -> acknowledged by the broker; all records of a notification at once
KafkaSend = Callable[[str, list[tuple[bytes, dict[str, Any]]]], Awaitable[None]]


def alert_records(notification: dict[str, Any]) -> list[dict[str, Any]]:
    """The notification's alerts as shared.records.Alert dicts (for the ``alerts`` topic)."""
    from services.alerts.silences import parse_time_ms

    out = []
    for a in notification["alerts"]:
        ends = a["endsAt"]
        out.append(
            {
                "fingerprint": a["fingerprint"],
                "status": a["status"],
                "labels": a["labels"],
                "annotations": a["annotations"],
                "starts_at": parse_time_ms(a["startsAt"], "startsAt"),
                "ends_at": 0 if ends.startswith("0001") else parse_time_ms(ends, "endsAt"),
                "updated_at": int(time.time() * 1000),
                "generator": a.get("generatorURL", ""),
                "v": 1,
            }
        )
    return out


class Integrations:
    """Sends one notification through one integration of a receiver (one attempt)."""

    def __init__(self, config: Config, http: WebhookClient, kafka_send: KafkaSend):
        self.config = config
        self.http = http
        self.kafka_send = kafka_send

    def lookup(self, receiver: str, integration: str) -> Any:
        rec = self.config.receivers.get(receiver)
        if rec is None:
            raise DeliveryError(f"receiver {receiver!r} is not in the config any more", False)
        cfg = dict(rec.integrations()).get(integration)
        if cfg is None:
            raise DeliveryError(f"receiver {receiver!r} has no integration {integration!r} any more", False)
        return cfg

    async def send(self, receiver: str, integration: str, notification: dict[str, Any]) -> None:
        cfg = self.lookup(receiver, integration)
        if isinstance(cfg, WebhookConfig):
            await send_webhook(self.http, cfg, notification)
        elif isinstance(cfg, EmailConfig):
            await send_email(cfg, notification)
        elif isinstance(cfg, KafkaConfig):
            try:
                await self.kafka_send(cfg.topic, [(r["fingerprint"].encode(), r) for r in alert_records(notification)])
            except Exception as exc:  # noqa: BLE001 - any producer failure is a retryable delivery failure
                raise DeliveryError(f"kafka {type(exc).__name__}: {exc}", True) from None


class Dispatcher:
    def __init__(
        self,
        settings: AlertsSettings,
        integrations: Integrations,
        redis: Any,
        key_prefix: str,
        *,
        report: Callable[[int, dict[str, Any]], Awaitable[None]],
        dead_letter: Callable[[dict[str, Any]], Awaitable[None]],
        concurrency: int = 32,
    ):
        self.settings = settings
        self.integrations = integrations
        self.redis = redis
        self.key_prefix = key_prefix
        self.report = report
        self.dead_letter = dead_letter
        self.worker_id = uuid.uuid4().hex
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.semaphore = asyncio.Semaphore(concurrency)
        self.closed = False
        # Crash-test failpoint: SIGKILL this process right after a delivery is marked done and
        # before its result is reported (the window the done marker exists for). Tests only.
        self.failpoint = os.environ.get("FLOWWATCH_ALERTS_FAILPOINT", "")

    def _key(self, kind: str, nid: str) -> str:
        return f"{self.key_prefix}{kind}:{nid}"

    def submit(self, entry: dict[str, Any]) -> None:
        nid = entry["id"]
        if nid in self.in_flight or self.closed:  # closed: the entry stays in the outbox for the next owner
            return
        self.in_flight[nid] = asyncio.ensure_future(self._run(entry))

    async def close(self, grace_s: float = 0.0) -> tuple[int, int]:
        """Take nothing new; give the deliveries in flight ``grace_s`` to finish, then cancel the rest.

        Returns (finished, cancelled); a cancelled delivery's entry stays in the outbox for the next owner.
        """
        self.closed = True
        running = list(self.in_flight.values())
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        late = [task for task in running if not task.done()]
        for task in late:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        return len(running) - len(late), len(late)

    async def _redis(self, op: str, *args: Any, **kw: Any) -> Any:
        try:
            return await getattr(self.redis, op)(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - Redis down: deliver anyway (at-least-once), count it
            IDEMPOTENCY_DEGRADED.inc()
            log.warning("redis %s failed during delivery; idempotency degraded: %s", op, exc)
            return _FAILED

    async def _run(self, entry: dict[str, Any]) -> None:
        nid = entry["id"]
        try:
            async with self.semaphore:
                await self._deliver(entry)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of %s failed unexpectedly; retried on the next tick", nid)
        finally:
            self.in_flight.pop(nid, None)

    async def _deliver(self, entry: dict[str, Any]) -> None:
        nid, receiver, integration = entry["id"], entry["receiver"], entry["integration"]
        labels = {"id": nid, "receiver": receiver, "integration": integration}
        # (1) the intent (outbox entry) is durable in the changelog: the state stage submits it only then.
        lease_ms = int(self.settings.lease_s * 1000)
        # (2) the done marker and the lease in one round trip (Redis down: deliver anyway, at-least-once)
        done, got = await self._pipeline(
            lambda p: p.exists(self._key("notify-done", nid)).set(
                self._key("notify-lease", nid), self.worker_id, nx=True, px=lease_ms
            ),
            (False, True),
        )
        if done:
            NOTIFICATIONS.labels(receiver, integration, "duplicate_skipped").inc()
            if got:
                await self._release(nid)
            await self.report(entry["partition"], {**labels, "type": "result", "outcome": "delivered"})
            return
        if not got:
            return  # another worker (or a dead one, until the lease expires) holds it; the next tick looks again

        async def attempt(n: int) -> None:
            await self.integrations.send(receiver, integration, entry["notification"])

        async def keep_lease() -> None:
            # A live sender keeps its lease however long a request takes; a dead one's lapses after lease_s.
            while True:
                await asyncio.sleep(self.settings.lease_s / 3)
                await self._redis("pexpire", self._key("notify-lease", nid), lease_ms)

        def failed(n: int, exc: DeliveryError) -> None:
            ATTEMPT_FAILURES.labels(receiver, integration, str(exc.retryable).lower()).inc()
            log.warning("delivery %s to %s/%s attempt %d failed: %s", nid, receiver, integration, n, exc)

        renew = asyncio.ensure_future(keep_lease())
        try:
            attempts = await with_retries(
                attempt,
                max_attempts=self.settings.max_attempts,
                base_s=self.settings.backoff_base_s,
                cap_s=self.settings.backoff_max_s,
                on_failure=failed,
            )
        except DeliveryError as exc:
            await self.dead_letter(
                {
                    **labels,
                    "group_key": entry["notification"].get("groupKey", ""),
                    "error": str(exc),
                    "retryable": exc.retryable,
                    "attempts": getattr(exc, "attempts", 0),
                    "failed_at": int(time.time() * 1000),
                    "notification": entry["notification"],
                }
            )
            await self._redis("set", self._key("notify-done", nid), "dlq", ex=self.settings.done_ttl_s)
            await self._release(nid)
            await self.report(entry["partition"], {**labels, "type": "result", "outcome": "dlq", "error": str(exc)})
            return
        finally:
            renew.cancel()
        # (3) remember the success before anything else can fail (the lease goes in the same round trip).
        await self._pipeline(
            lambda p: p.set(self._key("notify-done", nid), "delivered", ex=self.settings.done_ttl_s).eval(
                RELEASE, 1, self._key("notify-lease", nid), self.worker_id
            ),
            (None, None),
        )
        if self.failpoint == "after_done":
            os.kill(os.getpid(), signal.SIGKILL)
        DELIVERY_SECONDS.labels(receiver, integration).observe(max(0.0, time.time() - entry["created_at"]))
        await self.report(
            entry["partition"], {**labels, "type": "result", "outcome": "delivered", "attempts": attempts}
        )

    async def _pipeline(self, build: Callable[[Any], Any], failed: tuple[Any, ...]) -> tuple[Any, ...]:
        """Commands in one round trip (not a transaction); ``failed`` stands for their replies when Redis is down."""
        try:
            return tuple(await build(self.redis.pipeline(transaction=False)).execute())
        except Exception as exc:  # noqa: BLE001 - Redis down: deliver anyway (at-least-once), count it
            IDEMPOTENCY_DEGRADED.inc()
            log.warning("redis failed during delivery; idempotency degraded: %s", exc)
            return failed

    async def _release(self, nid: str) -> None:
        await self._redis("eval", RELEASE, 1, self._key("notify-lease", nid), self.worker_id)


#: Deletes a lease only if this worker holds it (an expired one may be another worker's by now).
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


_FAILED = object()
