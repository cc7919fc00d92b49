"""Output files match the record, with real worker processes, files and Postgres: the files of pose
i are always those of the attempt whose row recorded pose i; a superseded worker never overwrites
them, two workers of one generation never crash each other, and a worker that stops between its
commit and publishing its files is repaired by the next attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
from sqlalchemy import Engine, text

from posegen_common.exit_codes import ExitCode
from posegen_worker import checkpoint
from posegen_worker.checkpoint import PoseRecorded, RecordedPose
from posegen_worker.database import Database
from posegen_worker.generators.embedded import EmbeddedGenerator
from posegen_worker.run import Worker
from posegen_worker.settings import WorkerSettings
from tests.harness import Cluster
from tests.integration.workers import (
    files_of,
    finish,
    keypoints_document,
    new_generation,
    next_attempt,
    pose_directory,
    recorded_by,
    run_worker,
    start_worker,
    wait_for_poses,
    worker_env,
)

pytestmark = pytest.mark.integration


def assert_files_match_the_record(engine: Engine, generation_id: str, directory: Path) -> None:
    recorded = recorded_by(engine, generation_id)
    for index, attempt in recorded.items():
        assert keypoints_document(directory, index)["attempt"] == attempt, f"pose {index} is not its recorder's"
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        f"pose-{index:04d}.{kind}" for index in recorded for kind in ("png", "json")
    ), "every recorded pose has its two files, and nothing else is left behind"


def test_a_zombie_never_overwrites_the_files_of_a_pose_its_successor_recorded(
    cluster: Cluster, engine: Engine, tmp_path: Path
) -> None:
    generation_id = new_generation(engine, total=4)
    next_attempt(engine, generation_id)
    zombie = start_worker(worker_env(cluster, generation_id, 1, tmp_path, POSEGEN_POSE_SECONDS="1.5"))
    try:
        wait_for_poses(engine, generation_id, 1)
        zombie.send_signal(signal.SIGSTOP)  # frozen while it generates pose 1
        next_attempt(engine, generation_id, "Hung")
        successor = run_worker(worker_env(cluster, generation_id, 2, tmp_path))
        assert successor.returncode == ExitCode.OK, successor.stdout
        directory = pose_directory(tmp_path, generation_id)
        published = files_of(directory)
    finally:
        zombie.send_signal(signal.SIGCONT)
    code, output = finish(zombie)
    assert code == ExitCode.SUPERSEDED, output
    assert files_of(directory) == published, "the zombie replaced or added files"
    assert recorded_by(engine, generation_id) == {0: 1, 1: 2, 2: 2, 3: 2}
    assert_files_match_the_record(engine, generation_id, directory)


def test_two_workers_of_one_generation_never_crash_each_other(
    cluster: Cluster, engine: Engine, worker_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The successor runs from start to end just as the zombie publishes its first pose (the
    interleaving is forced at the syscall that gives a file its final name)."""
    generation_id = new_generation(engine, total=3)
    next_attempt(engine, generation_id)
    client = redis.Redis.from_url(cluster.stack.redis_url)

    def worker(attempt: int) -> Worker:
        with monkeypatch.context() as env:
            for name, value in worker_env(cluster, generation_id, attempt, tmp_path).items():
                env.setenv(name, value)
            settings = WorkerSettings.from_env()
        return Worker(settings, worker_database, client, EmbeddedGenerator(pose_seconds=0))

    successor_codes: list[ExitCode] = []
    interleaved_once = False

    def successor_first(publish: Callable[..., Any]) -> Callable[..., Any]:
        def interleaved(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal interleaved_once
            if not interleaved_once:
                interleaved_once = True
                next_attempt(engine, generation_id, "Hung")
                successor_codes.append(worker(2).run())
            return publish(source, target, *args, **kwargs)

        return interleaved

    monkeypatch.setattr(os, "link", successor_first(os.link))
    monkeypatch.setattr(os, "replace", successor_first(os.replace))
    assert worker(1).run() == ExitCode.SUPERSEDED
    assert successor_codes == [ExitCode.OK]
    monkeypatch.undo()
    assert recorded_by(engine, generation_id) == {0: 1, 1: 2, 2: 2}
    assert_files_match_the_record(engine, generation_id, pose_directory(tmp_path, generation_id))


def test_a_worker_stopped_between_its_commit_and_its_files_is_repaired_by_the_next(
    cluster: Cluster, engine: Engine, tmp_path: Path
) -> None:
    """The first worker commits pose 1 and then cannot link its files (the directory turned
    immutable under it): the next attempt publishes the files it staged. Pose 0's files are
    removed by hand: nothing can repair those, and the next worker says so."""
    generation_id = new_generation(engine, total=3)
    next_attempt(engine, generation_id)
    env = worker_env(cluster, generation_id, 1, tmp_path, POSEGEN_POSE_SECONDS="1")
    first = start_worker(env)
    directory = pose_directory(tmp_path, generation_id)
    immutable = False
    try:
        wait_for_poses(engine, generation_id, 1)
        with engine.connect() as lock:
            # Hold the generation's row so the worker waits to commit pose 1 with its files staged.
            lock.execute(text("SELECT 1 FROM pose_generation WHERE id = :id FOR UPDATE"), {"id": generation_id})
            wait_for_lock_wait(engine, env["POSEGEN_POD_NAME"])
            subprocess.run(["chattr", "+i", str(directory)], check=True)
            immutable = True
            lock.rollback()
        code, output = finish(first)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        if first.poll() is None:
            first.kill()
    assert code == ExitCode.OUTPUT_DENIED, output  # EPERM: the directory is immutable
    assert recorded_by(engine, generation_id) == {0: 1, 1: 1}
    assert not (directory / "pose-0001.png").exists()
    staged = (directory / ".pose-0001.a1.png.tmp").stat().st_ino
    for kind in ("png", "json"):
        (directory / f"pose-0000.{kind}").unlink()
    next_attempt(engine, generation_id, "Crashed")
    successor = run_worker(worker_env(cluster, generation_id, 2, tmp_path))
    assert successor.returncode == ExitCode.OK, successor.stdout
    assert (directory / "pose-0001.png").stat().st_ino == staged, "pose 1's files are the ones attempt 1 staged"
    assert "repaired pose 1" in successor.stdout
    assert "cannot be repaired" in successor.stdout and "[0]" in successor.stdout
    assert recorded_by(engine, generation_id) == {0: 1, 1: 1, 2: 2}
    assert keypoints_document(directory, 1)["attempt"] == 1
    assert keypoints_document(directory, 2)["attempt"] == 2
    assert sorted(path.name for path in directory.iterdir()) == [
        "pose-0001.json",
        "pose-0001.png",
        "pose-0002.json",
        "pose-0002.png",
    ]


def test_a_pose_whose_commit_reply_was_lost_keeps_its_files_when_the_retry_finds_a_successor(
    cluster: Cluster, engine: Engine, worker_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pose 0's transaction commits but the reply never arrives (the connection drops); before the
    worker's retry the operator starts attempt 2. The retry is refused (superseded), yet pose 0's
    row is attempt 1's: its files must be published, not thrown away."""
    generation_id = new_generation(engine, total=3)
    next_attempt(engine, generation_id)
    record_pose = checkpoint.record_pose
    lost_replies: list[int] = []

    def reply_lost(
        cursor: psycopg2.extensions.cursor, generation: str, attempt: int, recorded: RecordedPose
    ) -> PoseRecorded:
        if lost_replies:
            return record_pose(cursor, generation, attempt, recorded)
        lost_replies.append(recorded.index)
        committed = Database(cluster.stack.database_url, application_name="test-committed")
        try:
            with committed.transaction() as other:
                record_pose(other, generation, attempt, recorded)
        finally:
            committed.close()
        next_attempt(engine, generation_id, "Hung")
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(checkpoint, "record_pose", reply_lost)
    with monkeypatch.context() as env:
        for name, value in worker_env(cluster, generation_id, 1, tmp_path).items():
            env.setenv(name, value)
        settings = WorkerSettings.from_env()
    worker = Worker(
        settings, worker_database, redis.Redis.from_url(cluster.stack.redis_url), EmbeddedGenerator(pose_seconds=0)
    )
    assert worker.run() == ExitCode.SUPERSEDED
    assert lost_replies == [0]
    assert recorded_by(engine, generation_id) == {0: 1}
    assert_files_match_the_record(engine, generation_id, pose_directory(tmp_path, generation_id))


def wait_for_lock_wait(engine: Engine, pod_name: str, timeout: float = 30) -> None:
    query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND wait_event_type = 'Lock'")
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if conn.execute(query, {"name": f"posegen-worker-{pod_name}"}).scalar_one():
                return
        assert time.monotonic() < deadline, f"{pod_name} never waited for the row lock"
        time.sleep(0.05)
