"""`python -m services.simulator <command>`: the commands are in services/simulator/cli.py (`--help` lists them)."""

import sys

from services.simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
