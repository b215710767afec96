"""`python -m services.console <command>`: `worker` runs the service; users and settings are ops tools."""

import sys

from services.console import cli

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        sys.exit(cli.main(sys.argv))
    from services.console.app import app
    from shared.service import run_cli

    sys.exit(run_cli(app, cli.COMMANDS, sys.argv))
