"""`python -m services.history <command>`: the commands are in services/history/cli.py (`--help` lists them)."""

import sys

from services.history.cli import main

if __name__ == "__main__":
    sys.exit(main())
