"""Worker credentials minted per attempt, against the real Postgres and Redis: the worker completes
its own generation with them and can do nothing else (no DDL, no DELETE, no other generation, no
Redis administration), and a superseded attempt's credentials stop working."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis
from sqlalchemy import Engine

from posegen_common import checkpoint, keys
from posegen_common.contract import GenerationSpec
from posegen_common.database import create_db_engine, migrate
from posegen_common.worker_credentials import WorkerCredentials, mint, revoke, scram_verifier
from posegen_worker.checkpoint import RecordedPose, load_checkpoint, record_pose
from posegen_worker.database import Database
from tests.harness import Cluster, sql

pytestmark = pytest.mark.integration
KEY = b"the operator's worker-credential key"


@pytest.fixture(scope="module")
def engine(cluster: Cluster) -> Iterator[Engine]:
    """The operator's connection. Rows made here have no PoseGeneration: the operator would rightly
    cancel them as orphans, so it is stopped for this module."""
    cluster.stack.stop_operator()
    migrate(cluster.stack.database_url)
    engine = create_db_engine(cluster.stack.database_url, application_name="test", pool_size=2)
    yield engine
    engine.dispose()
    cluster.stack.start_operator()


@pytest.fixture(scope="module")
def admin_redis(cluster: Cluster) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(cluster.stack.redis_url)
    yield client
    client.close()


def started_generation(engine: Engine, total: int = 5) -> str:
    generation_id = str(uuid.uuid4())
    spec = GenerationSpec(generation_id, "tenant", f"g-{generation_id[:6]}", "p", "TEXT_DESCRIPTION", "a person waving",
                          None, 7, total)  # fmt: skip
    with engine.begin() as conn:
        checkpoint.register(conn, spec)
        assert checkpoint.begin_attempt(conn, generation_id, 0, None) == 1
    return generation_id


def minted(
    engine: Engine, admin_redis: redis.Redis, cluster: Cluster, generation_id: str, attempt: int
) -> WorkerCredentials:
    with engine.begin() as conn:
        return mint(
            conn, admin_redis, cluster.stack.database_url, cluster.stack.redis_url, generation_id, attempt, key=KEY
        )


def pose(index: int) -> RecordedPose:
    return RecordedPose(index, f"text:{index:04d}", f"/tmp/p{index}.png", [], "waving")


def refused(database_url: str, statement: str) -> str:
    """The error Postgres answers ``statement`` with, run with the given credentials."""
    try:
        conn = psycopg2.connect(database_url, connect_timeout=5)
    except psycopg2.OperationalError as error:
        return f"cannot connect: {error}"
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
            return f"accepted ({cur.rowcount} rows)"
    except psycopg2.Error as error:
        return str(error.pgerror or error)
    finally:
        conn.close()


def test_the_worker_completes_its_own_generation_with_its_minted_credentials(
    cluster: Cluster, engine: Engine, admin_redis: redis.Redis, tmp_path: Path
) -> None:
    generation_id = started_generation(engine, total=6)
    credentials = minted(engine, admin_redis, cluster, generation_id, 1)
    assert cluster.stack.database_url not in credentials.database_url
    environment = {
        **os.environ,
        "DATABASE_URL": credentials.database_url,
        "REDIS_URL": credentials.redis_url,
        "POSEGEN_GENERATION_ID": generation_id,
        "POSEGEN_ATTEMPT": "1",
        "POSEGEN_OUTPUT_DIR": str(tmp_path),
        "POSEGEN_POSE_SECONDS": "0.01",
        "POSEGEN_HEARTBEAT_TTL_SECONDS": "4",
        "POSEGEN_HEARTBEAT_INTERVAL_SECONDS": "0.5",
    }
    worker = subprocess.run(
        [sys.executable, "-m", "posegen_worker"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert sql(cluster, "SELECT status, poses_completed FROM pose_generation WHERE id = %s", generation_id) == [
        ("completed", 6)
    ]
    assert sql(cluster, "SELECT count(*) FROM generated_pose WHERE generation_id = %s", generation_id) == [(6,)]


def test_a_workers_database_role_touches_nothing_but_its_own_checkpoint(
    cluster: Cluster, engine: Engine, admin_redis: redis.Redis
) -> None:
    other = started_generation(engine)
    stack_credentials = Database(cluster.stack.database_url, application_name="test-worker")
    try:
        with stack_credentials.transaction() as cursor:
            record_pose(cursor, other, 1, pose(0))
    finally:
        stack_credentials.close()
    own = started_generation(engine)
    url = minted(engine, admin_redis, cluster, own, 1).database_url

    assert "permission denied for schema public" in refused(url, "CREATE TABLE stolen (x int)")
    assert "must be owner of table generated_pose" in refused(url, "DROP TABLE generated_pose")
    assert "permission denied for table generated_pose" in refused(url, "DELETE FROM generated_pose")
    assert "permission denied for table generated_pose" in refused(url, "TRUNCATE generated_pose")
    assert "permission denied for table pose_generation" in refused(url, "UPDATE pose_generation SET seed = 1")
    assert "permission denied for table pose_generation" in refused(
        url, "INSERT INTO pose_generation (id) VALUES ('x')"
    )
    # Another generation is invisible: nothing to read, nothing to update, no pose to slip in.
    assert refused(url, f"SELECT 1 FROM pose_generation WHERE id = '{other}'") == "accepted (0 rows)"
    assert refused(url, f"SELECT 1 FROM generated_pose WHERE generation_id = '{other}'") == "accepted (0 rows)"
    assert refused(url, f"UPDATE pose_generation SET status = 'completed' WHERE id = '{other}'") == "accepted (0 rows)"
    assert "row-level security" in refused(
        url,
        "INSERT INTO generated_pose (generation_id, pose_index, pose_library_id, attempt, image_path, keypoints,"
        f" base_pose) VALUES ('{other}', 9, 'text:0009', 1, '/x', '[]', 'waving')",
    )
    assert "permission denied for table worker_credential" in refused(url, "SELECT * FROM worker_credential")
    assert "permission denied for function posegen_mint_worker" in refused(
        url, f"SELECT posegen_mint_worker('{other}', 1, '{scram_verifier('x')}')"
    )
    # Its own checkpoint, through the fenced path, works.
    worker = Database(url, application_name="worker")
    try:
        with worker.transaction() as cursor:
            assert load_checkpoint(cursor, own, 1).recorded == {}
            assert record_pose(cursor, own, 1, pose(0)).poses_completed == 1
        with worker.transaction() as cursor:
            assert load_checkpoint(cursor, own, 1).recorded == {0: 1}
            assert record_pose(cursor, own, 1, pose(0)).ours, "its own pose recorded again is still its own"
    finally:
        worker.close()
    assert sql(cluster, "SELECT poses_completed FROM pose_generation WHERE id = %s", other) == [(1,)]


def test_a_superseded_attempt_loses_its_credentials(cluster: Cluster, engine: Engine, admin_redis: redis.Redis) -> None:
    generation_id = started_generation(engine)
    first = minted(engine, admin_redis, cluster, generation_id, 1)
    zombie = Database(first.database_url, application_name="zombie")
    try:
        with zombie.transaction() as cursor:  # connected before the recovery: the session outlives its role
            record_pose(cursor, generation_id, 1, pose(0))
        with engine.begin() as conn:
            assert checkpoint.begin_attempt(conn, generation_id, 1, "Hung") == 2
        minted(engine, admin_redis, cluster, generation_id, 2)
        # Its role is gone: even its open session may no longer touch the tables.
        with pytest.raises(psycopg2.ProgrammingError, match="permission denied"), zombie.transaction() as cursor:
            record_pose(cursor, generation_id, 1, pose(1))
    finally:
        zombie.close()
    second = minted(engine, admin_redis, cluster, generation_id, 2)
    # The database itself fences: even the current credentials cannot write for an earlier attempt.
    assert "row-level security" in refused(
        second.database_url,
        "INSERT INTO generated_pose (generation_id, pose_index, pose_library_id, attempt, image_path, keypoints,"
        f" base_pose) VALUES ('{generation_id}', 1, 'text:0001', 1, '/x', '[]', 'waving')",
    )
    assert sql(cluster, "SELECT pose_index FROM generated_pose WHERE generation_id = %s", generation_id) == [(0,)]
    # The first attempt's role no longer exists (the local stack trusts loopback logins, so that is
    # what refuses it here; with password authentication the password is refused too).
    assert refused(first.database_url, "SELECT 1").startswith("cannot connect")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(first.redis_url).ping()
    with engine.begin() as conn:
        revoke(conn, admin_redis, generation_id)
    roles = "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, 'pgw_' || left(md5(%s), 20) || '_')"
    assert sql(cluster, roles, generation_id) == [(0,)]
    assert sql(cluster, "SELECT count(*) FROM worker_credential WHERE generation_id = %s", generation_id) == [(0,)]


def test_a_workers_redis_user_sets_only_its_heartbeat(
    cluster: Cluster, engine: Engine, admin_redis: redis.Redis
) -> None:
    generation_id = started_generation(engine)
    client = redis.Redis.from_url(minted(engine, admin_redis, cluster, generation_id, 1).redis_url)
    try:
        assert client.set(keys.heartbeat(generation_id, 1), "alive", px=4000)
        for command in (
            ("SET", keys.heartbeat(generation_id, 2), "x"),  # its successor's
            ("SET", keys.heartbeat(str(uuid.uuid4()), 1), "x"),  # another generation's
            ("DEL", keys.SENTINEL),
            ("KEYS", "*"),
            ("CONFIG", "SET", "dir", "/tmp"),
            ("FLUSHALL",),
            ("ACL", "LIST"),
            ("EVAL", "return 1", "0"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def test_minting_an_attempt_again_keeps_its_worker_connected(
    cluster: Cluster, engine: Engine, admin_redis: redis.Redis
) -> None:
    """A retried pod create, or Redis restarted without its ACL users, mints the same attempt again:
    the worker already running with it must keep working."""
    generation_id = started_generation(engine)
    first = minted(engine, admin_redis, cluster, generation_id, 1)
    assert minted(engine, admin_redis, cluster, generation_id, 1) == first
    assert refused(first.database_url, f"SELECT 1 FROM pose_generation WHERE id = '{generation_id}'") == (
        "accepted (1 rows)"
    )
    client = redis.Redis.from_url(first.redis_url)
    try:
        assert client.set(keys.heartbeat(generation_id, 1), "alive", px=4000)
    finally:
        client.close()
