"""docs/ingest.md shows the settings and ranges the code actually has."""

from pathlib import Path

from services.ingest.rules import Rules
from services.ingest.settings import ENV_PREFIX, IngestSettings
from shared.settings import settings_table

DOC = (Path(__file__).resolve().parents[2] / "docs/ingest.md").read_text()


def test_settings_table_is_current() -> None:
    assert settings_table(IngestSettings, ENV_PREFIX) in DOC, (
        "refresh the table with `python -m services.ingest settings`"
    )


def test_every_metric_and_unit_is_documented() -> None:
    for spec in Rules.load().metrics.values():
        assert f"| `{spec.name}` | {spec.unit} |" in DOC, spec.name
