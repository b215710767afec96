"""`python -m services.simulator <command>`: network, history, run, replay (see --help)."""

import sys

from services.simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
