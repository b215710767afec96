"""Console users and sessions in PostgreSQL; passwords hashed with argon2id.

A session id is 32 random bytes given to the browser in the ``fw_session`` cookie; the table keeps only
its SHA-256, so reading the table cannot hijack a session. Each session has its own CSRF token. A new
password, a role change or disabling a user ends its sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared.auth import ROLES
from shared.auth import SessionInfo as Session

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# argon2-cffi's defaults are argon2id with RFC 9106's low-memory profile (t=3, m=64 MiB, p=4).
HASHER = PasswordHasher()
# Verified when the user does not exist, so a login takes as long for an unknown name as for a wrong password.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A refused change, with the field it is about."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


def now_ms() -> int:
    return int(time.time() * 1000)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError("username", "1 to 64 letters, digits or . _ @ -")
    return name


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise UserError("role", f"one of {', '.join(ROLES)}")
    return str(role)


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError("password", f"{MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return HASHER.hash(check_password(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _id_hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode(errors="surrogatepass")).digest()


def _user(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": row["name"],
        "role": row["role"],
        "disabled": row["disabled"],
        "created_at": row["created_at"],
        "last_login_at": row["last_login_at"],
    }


USER_COLUMNS = "name, role, disabled, created_at, last_login_at"


class Users:
    """Users and sessions over a connection pool (or a single connection, for the CLI)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection, session_ttl_s: float = 12 * 3600.0):
        self.db = db
        self.session_ttl_ms = int(session_ttl_s * 1000)

    async def list(self) -> list[dict[str, Any]]:
        return [_user(r) for r in await self.db.fetch(f"SELECT {USER_COLUMNS} FROM console_users ORDER BY name")]

    async def get(self, name: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(f"SELECT {USER_COLUMNS} FROM console_users WHERE name = $1", name)
        return None if row is None else _user(row)

    async def add(self, name: Any, password: Any, role: Any) -> dict[str, Any]:
        name, role = check_name(name), check_role(role)
        password_hash = await asyncio.to_thread(hash_password, password)
        now = now_ms()
        row = await self.db.fetchrow(
            "INSERT INTO console_users (name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) "
            f"ON CONFLICT (name) DO NOTHING RETURNING {USER_COLUMNS}",
            name,
            role,
            password_hash,
            now,
        )
        if row is None:
            raise UserError("username", f"{name!r} exists already", status=409)
        return _user(row)

    async def update(
        self, name: str, *, role: Any = None, disabled: Any = None, password: Any = None
    ) -> dict[str, Any]:
        """Change what is given; a new password, a new role or disabling ends the user's sessions."""
        sets, args = [], [name]
        if role is not None:
            args.append(check_role(role))
            sets.append(f"role = ${len(args)}")
        if disabled is not None:
            if not isinstance(disabled, bool):
                raise UserError("disabled", "true or false")
            args.append(disabled)
            sets.append(f"disabled = ${len(args)}")
        if password is not None:
            args.append(await asyncio.to_thread(hash_password, password))
            sets.append(f"password_hash = ${len(args)}")
        if not sets:
            raise UserError("body", "give role, disabled or password")
        args.append(now_ms())
        sets.append(f"updated_at = ${len(args)}")
        row = await self.db.fetchrow(
            f"UPDATE console_users SET {', '.join(sets)} WHERE name = $1 RETURNING {USER_COLUMNS}", *args
        )
        if row is None:
            raise UserError("name", f"no user {name[:64]!r}", status=404)
        await self.db.execute("DELETE FROM console_sessions WHERE username = $1", name)
        return _user(row)

    async def authenticate(self, name: Any, password: Any) -> dict[str, Any] | None:
        """The user when the password is right and the user enabled, else None (in about the same time)."""
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            await asyncio.to_thread(verify_password, None, "")
            return None
        row = await self.db.fetchrow(
            f"SELECT {USER_COLUMNS}, password_hash FROM console_users WHERE name = $1", name[:200]
        )
        # argon2 takes tens of milliseconds and 64 MiB on purpose: off the event loop, which serves live clients
        ok = await asyncio.to_thread(verify_password, row["password_hash"] if row else None, password)
        if not ok or row is None or row["disabled"]:
            return None
        if HASHER.check_needs_rehash(row["password_hash"]):
            await self.db.execute(
                "UPDATE console_users SET password_hash = $2 WHERE name = $1",
                name,
                await asyncio.to_thread(HASHER.hash, password),
            )
        return _user(row)

    async def open_session(self, name: str) -> tuple[str, str]:
        """A new session for ``name``: ``(session id for the cookie, csrf token)``."""
        session_id, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), now_ms()
        await self.db.execute(
            "INSERT INTO console_sessions (id_hash, username, csrf, created_at, last_seen_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $4, $5)",
            _id_hash(session_id),
            name,
            csrf,
            now,
            now + self.session_ttl_ms,
        )
        await self.db.execute("UPDATE console_users SET last_login_at = $2 WHERE name = $1", name, now)
        # Expired sessions go when someone logs in: no timer needed, and the table stays small.
        await self.db.execute("DELETE FROM console_sessions WHERE expires_at < $1", now)
        return session_id, csrf

    async def session(self, session_id: str) -> Session | None:
        """The live session of this id (sliding expiry), None when unknown, expired or its user disabled."""
        if not session_id or len(session_id) > 200:
            return None
        now = now_ms()
        row = await self.db.fetchrow(
            "UPDATE console_sessions s SET last_seen_at = $2, expires_at = $2 + $3 FROM console_users u "
            "WHERE s.id_hash = $1 AND s.expires_at >= $2 AND u.name = s.username AND NOT u.disabled "
            "RETURNING u.name, u.role, s.csrf",
            _id_hash(session_id),
            now,
            self.session_ttl_ms,
        )
        return None if row is None else Session(row["name"], row["role"], row["csrf"])

    async def close_session(self, session_id: str) -> None:
        await self.db.execute("DELETE FROM console_sessions WHERE id_hash = $1", _id_hash(session_id))
