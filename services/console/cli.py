"""The console service's command line: ``worker`` and the ops commands (they start fast: no Faust app).

users add NAME --role R       add a user; the password from FLOWWATCH_CONSOLE_PASSWORD, stdin (piped) or a prompt
users passwd NAME             set a new password (same sources); ends the user's sessions
users list                    the users, their roles and whether they are disabled
users disable NAME            disable a user (ends its sessions); `users enable NAME` undoes it
users role NAME R             change a user's role
settings                      print the console settings table (markdown)

A password is never taken from the command line (it would be visible in ps and the shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from services.console.settings import ENV_PREFIX, ConsoleSettings
from services.console.users import UserError, Users
from shared.auth import ROLES
from shared.cli import Command, ServiceCli, settings_command

PASSWORD_ENV = "FLOWWATCH_CONSOLE_PASSWORD"


def read_password(confirm: bool = True) -> str:
    """From the environment, piped stdin (first line), or an interactive prompt (typed twice)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        raise UserError("password", "the two entries differ")
    return first


async def _run(action: Callable[[Users], Any]) -> Any:
    cs = ConsoleSettings.from_env()
    conn = await asyncpg.connect(cs.database_url)
    try:
        from services.history import store

        await store.migrate(conn)
        return await action(Users(conn, cs.session_ttl_s))
    finally:
        await conn.close()


def users(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.console users", description="Manage console users.")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user (password from env, stdin or prompt)")
    add.add_argument("name")
    add.add_argument("--role", choices=list(ROLES), default="viewer")
    sub.add_parser("passwd", help="set a user's password").add_argument("name")
    sub.add_parser("list", help="list users")
    sub.add_parser("disable", help="disable a user").add_argument("name")
    sub.add_parser("enable", help="enable a user again").add_argument("name")
    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=list(ROLES))
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            rows = asyncio.run(_run(lambda u: u.list()))
            for r in rows:
                print(f"{r['name']}\t{r['role']}\t{'disabled' if r['disabled'] else 'enabled'}")
            return 0
        if args.action == "add":
            password = read_password()
            user = asyncio.run(_run(lambda u: u.add(args.name, password, args.role)))
        elif args.action == "passwd":
            password = read_password()
            user = asyncio.run(_run(lambda u: u.update(args.name, password=password)))
        elif args.action in ("disable", "enable"):
            user = asyncio.run(_run(lambda u: u.update(args.name, disabled=args.action == "disable")))
        else:
            user = asyncio.run(_run(lambda u: u.update(args.name, role=args.role)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot reach the console database: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"{user['name']}\t{user['role']}\t{'disabled' if user['disabled'] else 'enabled'}")
    return 0


CLI = ServiceCli(
    "console",
    "The console service: the operators' and the public's web front end over the history and alerts APIs.",
    {
        "users": Command(users, "manage console users: add, passwd, list, disable, enable, role"),
        "settings": settings_command(ConsoleSettings, ENV_PREFIX, "console"),
    },
    app="services.console.app",
)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)
