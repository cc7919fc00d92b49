"""Fencing and exactly-once, against the real Postgres: a superseded worker writes nothing; and the
operator's incremental row reads miss no write."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine

from posegen_common import checkpoint, keys
from posegen_common.contract import GenerationSpec, GenerationStatus, Superseded
from posegen_common.exit_codes import ExitCode
from posegen_common.schema import metadata
from posegen_operator.observe import RowCache
from posegen_worker.checkpoint import RecordedPose, load_checkpoint, record_pose
from posegen_worker.database import Database
from tests.harness import SEED_DUPLICATE_QUERY, Cluster, sql
from tests.integration.workers import finish, new_generation, next_attempt, start_worker, worker_env

pytestmark = pytest.mark.integration


def pose(index: int) -> RecordedPose:
    return RecordedPose(
        index=index,
        pose_library_id=f"text:{index:04d}",
        image_path=f"/tmp/p{index}.png",
        keypoints=[],
        base_pose="waving",
    )


def test_only_the_current_attempt_records_and_a_pose_counts_once(engine: Engine, worker_database: Database) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 0, None) == 1
    with worker_database.transaction() as cursor:
        first = record_pose(cursor, generation_id, 1, pose(0))
        # The same pose again (its commit's reply was lost, or a redo): counted once, still this attempt's.
        again = record_pose(cursor, generation_id, 1, pose(0))
        assert (first.poses_completed, first.ours, again.poses_completed, again.ours) == (1, True, 1, True)
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 1, "Hung") == 2
        # A second claim from the same observation loses: never two new attempts.
        assert checkpoint.begin_attempt(conn, generation_id, 1, "Hung") is None
    with pytest.raises(Superseded), worker_database.transaction() as cursor:
        record_pose(cursor, generation_id, 1, pose(1))  # the zombie
    with worker_database.transaction() as cursor:
        assert record_pose(cursor, generation_id, 2, pose(1)).poses_completed == 2
        # A pose an earlier attempt recorded is not the successor's: it must not publish files for it.
        assert not record_pose(cursor, generation_id, 2, pose(0)).ours
    with engine.begin() as conn:
        state = checkpoint.fetch_states(conn, [generation_id])[generation_id]
        rows = conn.exec_driver_sql(
            "SELECT pose_index, attempt FROM generated_pose WHERE generation_id = %s ORDER BY 1", (generation_id,)
        ).all()
    assert (state.attempt, state.poses_completed, state.recoveries, state.last_recovery_reason) == (2, 2, 1, "Hung")
    assert [tuple(r) for r in rows] == [(0, 1), (1, 2)]


def test_orphans_are_looked_for_only_in_the_namespaces_served(engine: Engine) -> None:
    ours = new_generation(engine, namespace=f"ours-{uuid.uuid4().hex[:6]}")
    theirs = new_generation(engine, namespace=f"theirs-{uuid.uuid4().hex[:6]}")
    ours_namespace = checkpoint_namespace(engine, ours)

    with engine.begin() as conn:
        found = checkpoint.fetch_unfinished_ids(conn, [ours_namespace])
        everywhere = checkpoint.fetch_unfinished_ids(conn)

    assert ours in found and theirs not in found
    assert {ours, theirs} <= everywhere


def checkpoint_namespace(engine: Engine, generation_id: str) -> str:
    with engine.begin() as conn:
        return str(
            conn.exec_driver_sql("SELECT namespace FROM pose_generation WHERE id = %s", (generation_id,)).scalar()
        )


def test_suspended_time_is_kept_apart_for_the_deadline(engine: Engine) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
        checkpoint.set_status(conn, generation_id, GenerationStatus.SUSPENDED)
        # Suspended an hour ago (as if overnight), then resumed now.
        conn.exec_driver_sql(
            "UPDATE pose_generation SET suspended_at = now() - interval '1 hour' WHERE id = %s", (generation_id,)
        )
        checkpoint.set_status(conn, generation_id, GenerationStatus.SUSPENDED)  # suspending again keeps the start
    with engine.begin() as conn:
        assert checkpoint.begin_attempt(conn, generation_id, 1, None) == 2
        state = checkpoint.fetch_states(conn, [generation_id])[generation_id]
    assert state.suspended_seconds == pytest.approx(3600, abs=5)


def test_a_refused_pod_is_recorded_for_its_attempt_only_until_the_pod_exists(engine: Engine) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, "Crashed")
        checkpoint.pod_refused(conn, generation_id, 1, "403 Forbidden: exceeded quota")
        checkpoint.pod_refused(conn, generation_id, 1, "403 Forbidden: exceeded quota")
        checkpoint.pod_refused(conn, generation_id, 2, "a later attempt's refusal is not this one's")
        refused = checkpoint.fetch_states(conn, [generation_id])[generation_id]
        checkpoint.pod_created(conn, generation_id, 1)
        checkpoint.pod_refused(conn, generation_id, 1, "too late: the pod exists")
        created = checkpoint.fetch_states(conn, [generation_id])[generation_id]
    assert (refused.pod_refusals, refused.last_pod_error, refused.recoveries) == (2, "403 Forbidden: exceeded quota", 1)
    assert created.worker_pod_created_at is not None and created.last_pod_error is None
    assert created.pod_refusals == 2


def test_a_transient_retry_spends_no_recovery(engine: Engine) -> None:
    generation_id = new_generation(engine)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
        checkpoint.begin_attempt(conn, generation_id, 1, "DependencyUnavailable", budgeted=False)
        state = checkpoint.fetch_states(conn, [generation_id])[generation_id]
    assert (state.attempt, state.recoveries, state.transient_retries) == (2, 0, 1)
    assert state.last_recovery_reason == "DependencyUnavailable"


def test_a_worker_resumes_from_the_spec_the_operator_registered_and_the_poses_recorded(
    engine: Engine, worker_database: Database
) -> None:
    generation_id = str(uuid.uuid4())
    spec = GenerationSpec(generation_id, "gallery", f"g-{generation_id[:6]}", "p", "GALLERY_REFERENCE", None,
                          ["lib-a", "lib-b"], 2**40 + 7, 4)  # fmt: skip
    with engine.begin() as conn:
        checkpoint.register(conn, spec)
        checkpoint.begin_attempt(conn, generation_id, 0, None)
    with (
        pytest.raises(Superseded, match="at attempt 1 \\(processing\\), not 2"),
        worker_database.transaction() as cursor,
    ):
        load_checkpoint(cursor, generation_id, 2)
    with worker_database.transaction() as cursor:
        record_pose(cursor, generation_id, 1, pose(2))
    next_attempt(engine, generation_id, "Crashed")
    with worker_database.transaction() as cursor:
        resumed = load_checkpoint(cursor, generation_id, 2)
    assert (resumed.spec, resumed.attempt, resumed.recorded) == (spec, 2, {2: 1})
    with engine.begin() as conn:
        assert checkpoint.fetch_states(conn, [generation_id])[generation_id].worker_started_at is not None
    with pytest.raises(Superseded, match="does not exist"), worker_database.transaction() as cursor:
        load_checkpoint(cursor, str(uuid.uuid4()), 1)


def test_the_pose_in_flight_when_suspended_counts_and_stops_the_worker(
    engine: Engine, worker_database: Database
) -> None:
    generation_id = new_generation(engine, total=3)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
        checkpoint.set_status(conn, generation_id, GenerationStatus.SUSPENDED)
    with worker_database.transaction() as cursor:
        recorded = record_pose(cursor, generation_id, 1, pose(0))
    assert (recorded.poses_completed, recorded.keep_going, recorded.ours) == (1, False, True)
    with engine.begin() as conn:
        state = checkpoint.fetch_states(conn, [generation_id])[generation_id]
    assert (state.status, state.poses_completed) == ("suspended", 1)
    with pytest.raises(Superseded), worker_database.transaction() as cursor:
        load_checkpoint(cursor, generation_id, 1)  # a suspended generation starts no worker


def test_the_last_pose_completes_the_generation_and_nothing_is_written_after(
    engine: Engine, worker_database: Database
) -> None:
    generation_id = new_generation(engine, total=2)
    with engine.begin() as conn:
        checkpoint.begin_attempt(conn, generation_id, 0, None)
    with worker_database.transaction() as cursor:
        assert record_pose(cursor, generation_id, 1, pose(0)).keep_going
        assert not record_pose(cursor, generation_id, 1, pose(1)).keep_going
    with engine.begin() as conn:
        assert checkpoint.fetch_states(conn, [generation_id])[generation_id].status == "completed"
    with pytest.raises(Superseded), worker_database.transaction() as cursor:
        record_pose(cursor, generation_id, 1, pose(2))
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


def test_a_zombie_heartbeat_never_stands_for_its_successor(cluster: Cluster, engine: Engine, tmp_path: Path) -> None:
    """Heartbeats are per attempt: a superseded worker still beating cannot make its successor
    (here one that never started) look alive."""
    generation_id = new_generation(engine, total=2)
    next_attempt(engine, generation_id)
    client = redis.Redis.from_url(cluster.stack.redis_url)
    zombie = start_worker(worker_env(cluster, generation_id, 1, tmp_path, POSEGEN_POSE_SECONDS="3"))
    try:
        mine, successors = keys.heartbeat(generation_id, 1), keys.heartbeat(generation_id, 2)
        deadline = time.monotonic() + 30
        while not client.exists(mine):
            assert time.monotonic() < deadline, "the worker never beat"
            time.sleep(0.05)
        next_attempt(engine, generation_id, "Hung")
        beat_before = client.get(mine)
        while client.get(mine) == beat_before:  # a renewal after the successor's attempt began
            assert time.monotonic() < deadline and zombie.poll() is None, "the zombie stopped beating"
            time.sleep(0.05)
        assert not client.exists(successors)
    finally:
        code, output = finish(zombie)
    assert code == ExitCode.SUPERSEDED, output
    assert not client.exists(successors)


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
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
