"""Regenerate the generated tables of the README and docs/*.md from the code (`python -m scripts.readme_tables`).

Each table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``;
``--check`` exits 1 when a file is out of date (the unit tests run it).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from shared.settings import Settings, settings_table
from shared.topics import topics_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _service_settings(service: str) -> Callable[[], str]:
    """The settings table of a service's own dataclass (services/<name>/settings.py), if it has one."""

    def render() -> str:
        try:
            module = importlib.import_module(f"services.{service}.settings")
        except ModuleNotFoundError:
            return f"_{service} has no settings of its own yet._"
        cls = next(
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__ == module.__name__ and hasattr(obj, "__dataclass_fields__")
        )
        prefix = getattr(module, "ENV_PREFIX", f"FLOWWATCH_{service.upper()}_")
        return settings_table(cls, prefix)

    return render


def _ingest_mappings() -> str:
    """The payload mappings shipped with ingest (services/ingest/mappings.yaml)."""
    from services.ingest import mappings

    return mappings.table(mappings.load())


TABLES: dict[str, Callable[[], str]] = {
    "settings": lambda: settings_table(Settings),
    "topics": topics_table,
    "mappings-ingest": lambda: _ingest_mappings(),
    **{
        f"settings-{name}": _service_settings(name)
        for name in ("ingest", "detector", "forecaster", "alerts", "history", "console", "simulator")
    },
}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- {re.escape(name)}:begin -->\n)(?:.*?\n)?(<!-- {re.escape(name)}:end -->)", re.S)
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str]) -> int:
    stale = []
    for path in documents():
        current = path.read_text()
        fresh = render(current)
        if fresh == current:
            continue
        stale.append(path.relative_to(ROOT))
        if "--check" not in argv:
            path.write_text(fresh)
    if stale and "--check" in argv:
        names = ", ".join(str(p) for p in stale)
        print(f"tables out of date in {names}: run `python -m scripts.readme_tables`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
