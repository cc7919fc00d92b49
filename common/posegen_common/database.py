"""Engines with timeouts on every network step, and migrations run under an advisory lock so two
operator replicas starting together cannot race."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x706F736567656E  # "posegen"


def sqlalchemy_url(url: str) -> str:
    """DATABASE_URL stays what psql takes; SQLAlchemy is told to use psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
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
        connect_args={
            "connect_timeout": 5,
            "application_name": application_name,
            "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout=5000",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    )


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the schema to head; safe to run from several processes at once."""
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


def main() -> None:
    """``python -m posegen_common.database``: run the migrations (the chart's migration Job)."""
    import os  # noqa: PLC0415 - only the command line needs it

    migrate(os.environ["DATABASE_URL"])
    print("database schema is up to date")


if __name__ == "__main__":
    main()
