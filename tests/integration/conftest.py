"""The integration tier's shared fixtures: a database engine (the operator's side) and a worker's
database connection, for tests that drive workers directly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from posegen_common.database import create_db_engine, migrate
from posegen_worker.database import Database
from tests.harness import Cluster


@pytest.fixture(scope="module")
def engine(cluster: Cluster) -> Iterator[Engine]:
    """Rows made here have no PoseGeneration: the operator would rightly cancel them as orphans,
    so it is stopped for the module."""
    cluster.stack.stop_operator()
    migrate(cluster.stack.database_url)
    engine = create_db_engine(cluster.stack.database_url, application_name="test", pool_size=2)
    yield engine
    engine.dispose()
    cluster.stack.start_operator()


@pytest.fixture
def worker_database(engine: Engine, cluster: Cluster) -> Iterator[Database]:
    """A worker's connection as ``posegen_worker.run`` opens it (with the stack's own credentials)."""
    database = Database(cluster.stack.database_url, application_name="test-worker")
    yield database
    database.close()
