"""`python -m services.forecaster <command>`: `worker` runs the service; `train` and `evaluate` are ops tools."""

import sys

from services.forecaster.cli import COMMANDS
from shared.service import run_cli

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        # ops commands must not build the Faust app (nor connect anywhere) just to parse arguments
        sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
    from services.forecaster.app import app

    sys.exit(run_cli(app, COMMANDS, sys.argv))
