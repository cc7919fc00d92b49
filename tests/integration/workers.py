"""Worker processes driven directly against the real Postgres and Redis, without the operator: a
generation row, the environment of one attempt, and what the worker left in the database and on
disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from posegen_common import checkpoint
from posegen_common.contract import GenerationSpec
from posegen_worker.run import output_directory
from tests.harness import Cluster

NAMESPACE = "fencing"


def new_generation(engine: Engine, total: int = 5, generation_id: str | None = None, namespace: str = NAMESPACE) -> str:
    generation_id = generation_id or str(uuid.uuid4())
    spec = GenerationSpec(
        id=generation_id,
        namespace=namespace,
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


def next_attempt(engine: Engine, generation_id: str, reason: str | None = None) -> int:
    """Fence out the current worker, as the operator does before starting a new one."""
    with engine.begin() as conn:
        current = checkpoint.fetch_states(conn, [generation_id])[generation_id].attempt
        attempt = checkpoint.begin_attempt(conn, generation_id, current, reason)
    assert attempt is not None
    return attempt


def worker_env(cluster: Cluster, generation_id: str, attempt: int, output_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": cluster.stack.database_url,
        "REDIS_URL": cluster.stack.redis_url,
        "POSEGEN_GENERATION_ID": generation_id,
        "POSEGEN_ATTEMPT": str(attempt),
        "POSEGEN_POD_NAME": f"w-{generation_id[:8]}-{attempt}",
        "POSEGEN_OUTPUT_DIR": str(output_dir),
        "POSEGEN_POSE_SECONDS": "0",
        "POSEGEN_HEARTBEAT_TTL_SECONDS": "4",
        "POSEGEN_HEARTBEAT_INTERVAL_SECONDS": "0.5",
        **extra,
    }


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "posegen_worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_worker(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "posegen_worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    """Exit code and output of a worker started with ``start_worker``."""
    output, _ = worker.communicate(timeout=timeout)
    return worker.returncode, output


def poses_completed(engine: Engine, generation_id: str) -> int:
    with engine.connect() as conn:
        return checkpoint.fetch_states(conn, [generation_id])[generation_id].poses_completed


def wait_for_poses(engine: Engine, generation_id: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while poses_completed(engine, generation_id) < count:
        assert time.monotonic() < deadline, f"{generation_id} did not reach {count} poses within {timeout}s"
        time.sleep(0.05)


def recorded_by(engine: Engine, generation_id: str) -> dict[int, int]:
    """Pose index -> the attempt whose row recorded it."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT pose_index, attempt FROM generated_pose WHERE generation_id = %s", (generation_id,)
        ).all()
    return {index: attempt for index, attempt in rows}


def pose_directory(output_dir: Path, generation_id: str) -> Path:
    return output_directory(output_dir, NAMESPACE, f"g-{generation_id[:6]}", generation_id)


def files_of(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file in a generation's directory, by name: (inode, modification time in ns)."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(directory.iterdir())}


def keypoints_document(directory: Path, index: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / f"pose-{index:04d}.json").read_text())
    return document
