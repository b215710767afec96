"""`python -m services.detector <command>`: `worker` runs the service; other commands are ops tools."""

import sys

from services.detector.app import app
from shared.service import run_cli

COMMANDS: dict = {}

if __name__ == "__main__":
    sys.exit(run_cli(app, COMMANDS, sys.argv))
