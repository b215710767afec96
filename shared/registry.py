"""A model registry on a directory.

Layout::

    <root>/<name>/v1/            files of version 1 + meta.json
    <root>/<name>/v2/
    <root>/<name>/aliases.json   {"production": "v2", ...}

A version is written into a temporary directory and renamed into place, so a
reader never sees half a model. Its ``meta.json`` records the sha256 of every file at save
time, and :meth:`ModelRegistry.load` checks them before anyone loads the files (pickled models
are code): a file changed, added or missing after the save, or a version without digests, is
refused with the reason, and services keep serving the model they have. Names, versions and
aliases are plain names (:data:`NAME_PATTERN`): never a path. Promotion moves an alias (atomically, by
rename) and publishes a :class:`~shared.records.ModelEvent` on the ``models``
topic so running services hot-reload; each alias keeps the versions it was promoted to
(``promotions.json``), and a rollback moves it back to the one before.
``python -m shared.registry list|promote|rollback|seal``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.records import ModelEvent

META = "meta.json"
ALIASES = "aliases.json"
PROMOTIONS = "promotions.json"  # {alias: [versions it pointed at, oldest first]}: what rollback returns to
#: Model names, versions and aliases: a plain name, never a path (no separators, no "..").
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DIGESTS = "sha256"  # meta.json key: {relative file path: hex digest}


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


class RegistryError(LookupError):
    pass


def check_name(what: str, value: Any) -> str:
    """``value`` when it is a plain name (:data:`NAME_PATTERN`, no ``..``); RegistryError otherwise."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise RegistryError(f"{what} {shown} is not a plain name (letters, digits, '.', '_', '-'; at most 64)")
    return value


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` but meta.json, by path relative to it."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != META):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[path.relative_to(directory).as_posix()] = h.hexdigest()
    return out


def verify(mv: ModelVersion) -> None:
    """Refuse a version whose files are not exactly those whose digests were recorded when it was saved."""
    recorded = mv.metadata.get(DIGESTS)
    where = f"model {mv.name} {mv.version}"
    if not isinstance(recorded, dict) or not recorded:
        raise RegistryError(
            f"{where} has no sha256 digests in its {META}; refusing to load it "
            f"(if you trust its files: python -m shared.registry seal {mv.name} {mv.version})"
        )
    found = digests(mv.path)
    if found != recorded:
        changed = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
        raise RegistryError(f"{where}: files differ from the sha256 recorded at save time: {', '.join(changed)[:300]}")


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if p.is_dir() and p.name[:1] == "v" and p.name[1:].isdigit()]
        return sorted(found, key=lambda v: int(v[1:]))

    @contextlib.contextmanager
    def create(self, name: str, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
        """Write a new version: yields a directory to fill; published on clean exit only."""
        check_name("model name", name)
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".new-"))
        try:
            yield tmp
            meta = dict(metadata or {})
            meta[DIGESTS] = digests(tmp)
            for _ in range(100):  # another writer may take the same number; try the next
                versions = self._versions(name)
                version = f"v{int(versions[-1][1:]) + 1 if versions else 1}"
                meta.update(name=name, version=version, created=meta.get("created", time.time()))
                _write_json_atomic(tmp / META, meta)
                try:
                    os.rename(tmp, base / version)
                    break
                except OSError:
                    continue
            else:
                raise RegistryError(f"could not allocate a version for {name}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last_created = ModelVersion(name, version, base / version, meta)

    def save_dir(self, name: str, src: Path | str, metadata: dict[str, Any] | None = None) -> ModelVersion:
        """Copy a directory of model files in as a new version."""
        with self.create(name, metadata) as dst:
            shutil.copytree(src, dst, dirs_exist_ok=True)
        return self.last_created

    def aliases(self, name: str) -> dict[str, str]:
        path = self.root / check_name("model name", name) / ALIASES
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def load(
        self, name: str, version: str | None = None, alias: str | None = None, *, verified: bool = True
    ) -> ModelVersion:
        """A version by number, by alias, or (neither given) the newest; its files checked unless ``verified``
        is False (listing, promoting: nothing is loaded)."""
        check_name("model name", name)
        if alias is not None:
            version = self.aliases(name).get(check_name("alias", alias))
            if version is None:
                raise RegistryError(f"model {name!r} has no version with alias {alias!r}")
        if version is None:
            versions = self._versions(name)
            if not versions:
                raise RegistryError(f"model {name!r} has no versions in {self.root}")
            version = versions[-1]
        path = self.root / name / check_name("version", version)
        if not (path / META).exists():
            raise RegistryError(f"model {name!r} version {version!r} not found in {self.root}")
        mv = ModelVersion(name, version, path, orjson.loads((path / META).read_bytes()))
        if verified:
            verify(mv)
        return mv

    def seal(self, name: str, version: str) -> ModelVersion:
        """Record the sha256 of a version's files as they are now (for versions saved before digests existed)."""
        mv = self.load(name, version, verified=False)
        meta = {**mv.metadata, DIGESTS: digests(mv.path)}
        _write_json_atomic(mv.path / META, meta)
        return ModelVersion(name, version, mv.path, meta)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        names = (
            [name] if name else sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []
        )
        return [self.load(n, v, verified=False) for n in names for v in self._versions(n)]

    def promote(self, name: str, version: str, alias: str = "production") -> ModelEvent:
        """Point ``alias`` at ``version``; returns the event to publish on ``models``."""
        self.load(name, version)  # raises if missing or its files do not match their digests
        aliases = self.aliases(name)
        previous = aliases.get(check_name("alias", alias))
        stack = self.promotions(name).get(alias) or ([previous] if previous else [])
        if not stack or stack[-1] != version:
            self._write_promotions(name, alias, [*stack, version])
        aliases[alias] = version
        _write_json_atomic(self.root / name / ALIASES, aliases)
        return ModelEvent(name=name, version=version, alias=alias, action="promoted", ts=int(time.time() * 1000))

    def promotions(self, name: str) -> dict[str, list[str]]:
        path = self.root / check_name("model name", name) / PROMOTIONS
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def _write_promotions(self, name: str, alias: str, stack: list[str]) -> None:
        data = self.promotions(name)
        data[alias] = stack[-100:]  # bounded: rollbacks go back a hundred promotions at most
        _write_json_atomic(self.root / name / PROMOTIONS, data)

    def rollback(self, name: str, alias: str = "production") -> ModelEvent:
        """Point ``alias`` back at the version it had before its latest promotion; returns the event to publish."""
        current = self.aliases(name).get(check_name("alias", alias))
        stack = list(self.promotions(name).get(alias, []))
        while stack and stack[-1] == current:
            stack.pop()
        if current is None or not stack:
            raise RegistryError(f"model {name!r}: alias {alias!r} has no earlier version to roll back to")
        self.load(name, stack[-1])  # the version returned to must still be intact
        self._write_promotions(name, alias, stack)
        aliases = self.aliases(name)
        aliases[alias] = stack[-1]
        _write_json_atomic(self.root / name / ALIASES, aliases)
        return ModelEvent(name=name, version=stack[-1], alias=alias, action="rolled_back", ts=int(time.time() * 1000))


def check_event(event: ModelEvent) -> str:
    """Why a ``models`` event cannot be used ('' when it can): every field of the expected type, plain names."""
    for what in ("name", "version", "alias", "action"):
        try:
            check_name(what, getattr(event, what))
        except RegistryError as exc:
            return str(exc)
    if type(event.ts) is not int:
        return f"ts is {type(event.ts).__name__}, not an integer"
    return ""


async def publish_event(settings: Any, event: ModelEvent) -> None:
    """Send a promotion on the ``models`` topic (services listen and hot-reload)."""
    from aiokafka import AIOKafkaProducer

    from shared.codec import dumps
    from shared.topics import MODELS

    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(MODELS.name), dumps(event), key=event.name.encode())
    finally:
        await producer.stop()


def _main(argv: list[str] | None = None) -> int:
    import asyncio

    from shared.settings import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m shared.registry", description="Inspect and promote model versions."
    )
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list versions and aliases")
    ls.add_argument("name", nargs="?")
    pr = sub.add_parser("promote", help="point an alias at a version and notify services")
    pr.add_argument("name")
    pr.add_argument("version")
    pr.add_argument("--alias", default="production")
    pr.add_argument("--no-publish", action="store_true", help="only move the alias; do not send the models event")
    rb = sub.add_parser("rollback", help="move an alias back to the version it had before its latest promotion")
    rb.add_argument("name")
    rb.add_argument("--alias", default="production")
    rb.add_argument("--no-publish", action="store_true", help="only move the alias; do not send the models event")
    se = sub.add_parser("seal", help="record the sha256 of a version's files as they are now (trusting them)")
    se.add_argument("name")
    se.add_argument("version")
    args = parser.parse_args(argv)
    reg = ModelRegistry(args.model_dir)
    try:
        if args.command == "list":
            for mv in reg.list(args.name):
                tags = [a for a, v in reg.aliases(mv.name).items() if v == mv.version]
                print(
                    f"{mv.name:24s} {mv.version:6s} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(mv.metadata.get('created', 0)))} {','.join(tags)}"
                )
            return 0
        if args.command == "seal":
            mv = reg.seal(args.name, args.version)
            print(f"{mv.name} {mv.version}: sha256 recorded for {len(mv.metadata[DIGESTS])} files")
            return 0
        if args.command == "rollback":
            event = reg.rollback(args.name, args.alias)
        else:
            event = reg.promote(args.name, args.version, args.alias)
        print(f"{args.name} {args.alias} -> {event.version}")
        if not args.no_publish:
            asyncio.run(publish_event(settings, event))
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
