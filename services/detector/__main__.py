"""`python -m services.detector <command>`: the commands are in services/detector/cli.py (`--help` lists them)."""

import sys

from services.detector.cli import main

if __name__ == "__main__":
    sys.exit(main())
