"""`python -m services.forecaster <command>`: the commands are in services/forecaster/cli.py (`--help` lists them)."""

import sys

from services.forecaster.cli import main

if __name__ == "__main__":
    sys.exit(main())
