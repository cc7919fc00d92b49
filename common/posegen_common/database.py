"""Engines with timeouts on every network step, and migrations run under an advisory lock so two
operator replicas starting together cannot race."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from posegen_common.secret_files import secret_value
from posegen_common.sessions import URL_SCHEMES, connect_options

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x706F736567656E  # "posegen"


def sqlalchemy_url(url: str) -> str:
    """DATABASE_URL stays what psql takes; SQLAlchemy is told to use psycopg2."""
    for scheme in URL_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def create_db_engine(
    url: str, *, application_name: str, pool_size: int = 5, statement_timeout_ms: int = 15000
) -> Engine:
    return create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args=connect_options(application_name=application_name, statement_timeout_ms=statement_timeout_ms),
    )


class MigrationError(RuntimeError):
    """The schema could not be brought to head."""


def alembic_config(url: str) -> Config:
    # Alembic weighs ~11 MiB once imported: only a process that migrates loads it (not the workers).
    from alembic.config import Config  # noqa: PLC0415

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the schema to head; safe to run from several processes at once."""
    from alembic import command  # noqa: PLC0415 - see alembic_config

    engine = create_db_engine(url, application_name="posegen-migrate", pool_size=1, statement_timeout_ms=120000)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            try:
                config = alembic_config(url)
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                conn.commit()
    finally:
        engine.dispose()


def migrate_in_child(url: str, timeout: float = 300) -> None:
    """``migrate`` in a child process (the operator's start-up): what migrating loads and allocates
    is given back when it exits, instead of staying in a long-lived process's memory."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "posegen_common.database"],
            env={**os.environ, "DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise MigrationError(f"migrations did not finish within {timeout:.0f}s") from error
    if result.returncode != 0:
        raise MigrationError(f"migrations failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def is_connection_error(error: BaseException) -> bool:
    """Postgres unreachable or the connection lost (as opposed to an error in the query)."""
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)


def main() -> None:
    """``python -m posegen_common.database``: run the migrations (the chart's migration Job)."""
    url = secret_value(os.environ, "DATABASE_URL")
    if url is None:
        sys.exit("DATABASE_URL (or DATABASE_URL_FILE, a file holding it) must be set")
    migrate(url)
    print("database schema is up to date")


if __name__ == "__main__":
    main()
