"""The alerts service's command line: ``worker`` and the ops commands (run as Helm Jobs or by a person at a shell).

check-config [PATH]              validate the rules/routing YAML and the API tokens, exit 0 (valid) or 2
resend-dlq [--dry-run] [--max N] re-send the notifications on alerts.dlq through the current config
settings                         print the alerts settings table (markdown)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from services.alerts.config import ConfigError, load_config
from services.alerts.delivery import DeliveryError, WebhookClient, with_retries
from services.alerts.dispatcher import Integrations
from services.alerts.settings import ENV_PREFIX, AlertsSettings
from shared.auth import AuthConfigError, TokenStore
from shared.cli import Command, ServiceCli, settings_command
from shared.codec import dumps, loads
from shared.settings import Settings
from shared.topics import ALERTS_DLQ


def check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.alerts check-config", description="Validate the rules/routing YAML and the API tokens."
    )
    parser.add_argument("path", nargs="?", help="config file (default: FLOWWATCH_ALERTS_CONFIG_PATH)")
    args = parser.parse_args(argv)
    asettings = AlertsSettings.from_env()
    path = Path(args.path) if args.path else asettings.config_path
    try:
        config = load_config(path)
        tokens = TokenStore.load(asettings.tokens_env, asettings.tokens_file)
        tokens.extend(TokenStore.from_settings(Settings.from_env("alerts")))
    except (ConfigError, AuthConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    routes = len(config.route.walk())
    print(
        f"{path}: ok — {len(config.rules)} rules, {routes} routes, {len(config.receivers)} receivers, "
        f"{len(config.inhibit_rules)} inhibit rules, {len(config.time_intervals)} time intervals, "
        f"{len(tokens.tokens)} API tokens"
    )
    return 0


async def resend_dlq(
    settings: Settings,
    asettings: AlertsSettings,
    *,
    dry_run: bool = False,
    max_messages: int = 0,
    idle_s: float = 2.0,
    out: Any = sys.stdout,
) -> tuple[int, int]:
    """Re-send what is in alerts.dlq through the *current* config; returns (sent, failed).

    Progress is a consumer group offset, committed after each message is either
    sent or put back on the DLQ with its new error, so nothing is lost or sent
    twice by running it again.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    config = load_config(asettings.config_path)
    topic = settings.topic(ALERTS_DLQ.name)
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(),
        group_id=f"{settings.topic_prefix}flowwatch-alerts-resend-dlq",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await consumer.start()
    await producer.start()
    sent = failed = 0
    # Only what is on the DLQ now: failures put back during this run wait for the next one.
    partitions = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
    consumer.assign(partitions)
    end = await consumer.end_offsets(partitions)

    async def kafka_send(name: str, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        futures = [await producer.send(settings.topic(name), dumps(value), key=key) for key, value in records]
        await asyncio.gather(*futures)

    try:
        http = WebhookClient()
        try:
            integrations = Integrations(config, http, kafka_send)
            last = time.monotonic()

            async def remaining() -> bool:
                for tp in partitions:
                    if await consumer.position(tp) < end[tp]:
                        return True
                return False

            while await remaining() and time.monotonic() - last < idle_s * 5:
                if max_messages and sent + failed >= max_messages:
                    break
                batch = await consumer.getmany(*partitions, timeout_ms=500, max_records=1)
                for tp, records in batch.items():
                    for rec in records:
                        if rec.offset >= end[tp]:
                            continue
                        last = time.monotonic()
                        try:
                            entry = loads(rec.value)
                            receiver, integration = entry["receiver"], entry["integration"]
                            notification = entry["notification"]
                        except (ValueError, KeyError, TypeError) as exc:
                            print(f"offset {rec.offset}: unreadable DLQ record skipped: {exc}", file=out)
                            failed += 1
                            continue
                        label = f"{entry.get('id')} → {receiver}/{integration}"
                        if dry_run:
                            print(f"would resend {label} (failed: {entry.get('error')})", file=out)
                            continue
                        try:
                            await with_retries(
                                lambda _n, r=receiver, i=integration, n=notification: integrations.send(r, i, n),
                                max_attempts=asettings.max_attempts,
                                base_s=asettings.backoff_base_s,
                                cap_s=asettings.backoff_max_s,
                            )
                            sent += 1
                            print(f"resent {label}", file=out)
                        except DeliveryError as exc:
                            failed += 1
                            again = {**entry, "error": str(exc), "failed_at": int(time.time() * 1000)}
                            again["resend_attempts"] = entry.get("resend_attempts", 0) + 1
                            await producer.send_and_wait(topic, dumps(again), key=rec.key)
                            print(f"failed again {label}: {exc} (back on the DLQ)", file=out)
                        await consumer.commit(
                            {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(rec.offset + 1, "")}
                        )
        finally:
            await http.aclose()
    finally:
        await consumer.stop()
        await producer.stop()
    return sent, failed


def resend_dlq_cmd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.alerts resend-dlq",
        description="Re-send notifications from alerts.dlq through the current receivers config.",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be re-sent (commits nothing)")
    parser.add_argument(
        "--max", type=int, default=0, help="stop after this many messages (0: until the DLQ is drained)"
    )
    args = parser.parse_args(argv)
    try:
        sent, failed = asyncio.run(
            resend_dlq(
                Settings.from_env("alerts"), AlertsSettings.from_env(), dry_run=args.dry_run, max_messages=args.max
            )
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"resend-dlq: {sent} sent, {failed} failed")
    return 1 if failed else 0


CLI = ServiceCli(
    "alerts",
    "The alerts service: rules over anomalies, risk and sensor events; grouped, routed notifications.",
    {
        "check-config": Command(check_config, "validate the rules/routing YAML and the API tokens (exit 0 or 2)"),
        "resend-dlq": Command(resend_dlq_cmd, "re-send the notifications on alerts.dlq through the current config"),
        "settings": settings_command(AlertsSettings, ENV_PREFIX, "alerts"),
    },
    app="services.alerts.app",
    usage_errors=(ConfigError,),
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
