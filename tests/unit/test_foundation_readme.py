"""The README is the front door: its generated tables must match the code."""

from pathlib import Path

from scripts.readme_tables import README, render

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_generated_tables_are_current() -> None:
    text = README.read_text()
    assert render(text) == text, "run `python -m scripts.readme_tables` to refresh README.md"


def test_tables_are_filled_in() -> None:
    text = README.read_text()
    assert "| `FLOWWATCH_BROKER_URL` |" in text
    assert "| `readings.clean` |" in text
    assert "| `FLOWWATCH_DETECTOR_" in text and "| `FLOWWATCH_ALERTS_" in text


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci/run").read_text()
