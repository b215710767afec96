"""`python -m services.ingest <command>`: the commands are in services/ingest/cli.py (`--help` lists them)."""

import sys

from services.ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
