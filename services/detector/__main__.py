"""`python -m services.detector <command>`: `worker` runs the service; fit, score and others are ops tools."""

import sys

from services.detector import cli

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in cli.COMMANDS:
        sys.exit(cli.main(sys.argv))
    from services.detector.app import app
    from shared.service import run_cli

    sys.exit(run_cli(app, cli.COMMANDS, sys.argv))
