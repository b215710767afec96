"""`python -m services.alerts <command>`: the commands are in services/alerts/cli.py (`--help` lists them)."""

import sys

from services.alerts.cli import main

if __name__ == "__main__":
    sys.exit(main())
