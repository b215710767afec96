"""The README is the front door: its generated tables must match the code."""

from pathlib import Path

import pytest

from scripts.readme_tables import README, documents, render

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_generated_tables_are_current(path: Path) -> None:
    text = path.read_text()
    assert render(text) == text, f"run `python -m scripts.readme_tables` to refresh {path.name}"


def test_the_service_docs_carry_generated_settings_tables() -> None:
    assert "<!-- settings-forecaster:begin -->" in (ROOT / "docs/forecaster.md").read_text()


def test_tables_are_filled_in() -> None:
    text = README.read_text()
    assert "| `FLOWWATCH_BROKER_URL` |" in text
    assert "| `readings.clean` |" in text
    assert "| `FLOWWATCH_DETECTOR_" in text and "| `FLOWWATCH_ALERTS_" in text


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci/run").read_text()
