"""Fencing and exactly-once, against the real Postgres: a superseded worker writes nothing; and the
operator's incremental row reads miss no write."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine

from posegen_common import checkpoint
from posegen_common.checkpoint import GenerationSpec, RecordedPose, Superseded
from posegen_common.database import create_db_engine, migrate
from posegen_common.exit_codes import ExitCode
from posegen_common.schema import Base
from posegen_operator.observe import RowCache
from tests.harness import SEED_DUPLICATE_QUERY, Cluster, sql

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(cluster: Cluster) -> Iterator[Engine]:
    """Rows made here have no PoseGeneration: the operator would rightly cancel them as orphans,
    so it is stopped for this module."""
    cluster.stack.stop_operator()
    migrate(cluster.stack.database_url)
    engine = create_db_engine(cluster.stack.database_url, application_name="test", pool_size=2)
    yield engine
    engine.dispose()
    cluster.stack.start_operator()


def new_generation(engine: Engine, total: int = 5, generation_id: str | None = None) -> str:
    generation_id = generation_id or str(uuid.uuid4())
    spec = GenerationSpec(
        id=generation_id,
        namespace="fencing",
        name=f"g-{generation_id[:6]}",
        project_id="p",
        generation_type="TEXT_DESCRIPTION",
        text_prompt="a person waving",
        pose_library_ids=None,
        seed=7,
        total_expected_poses=total,
    )
    with engine.begin() as conn:
        checkpoint.register(conn, spec)
    return generation_id


def pose(index: int) -> RecordedPose:
    return RecordedPose(
        index=index,
        pose_library_id=f"text:{index:04d}",
        image_path=f"/tmp/p{index}.png",
        keypoints=[],
        base_pose="waving",
    )


def test_only_the_current_attempt_records_and_a_pose_counts_once(engine: Engine) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 0, None) == 1
        assert checkpoint.record_pose(conn, generation_id, 1, pose(0)).poses_completed == 1
        # The same pose again (a worker that crashed after its commit redoes it): counted once.
        assert checkpoint.record_pose(conn, generation_id, 1, pose(0)).poses_completed == 1
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 1, "Hung") == 2
        # A second claim from the same observation loses: never two new attempts.
        assert checkpoint.begin_attempt(conn, generation_id, 1, "Hung") is None
    with pytest.raises(Superseded), engine.begin() as conn:
        checkpoint.record_pose(conn, generation_id, 1, pose(1))  # the zombie
    with engine.begin() as conn:
        assert checkpoint.record_pose(conn, generation_id, 2, pose(1)).poses_completed == 2
        state = checkpoint.fetch_states(conn, [generation_id])[generation_id]
        rows = conn.exec_driver_sql(
            "SELECT pose_index, attempt FROM generated_pose WHERE generation_id = %s ORDER BY 1", (generation_id,)
        ).all()
    assert (state.attempt, state.poses_completed, state.recoveries, state.last_recovery_reason) == (2, 2, 1, "Hung")
    assert [tuple(r) for r in rows] == [(0, 1), (1, 2)]


def test_the_last_pose_completes_the_generation_and_nothing_is_written_after(engine: Engine) -> None:
    generation_id = new_generation(engine, total=2)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
        checkpoint.record_pose(conn, generation_id, 1, pose(0))
        checkpoint.record_pose(conn, generation_id, 1, pose(1))
        assert checkpoint.fetch_states(conn, [generation_id])[generation_id].status == "completed"
    with pytest.raises(Superseded), engine.begin() as conn:
        checkpoint.record_pose(conn, generation_id, 1, pose(2))
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 1, "Crashed") is None, "a final row is never reopened"


def test_a_superseded_worker_process_exits_3_and_writes_nothing(
    cluster: Cluster, engine: Engine, tmp_path: object
) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
        checkpoint.begin_attempt(conn, generation_id, 1, "Crashed")
    env = {
        **os.environ,
        "DATABASE_URL": cluster.stack.database_url,
        "REDIS_URL": cluster.stack.redis_url,
        "POSEGEN_GENERATION_ID": generation_id,
        "POSEGEN_ATTEMPT": "1",
        "POSEGEN_OUTPUT_DIR": str(tmp_path),
        "POSEGEN_POSE_SECONDS": "0",
    }
    zombie = subprocess.run(
        [sys.executable, "-m", "posegen_worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert zombie.returncode == ExitCode.SUPERSEDED, zombie.stdout + zombie.stderr
    assert "not starting" in zombie.stdout
    assert sql(cluster, "SELECT count(*) FROM generated_pose WHERE generation_id = %s", generation_id) == [(0,)]
    current = subprocess.run(
        [sys.executable, "-m", "posegen_worker"],
        env={**env, "POSEGEN_ATTEMPT": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert current.returncode == ExitCode.OK, current.stdout + current.stderr
    assert sql(cluster, "SELECT status, poses_completed FROM pose_generation WHERE id = %s", generation_id) == [
        ("completed", 5)
    ]
    assert sql(cluster, SEED_DUPLICATE_QUERY) == []


def test_worker_settings_errors_exit_2_with_the_variable_named(cluster: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "posegen_worker"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == ExitCode.SETTINGS
    assert "must be set" in result.stderr


def test_a_pass_reads_every_row_written_since_its_last_read_even_one_committed_late(engine: Engine) -> None:
    rows = RowCache()
    seen, late, unborn = new_generation(engine), new_generation(engine), str(uuid.uuid4())

    def read(conn: Connection) -> dict[str, checkpoint.GenerationState]:
        return rows.read(conn, [seen, late, unborn], checkpoint.read_mark(conn), refresh=False)

    with engine.connect() as conn:
        assert sorted(read(conn)) == sorted([seen, late])
    # A transaction that began before the next read and commits after it must not be missed.
    with engine.connect() as slow:
        slow.begin()
        checkpoint.begin_attempt(slow, late, 0, None)
        with engine.connect() as conn:
            assert read(conn)[late].attempt == 0
        slow.commit()
    with engine.begin() as conn:  # a hand-written UPDATE, as a runbook might do: stamped by the trigger
        conn.exec_driver_sql("UPDATE pose_generation SET error_message = 'by hand' WHERE id = %s", (seen,))
    new_generation(engine, generation_id=unborn)
    with engine.connect() as conn:
        current = read(conn)
        assert current[late].attempt == 1 and current[late].status == "processing"
        assert current[seen].error_message == "by hand"
        assert current[unborn].status == "queued"
        mark = checkpoint.read_mark(conn)
    with engine.connect() as conn:
        assert not {seen, late, unborn} & set(checkpoint.fetch_changed(conn, mark.xmin)), "nothing written since"


def test_the_migrations_build_the_schema_the_models_describe(engine: Engine) -> None:
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
