"""Every service has the same command line: a short ``__main__`` that hands over to its ``cli``, one help, one grammar.

``python -m services.<name>`` runs ``services/<name>/__main__.py``; each is run here as Python runs it
(``runpy``), so what is checked is what a person at a shell gets.
"""

from __future__ import annotations

import ast
import importlib
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import ServiceCli

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("alerts", "console", "detector", "forecaster", "history", "ingest", "simulator")
WORKERS = set(SERVICES) - {"simulator"}


def run_main(service: str, *args: str) -> int:
    """``python -m services.<service> args``, in this process; returns the exit status."""
    saved = sys.argv[:]
    sys.argv[:] = [str(ROOT / "services" / service / "__main__.py"), *args]
    try:
        runpy.run_module(f"services.{service}", run_name="__main__", alter_sys=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv[:] = saved
    raise AssertionError("__main__ returned without an exit status")


@pytest.mark.parametrize("service", SERVICES)
def test_main_is_a_few_lines_that_hand_over_to_the_cli(service: str) -> None:
    source = (ROOT / "services" / service / "__main__.py").read_text()
    assert len(source.splitlines()) <= 10, source
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(f"services.{service}.cli", ["main"])]


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_every_command_and_exits_0(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli: ServiceCli = importlib.import_module(f"services.{service}.cli").CLI
    assert run_main(service, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m services.{service} [--log-level LEVEL] <command> [options]")
    listed = {line.split()[0] for line in out.split("commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()}
    assert listed == set(cli.commands) | ({"worker"} if service in WORKERS else set())
    assert "exit status: 0 done; 1 something failed" in out


@pytest.mark.parametrize("service", SERVICES)
def test_each_command_has_help(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli: ServiceCli = importlib.import_module(f"services.{service}.cli").CLI
    for name in cli.commands:
        assert run_main(service, name, "--help") == 0, name
        assert f"python -m services.{service} {name}" in capsys.readouterr().out, name


@pytest.mark.parametrize("service", SERVICES)
def test_no_command_or_an_unknown_one_is_a_usage_error(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(service) == 2
    assert capsys.readouterr().err.startswith("usage:")
    assert run_main(service, "--log-level", "INFO", "no-such-command") == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_the_faust_commands_handed_over_are_faust_s_own() -> None:
    from faust.cli.faust import cli as faust_cli

    from shared.cli import FAUST_COMMANDS

    assert set(faust_cli.commands) == FAUST_COMMANDS


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("history", "--log-level", "bogus", "settings") == 2
    assert "unknown log level 'bogus'" in capsys.readouterr().err


def test_a_mistyped_command_does_not_import_faust() -> None:
    code = (
        "import sys; from shared.cli import ServiceCli; "
        "status = ServiceCli('history', 'the history', {}, app='services.history.app').main(['no-such-command']); "
        "assert status == 2, status; assert 'faust' not in sys.modules, 'faust imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True)


def test_a_command_without_options_refuses_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("history", "settings", "--what") == 2
    assert "unrecognized arguments: --what" in capsys.readouterr().err


def test_the_simulator_has_no_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("simulator", "worker") == 2
    assert "unknown command 'worker'" in capsys.readouterr().err


def test_worker_goes_to_faust_and_an_unusable_config_is_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    worker = [sys.executable, "-m", "services.alerts", "--log-level", "warning", "worker"]
    shown = subprocess.run([*worker, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Usage: python -m services.alerts worker [OPTIONS]" in shown.stdout
    bad = {**env, "FLOWWATCH_ALERTS_CONFIG_PATH": "/nonexistent/alerts.yaml"}
    refused = subprocess.run(worker, cwd=ROOT, env=bad, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: /nonexistent/alerts.yaml") and "Traceback" not in refused.stderr
