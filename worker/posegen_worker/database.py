"""The worker's Postgres connection: one psycopg2 connection, opened with the options every session
gets (``posegen_common.sessions``), checked before each transaction and opened again once lost.
Plain psycopg2, not SQLAlchemy: importing SQLAlchemy alone cost each starting worker 0.15 s of CPU,
and a worker needs no pool for its one connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

from posegen_common.sessions import connect_options

# Postgres unreachable or the connection lost (statement and lock timeouts included, as the
# operator's engine counts them), as opposed to an error in the query.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Database:
    def __init__(self, url: str, *, application_name: str) -> None:
        self.url = url
        self.options = connect_options(application_name=application_name)
        self._connection: psycopg2.extensions.connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a transaction: committed when the block ends, rolled back if it raises."""
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                yield cursor
            connection.commit()
        except BaseException:
            _roll_back(connection)
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> psycopg2.extensions.connection:
        """The open connection if it still answers (a restarted server or a dropped connection is
        only noticed on use), else a new one."""
        if self._connection is not None:
            if not self._connection.closed and _answers(self._connection):
                return self._connection
            self.close()
        self._connection = psycopg2.connect(self.url, **self.options)
        return self._connection


def _answers(connection: psycopg2.extensions.connection) -> bool:
    connection.autocommit = True  # the check opens no transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except CONNECTION_ERRORS:
        return False
    finally:
        if not connection.closed:
            connection.autocommit = False
    return True


def _roll_back(connection: psycopg2.extensions.connection) -> None:
    try:
        connection.rollback()
    except CONNECTION_ERRORS:
        connection.close()  # lost: the next transaction opens a new one
