"""One command line for every service: ``python -m services.<name> [--log-level LEVEL] <command> [options]``.

Each service's ``cli.py`` holds its ops commands and a :class:`ServiceCli`; its ``__main__.py``
only calls ``cli.main()``. The grammar, the help and the exit codes are the same everywhere:

* ``worker`` runs the service (a Faust worker; ``worker --help`` lists Faust's options). Faust's
  other commands (``agents``, ``tables``, ...) pass through to Faust too. The Faust app is only
  imported for these: an ops command starts fast and connects nowhere it does not need.
* every other command is the service's own and parses its own options (``<command> --help``);
* ``--help``, ``-h`` or ``help`` lists the commands; no command at all lists them as an error;
* ``--log-level LEVEL`` before the command sets the log level (DEBUG, INFO, WARNING, ERROR) of an
  ops command's JSON logs on stderr, or of the worker (Faust's ``--loglevel``, which is accepted
  after ``worker`` as before, with the logging module's names too).

Exit status: 0 done; 1 the command ran and something failed or was found invalid; 2 usage: an
unknown command, options or inputs the command cannot use, or an unusable configuration (the
service's ``usage_errors``, printed as one ``error:`` line); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.logs import setup_logging

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
HELP = ("--help", "-h", "help")
# Faust's --loglevel takes crit|error|warn|info|debug; accept the logging module's names too.
_LOGLEVELS = {"warning": "warn", "critical": "crit", "fatal": "crit"}


@dataclass(frozen=True)
class Command:
    """An ops command: ``run(argv)`` gets the arguments after its name and returns the exit status.

    A command without options says so (``options=False``): the runner gives it ``--help`` and refuses
    any argument (exit 2), as argparse does for the others.
    """

    run: Callable[[list[str]], int]
    help: str
    options: bool = True


@dataclass(frozen=True)
class ServiceCli:
    service: str
    summary: str
    commands: Mapping[str, Command]
    # The module of the Faust app (its ``app``), imported only for ``worker`` and Faust's commands;
    # None for a service without a worker (the simulator).
    app: str | None = None
    # Errors that mean "this cannot be used as given" (a config, a data file): exit 2 with one line.
    usage_errors: tuple[type[BaseException], ...] = ()
    log_level: str = "WARNING"  # of the ops commands, unless --log-level says otherwise
    epilog: str = ""  # examples, after the list of commands

    @property
    def prog(self) -> str:
        return f"python -m services.{self.service}"

    def usage(self) -> str:
        rows = [("worker", "run the service (a Faust worker; `worker --help` for its options)")] if self.app else []
        rows += [(name, cmd.help) for name, cmd in self.commands.items()]
        width = max(len(name) for name, _ in rows) + 2
        lines = [
            f"usage: {self.prog} [--log-level LEVEL] <command> [options]",
            "",
            self.summary,
            "",
            "commands:",
            *(f"  {name:<{width}}{text}" for name, text in rows),
            "",
            f"`{self.prog} <command> --help` shows a command's options."
            + (" Faust's other commands (agents, tables, ...) go to Faust." if self.app else ""),
            "exit status: 0 done; 1 something failed or was invalid; 2 usage or unusable configuration; "
            "130 interrupted.",
        ]
        if self.epilog:
            lines += ["", self.epilog.strip("\n")]
        return "\n".join(lines)

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the command in ``argv`` (``sys.argv[1:]`` by default) and return its exit status."""
        args = list(sys.argv[1:] if argv is None else argv)
        level = None
        if args[:1] == ["--log-level"] and len(args) >= 2:
            level, args = args[1], args[2:]
        elif args and args[0].startswith("--log-level="):
            level, args = args[0].split("=", 1)[1], args[1:]
        if level is not None and level.upper() not in logging.getLevelNamesMapping():
            print(f"{self.prog}: unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)", file=sys.stderr)
            return USAGE
        if not args or args[0] in HELP:
            print(self.usage(), file=sys.stdout if args else sys.stderr)
            return OK if args else USAGE
        name, rest = args[0], args[1:]
        command = self.commands.get(name)
        if command is not None:
            if not command.options:
                argparse.ArgumentParser(prog=f"{self.prog} {name}", description=command.help).parse_args(rest)
            return self._run(command, rest, level)
        if self.app is not None and name in FAUST_COMMANDS:
            return self._faust(self.app, name, rest, level)
        print(f"{self.prog}: unknown command {name!r}\n\n{self.usage()}", file=sys.stderr)
        return USAGE

    def _run(self, command: Command, argv: list[str], level: str | None) -> int:
        if level is not None or not logging.getLogger().handlers:  # a caller's logging (pytest's) is kept
            setup_logging(self.service, level or self.log_level)
        try:
            return command.run(argv)
        except self.usage_errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE
        except KeyboardInterrupt:
            return INTERRUPTED

    def _faust(self, module: str, name: str, argv: list[str], level: str | None) -> int:
        if level is not None and not any(a in ("--loglevel", "-l") or a.startswith("--loglevel=") for a in argv):
            argv = ["--loglevel", level, *argv]
        try:
            app = importlib.import_module(module).app
        except self.usage_errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE
        # Faust reads sys.argv itself, and exits through click.
        sys.argv[:] = [sys.argv[0], *normalise_loglevel([name, *argv])]
        app.main()
        return OK


def settings_command(settings: type, env_prefix: str, service: str) -> Command:
    """``settings``: the service's settings table in markdown, as the README shows it (paths relative)."""

    def run(argv: list[str]) -> int:
        from shared.settings import settings_table

        root = str(Path(__file__).resolve().parents[1]) + "/"
        print(settings_table(settings, env_prefix).replace(root, ""))
        return OK

    return Command(run, f"print the {service} settings table (markdown)", options=False)


#: Faust's own commands (``faust.cli.faust.cli.commands``), written out so that telling a mistyped command
#: from one of Faust's does not import Faust (~1 s); a unit test holds the list to Faust's.
FAUST_COMMANDS = frozenset(
    {"agents", "clean-versions", "completion", "livecheck", "model", "models", "reset", "send", "tables", "worker"}
)


def normalise_loglevel(argv: list[str]) -> list[str]:
    """Faust's ``--loglevel`` values from the logging module's names too (``warning`` -> ``warn``)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--loglevel", "-l") and i + 1 < len(out):
            out[i + 1] = _LOGLEVELS.get(out[i + 1].lower(), out[i + 1].lower())
        elif arg.startswith("--loglevel="):
            level = arg.split("=", 1)[1].lower()
            out[i] = f"--loglevel={_LOGLEVELS.get(level, level)}"
    return out
