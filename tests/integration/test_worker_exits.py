"""Known causes seen from inside a worker, with real worker processes and real volumes: an output
volume it may not write to and a full one end the worker with their own exit code and the cause in
its termination message, instead of "exited with code 1"."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from posegen_common.exit_codes import ExitCode
from tests.harness import Cluster
from tests.integration.workers import new_generation, next_attempt, pose_directory, recorded_by, worker_env

pytestmark = pytest.mark.integration

NOBODY = 65534


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: room for a few poses only."""
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(volume)], check=True)
    try:
        yield volume
    finally:
        subprocess.run(["umount", "--lazy", str(volume)], check=True)


def test_an_output_volume_it_may_not_write_to_exits_8_with_the_cause(
    cluster: Cluster, engine: Engine, tmp_path: Path
) -> None:
    """The volume belongs to another user (an fsGroup that does not match): the worker runs as
    root without the capability to override file permissions, as a container does."""
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    volume.chmod(0o755)
    subprocess.run(["chown", f"{NOBODY}:{NOBODY}", str(volume)], check=True)
    generation_id = new_generation(engine, total=3)
    next_attempt(engine, generation_id)
    message = tmp_path / "termination-log"
    env = worker_env(cluster, generation_id, 1, volume, POSEGEN_TERMINATION_MESSAGE_PATH=str(message))
    worker = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "posegen_worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode == ExitCode.OUTPUT_DENIED, worker.stdout
    assert message.read_text().startswith("the output volume is not writable")
    assert "Permission denied" in message.read_text()
    assert recorded_by(engine, generation_id) == {}


def test_a_full_output_volume_exits_7_and_every_recorded_pose_keeps_its_files(
    cluster: Cluster, engine: Engine, tmp_path: Path, tiny_volume: Path
) -> None:
    generation_id = new_generation(engine, total=40)
    next_attempt(engine, generation_id)
    message = tmp_path / "termination-log"
    env = worker_env(cluster, generation_id, 1, tiny_volume, POSEGEN_TERMINATION_MESSAGE_PATH=str(message))
    worker = subprocess.run(
        [sys.executable, "-m", "posegen_worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode == ExitCode.DISK_FULL, worker.stdout
    assert message.read_text().startswith("no space left on the output volume")
    assert "exiting with DISK_FULL (7): no space left on the output volume" in worker.stdout
    recorded = recorded_by(engine, generation_id)
    assert 0 < len(recorded) < 40
    assert sorted(path.name for path in pose_directory(tiny_volume, generation_id).iterdir()) == sorted(
        f"pose-{index:04d}.{kind}" for index in recorded for kind in ("png", "json")
    ), "recorded poses have their files; what did not fit is neither recorded nor left behind"
