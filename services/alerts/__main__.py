"""`python -m services.alerts <command>`: `worker` runs the service; other commands are ops tools.

* ``check-config [PATH]``  validate the rules/routing YAML and exit (0 = valid)
* ``resend-dlq [--dry-run] [--max N]``  re-send notifications from alerts.dlq
"""

import sys

from services.alerts.config import ConfigError
from services.alerts.ops import COMMANDS


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] in COMMANDS:
        return COMMANDS[argv[1]](argv[2:])
    try:
        from services.alerts.app import app
    except ConfigError as exc:
        print(f"error: invalid alerts config: {exc}", file=sys.stderr)
        return 2
    from shared.service import run_cli

    return run_cli(app, {}, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
