"""Outages are not the generation's fault: with the real Postgres and Redis stopped for longer than
the worker's former retry bound, running and starting workers keep their place and complete once
the services return; a worker whose bound runs out first exits DEPENDENCY_UNAVAILABLE; and a frozen
Redis does not slow the pose loop down."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from posegen_common.exit_codes import ExitCode
from posegen_devstack.processes import stop
from tests.harness import SEED_DUPLICATE_QUERY, Cluster, sql
from tests.integration.workers import (
    finish,
    new_generation,
    next_attempt,
    poses_completed,
    recorded_by,
    start_worker,
    wait_for_poses,
    worker_env,
)

pytestmark = pytest.mark.integration

# The outage the issue reports (the worker used to retry the database for 60 s, then exit 1).
OUTAGE_SECONDS = 90


@contextmanager
def postgres_and_redis_down(cluster: Cluster) -> Iterator[None]:
    """Stop the Postgres server itself (its pid file names the ``runuser`` wrapper, which does not
    pass SIGINT on) and Redis; start both again on the way out, whatever happened."""
    postmaster = int((cluster.stack.state_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGINT)  # fast shutdown: sessions are cut, as in a crash or failover
    deadline = time.monotonic() + 30
    while Path(f"/proc/{postmaster}").exists():
        assert time.monotonic() < deadline, "postgres did not stop"
        time.sleep(0.1)
    stop(cluster.stack.run_dir / "redis.pid")
    try:
        yield
    finally:
        cluster.stack.restart("postgres")
        cluster.stack.restart("redis")


def test_workers_ride_out_a_database_and_redis_outage_and_a_short_bound_exits_6(
    cluster: Cluster, engine: Engine, tmp_path: Path
) -> None:
    running, starting, bounded, stopping = (new_generation(engine, total=total) for total in (6, 2, 2, 2))
    for generation_id in (running, starting, bounded, stopping):
        next_attempt(engine, generation_id)
    patient = {"POSEGEN_DEPENDENCY_RETRY_SECONDS": "600"}
    worker = start_worker(worker_env(cluster, running, 1, tmp_path, POSEGEN_POSE_SECONDS="1", **patient))
    started = [worker]
    try:
        wait_for_poses(engine, running, 2)
        with postgres_and_redis_down(cluster):
            began = time.monotonic()
            late = start_worker(worker_env(cluster, starting, 1, tmp_path, **patient))  # its load waits
            impatient = start_worker(worker_env(cluster, bounded, 1, tmp_path, POSEGEN_DEPENDENCY_RETRY_SECONDS="3"))
            stopped = start_worker(worker_env(cluster, stopping, 1, tmp_path, **patient))
            started += [late, impatient, stopped]
            code, output = finish(impatient, timeout=30)
            assert code == ExitCode.DEPENDENCY_UNAVAILABLE, output
            assert "Postgres unreachable" in output
            # Asked to stop (suspend, cancel, drain) while waiting: it stops now, not at the bound.
            stopped.send_signal(signal.SIGTERM)
            code, output = finish(stopped, timeout=20)
            assert code == ExitCode.DEPENDENCY_UNAVAILABLE and "SIGTERM" in output, output
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))
            assert worker.poll() is None and late.poll() is None, "a worker gave up during the outage"
        for process, generation_id, total in ((worker, running, 6), (late, starting, 2)):
            code, output = finish(process)
            assert code == ExitCode.OK, output
            assert poses_completed(engine, generation_id) == total
            assert sorted(recorded_by(engine, generation_id)) == list(range(total))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    assert sql(cluster, SEED_DUPLICATE_QUERY) == []


def test_a_frozen_redis_never_holds_up_a_pose(cluster: Cluster, engine: Engine, tmp_path: Path) -> None:
    """Redis frozen (a partition, a stuck failover): every heartbeat write waits for its socket
    timeout (2 s). That must cost the pose loop nothing: the worker finishes 30 quick poses while
    Redis is still frozen, where waiting on each beat would take a minute."""
    generation_id = new_generation(engine, total=30)
    next_attempt(engine, generation_id)
    redis_pid = int((cluster.stack.run_dir / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGSTOP)
    worker = start_worker(worker_env(cluster, generation_id, 1, tmp_path))
    try:
        code, output = finish(worker, timeout=30)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
        if worker.poll() is None:
            worker.kill()
    assert code == ExitCode.OK, output
    assert poses_completed(engine, generation_id) == 30
    assert output.count("heartbeat not renewed") == 1, "said once per outage"
