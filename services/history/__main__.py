"""`python -m services.history <command>`: `worker` runs the service; migrate, retention, settings are ops tools."""

import sys

from services.history import cli

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        sys.exit(cli.main(sys.argv))
    from services.history.app import app
    from shared.service import run_cli

    sys.exit(run_cli(app, cli.COMMANDS, sys.argv))
