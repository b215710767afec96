"""`python -m services.console <command>`: the commands are in services/console/cli.py (`--help` lists them)."""

import sys

from services.console.cli import main

if __name__ == "__main__":
    sys.exit(main())
