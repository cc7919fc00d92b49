"""How every Postgres session is opened, by an engine (the operator's) or a plain psycopg2
connection (the worker's): from a postgresql:// URL, with a timeout on connecting, on statements and
on locks, and TCP keepalives, so no network step can hang a process. Free of SQLAlchemy: the worker
imports it."""

from __future__ import annotations

from typing import Any

# What DATABASE_URL may start with: what psql takes.
URL_SCHEMES = ("postgresql://", "postgres://")


def connect_options(*, application_name: str, statement_timeout_ms: int = 15000) -> dict[str, Any]:
    """``psycopg2.connect`` keyword arguments (an engine's ``connect_args``)."""
    return {
        "connect_timeout": 5,
        "application_name": application_name,
        "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout=5000",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
