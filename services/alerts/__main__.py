import sys

from services.alerts.cli import COMMANDS


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] in COMMANDS:
        return COMMANDS[argv[1]](argv[2:])
    from services.alerts.app import app
    from shared.service import run_cli

    return run_cli(app, {}, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
