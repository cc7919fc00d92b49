"""Credentials minted for one worker attempt: a Postgres login role confined by row-level security
to its generation's checkpoint (migration 0004), and a Redis ACL user that may only set its own
heartbeat key. Minting an attempt's credentials drops the generation's earlier ones, so a
superseded worker loses its access along with its fencing token; revoking drops them all.

The operator mints with its own connections; the worker only ever sees its own URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from posegen_common import keys

SCRAM_ITERATIONS = 4096
# The commands a worker sends: its heartbeat SET, and what redis-py says on connecting (a refused
# CLIENT SETINFO is ignored by redis-py).
REDIS_COMMANDS = ("+set", "+ping", "+hello", "+auth", "+client|setname")


@dataclass(frozen=True)
class WorkerCredentials:
    database_url: str
    redis_url: str


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (RFC 5802/7677): the server can
    check a login with it but nobody can log in with it."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def redis_user(generation_id: str, attempt: int) -> str:
    return f"{redis_user_prefix(generation_id)}{attempt}"


def redis_user_prefix(generation_id: str) -> str:
    return f"pgw_{hashlib.md5(generation_id.encode()).hexdigest()[:20]}_"


def attempt_password(key: bytes, generation_id: str, attempt: int) -> str:
    """The attempt's password, derived from the operator's key: minting the same attempt again (a
    retried pod create, a Redis that lost its ACL users) gives the running worker's password back."""
    digest = hmac.new(key, f"{generation_id}:{attempt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mint(
    conn: Connection,
    client: redis.Redis,
    database_url: str,
    redis_url: str,
    generation_id: str,
    attempt: int,
    *,
    key: bytes,
) -> WorkerCredentials:
    """Credentials for ``attempt`` (the Postgres role is committed with the caller's transaction;
    the Redis user exists at once). Earlier attempts' credentials stop working."""
    password = attempt_password(key, generation_id, attempt)
    role = conn.execute(
        text("SELECT posegen_mint_worker(:generation, :attempt, :verifier)"),
        {"generation": generation_id, "attempt": attempt, "verifier": scram_verifier(password)},
    ).scalar_one()
    _revoke_redis(client, generation_id)
    user = redis_user(generation_id, attempt)
    # Redis is given the password's SHA-256 only, as Postgres its SCRAM verifier.
    client.acl_setuser(
        user,
        enabled=True,
        reset=True,
        hashed_passwords=[f"+{hashlib.sha256(password.encode()).hexdigest()}"],
        categories=["-@all"],
        commands=list(REDIS_COMMANDS),
        keys=[keys.heartbeat(generation_id, attempt)],
    )
    database = make_url(database_url).set(username=role, password=password)
    return WorkerCredentials(
        database_url=database.render_as_string(hide_password=False),
        redis_url=_with_user(redis_url, user, password),
    )


def revoke(conn: Connection, client: redis.Redis, generation_id: str) -> None:
    """Drop every credential of the generation (it is finished, cancelled or deleted)."""
    conn.execute(text("SELECT posegen_revoke_worker(:generation)"), {"generation": generation_id})
    _revoke_redis(client, generation_id)


def _revoke_redis(client: redis.Redis, generation_id: str) -> None:
    prefix = redis_user_prefix(generation_id)
    users = [u.decode() if isinstance(u, bytes) else str(u) for u in cast(list[object], client.acl_users())]
    stale = [user for user in users if user.startswith(prefix)]
    if stale:
        client.acl_deluser(*stale)


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
