"""The ingest service's command line: ``worker`` and the ops commands.

check [FILE|-]      validate readings (JSON, JSON array or NDJSON) offline, print the verdicts;
                    --mapping NAME reads the file through a payload mapping (JSON, NDJSON or .csv)
mappings            list the payload mappings in effect (FLOWWATCH_INGEST_MAPPINGS_FILE) and their doors
ranges              print the metric ranges and units in effect (FLOWWATCH_INGEST_RANGES_FILE)
settings            print the ingest settings table (markdown)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import orjson

from services.ingest import mappings
from services.ingest.payloads import Item, PayloadError, csv_items, split_items
from services.ingest.rules import ConfigError, Rules
from services.ingest.settings import ENV_PREFIX, IngestSettings
from services.ingest.validation import decode, reason_code, validate
from shared.cli import Command, ServiceCli, settings_command


def cmd_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ingest check", description="Validate readings offline.")
    parser.add_argument("file", nargs="?", default="-", help="JSON, JSON array or NDJSON file; - for stdin")
    parser.add_argument("--mapping", help="read the file through this payload mapping (see `mappings`)")
    parser.add_argument("--csv", action="store_true", help="the file is CSV (implied by a .csv name)")
    parser.add_argument("--topic", help="the MQTT topic the messages came on (for mappings that read its segments)")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    isettings = IngestSettings.from_env()
    try:
        rules = Rules.load(isettings)
        known = mappings.load(isettings.mappings_file) if args.mapping else {}
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mapping = known.get(args.mapping) if args.mapping else None
    if args.mapping and mapping is None:
        print(f"error: unknown mapping {args.mapping!r} (known: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
    csv = args.csv or args.file.lower().endswith(".csv")
    try:
        if csv and mapping is None:
            raise PayloadError("CSV needs --mapping NAME (which columns are what)")
        items = csv_items(body, max_items=10**9) if csv else split_items(body, max_items=10**9)
    except PayloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if mapping is not None:
        items = [out for n, item in enumerate(items) for out in _mapped(mapping, item, n, rules, args.topic)]
    now = int(time.time() * 1000)
    codes: Counter[str] = Counter()
    ok = 0
    for index, item in enumerate(items):
        if item.reasons:
            reasons = item.reasons
        else:
            value, error = decode(item.value, rules.max_line_bytes, rules.max_json_depth)
            reasons = [error] if error else validate(value, now, rules, "check").reasons
        if not reasons:
            ok += 1
        for code in {reason_code(r) for r in reasons}:
            codes[code] += 1
        if not args.quiet:
            verdict: dict[str, object] = {"index": index, "ok": not reasons, "reasons": reasons}
            if mapping is not None:
                verdict.update(message=item.message, sensor_id=item.sensor_id)
            print(orjson.dumps(verdict).decode())
    summary = {"items": len(items), "valid": ok, "quarantined": len(items) - ok, "reasons": dict(codes)}
    print(orjson.dumps(summary).decode(), file=sys.stderr)
    return 0 if ok == len(items) else 1


def _mapped(mapping: mappings.PayloadMapping, item: Item, index: int, rules: Rules, topic: str | None) -> list[Item]:
    """The items one message becomes (as the doors make them), each marked with the message's index."""
    if item.reasons:
        return [Item(item.value, None, item.reasons, index)]
    readings, reasons, _ = mappings.expand(mapping, item.value, rules, topic)
    if reasons:
        return [Item(item.value, None, reasons, index)]
    for reading in readings:
        reading.message = index
    return readings


def cmd_mappings(argv: list[str]) -> int:
    isettings = IngestSettings.from_env()
    try:
        known = mappings.load(isettings.mappings_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(mappings.table(known))
    return 0


def cmd_ranges(argv: list[str]) -> int:
    try:
        rules = Rules.load(IngestSettings.from_env())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| metric | unit | min | max | usual range |")
    print("| --- | --- | --- | --- | --- |")
    for spec in rules.metrics.values():
        print(f"| `{spec.name}` | {spec.unit} | {spec.lo:g} | {spec.hi:g} | {spec.soft_lo:g} .. {spec.soft_hi:g} |")
    return 0


CLI = ServiceCli(
    "ingest",
    "The ingest service: readings from HTTP, MQTT and Kafka validated into readings.clean or quarantined.",
    {
        "check": Command(cmd_check, "validate readings (JSON, JSON array, NDJSON; CSV through a mapping) offline"),
        "mappings": Command(cmd_mappings, "list the payload mappings in effect and their doors", options=False),
        "ranges": Command(cmd_ranges, "print the metric ranges and units in effect", options=False),
        "settings": settings_command(IngestSettings, ENV_PREFIX, "ingest"),
    },
    app="services.ingest.app",
    usage_errors=(ConfigError,),
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
