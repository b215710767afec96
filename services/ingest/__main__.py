"""`python -m services.ingest <command>`: `worker` runs the service; other commands are ops tools.

worker              run the service (Faust worker; --loglevel crit|error|warn|info|debug)
check [FILE|-]      validate readings (JSON, JSON array or NDJSON) offline, print the verdicts
ranges              print the metric ranges and units in effect (FLOWWATCH_INGEST_RANGES_FILE)
settings            print the ingest settings table (markdown)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

import orjson

from services.ingest.payloads import PayloadError, split_items
from services.ingest.rules import ConfigError, Rules
from services.ingest.settings import ENV_PREFIX, IngestSettings
from services.ingest.validation import decode, reason_code, validate


def cmd_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ingest check", description="Validate readings offline.")
    parser.add_argument("file", nargs="?", default="-", help="JSON, JSON array or NDJSON file; - for stdin")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    try:
        rules = Rules.load(IngestSettings.from_env())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
    try:
        items = split_items(body, max_items=10**9)
    except PayloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    now = int(time.time() * 1000)
    codes: Counter[str] = Counter()
    ok = 0
    for index, item in enumerate(items):
        value, error = decode(item.value)
        reasons = [error] if error else validate(value, now, rules, "check").reasons
        if not reasons:
            ok += 1
        for code in {reason_code(r) for r in reasons}:
            codes[code] += 1
        if not args.quiet:
            print(orjson.dumps({"index": index, "ok": not reasons, "reasons": reasons}).decode())
    summary = {"items": len(items), "valid": ok, "quarantined": len(items) - ok, "reasons": dict(codes)}
    print(orjson.dumps(summary).decode(), file=sys.stderr)
    return 0 if ok == len(items) else 1


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


def cmd_settings(argv: list[str]) -> int:
    from shared.settings import settings_table

    print(settings_table(IngestSettings, ENV_PREFIX))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"check": cmd_check, "ranges": cmd_ranges, "settings": cmd_settings}

# Faust's --loglevel takes crit|error|warn|info|debug; accept the logging module's names too.
_LOGLEVELS = {"warning": "warn", "critical": "crit", "fatal": "crit"}


def _normalise_loglevel(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--loglevel", "-l") and i + 1 < len(out):
            out[i + 1] = _LOGLEVELS.get(out[i + 1].lower(), out[i + 1])
        elif arg.startswith("--loglevel="):
            level = arg.split("=", 1)[1]
            out[i] = f"--loglevel={_LOGLEVELS.get(level.lower(), level)}"
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] in COMMANDS:
        return COMMANDS[argv[1]](argv[2:])
    sys.argv[:] = _normalise_loglevel(argv)
    from services.ingest.app import app
    from shared.service import run_cli

    return run_cli(app, COMMANDS, sys.argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
