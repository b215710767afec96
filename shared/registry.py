"""A model registry on a directory.

Layout::

    <root>/<name>/v1/            files of version 1 + meta.json
    <root>/<name>/v2/
    <root>/<name>/aliases.json   {"production": "v2", ...}

A version is written into a temporary directory and renamed into place, so a
reader never sees half a model. Promotion moves an alias (atomically, by
rename) and publishes a :class:`~shared.records.ModelEvent` on the ``models``
topic so running services hot-reload. ``python -m shared.registry list|promote``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


class RegistryError(LookupError):
    pass


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
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".new-"))
        try:
            yield tmp
            meta = dict(metadata or {})
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
        path = self.root / name / ALIASES
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def load(self, name: str, version: str | None = None, alias: str | None = None) -> ModelVersion:
        """A version by number, by alias, or (neither given) the newest."""
        if alias is not None:
            version = self.aliases(name).get(alias)
            if version is None:
                raise RegistryError(f"model {name!r} has no version with alias {alias!r}")
        if version is None:
            versions = self._versions(name)
            if not versions:
                raise RegistryError(f"model {name!r} has no versions in {self.root}")
            version = versions[-1]
        path = self.root / name / version
        if not (path / META).exists():
            raise RegistryError(f"model {name!r} version {version!r} not found in {self.root}")
        return ModelVersion(name, version, path, orjson.loads((path / META).read_bytes()))

    def list(self, name: str | None = None) -> list[ModelVersion]:
        names = (
            [name] if name else sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []
        )
        return [self.load(n, v) for n in names for v in self._versions(n)]

    def promote(self, name: str, version: str, alias: str = "production") -> ModelEvent:
        """Point ``alias`` at ``version``; returns the event to publish on ``models``."""
        self.load(name, version)  # raises if missing
        aliases = self.aliases(name)
        aliases[alias] = version
        _write_json_atomic(self.root / name / ALIASES, aliases)
        return ModelEvent(name=name, version=version, alias=alias, action="promoted", ts=int(time.time() * 1000))


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
        event = reg.promote(args.name, args.version, args.alias)
        print(f"{args.name} {args.alias} -> {args.version}")
        if not args.no_publish:
            asyncio.run(publish_event(settings, event))
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
