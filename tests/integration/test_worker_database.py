"""The worker's one Postgres connection, against the real server: reused while it answers, opened
again once lost without a failed transaction, and still usable after a query error."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import Engine, text

from posegen_worker.database import Database

pytestmark = pytest.mark.integration


def backend_pid(database: Database) -> int:
    with database.transaction() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_a_connection_cut_between_transactions_is_opened_again_unseen(
    engine: Engine, worker_database: Database
) -> None:
    first = backend_pid(worker_database)
    assert backend_pid(worker_database) == first, "one connection, reused"
    with engine.begin() as conn:  # an idle timeout, a proxy, an administrator: the session is gone
        assert conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": first}).scalar_one()
    assert backend_pid(worker_database) != first


def test_a_query_error_is_raised_and_rolled_back_and_the_connection_stays(worker_database: Database) -> None:
    first = backend_pid(worker_database)
    with pytest.raises(psycopg2.errors.UndefinedTable), worker_database.transaction() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert backend_pid(worker_database) == first  # not left in the failed transaction: rolled back
    with pytest.raises(psycopg2.errors.QueryCanceled), worker_database.transaction() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == ("15s",), "the options every session gets"
        cursor.execute("SET LOCAL statement_timeout = 10")
        cursor.execute("SELECT pg_sleep(1)")
