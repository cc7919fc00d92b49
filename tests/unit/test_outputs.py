"""Pose files on disk: publishing never replaces a file, and a resuming worker repairs what its
predecessors left (staged files of recorded poses) and drops what superseded workers staged."""

from __future__ import annotations

from pathlib import Path

from posegen_worker.outputs import PoseFiles


def staged(files: PoseFiles, index: int, attempt: int) -> None:
    PoseFiles(files.directory, attempt).stage(index, {"png": f"png {attempt}".encode(), "json": b"{}"})


def test_publishing_never_replaces_a_published_file(tmp_path: Path) -> None:
    files = PoseFiles(tmp_path, attempt=2)
    staged(files, 0, 1)
    assert files.publish(0, 1)
    before = files.final(0, "png").stat().st_ino
    staged(files, 0, 2)
    assert files.publish(0, 2)
    assert files.final(0, "png").stat().st_ino == before
    assert files.final(0, "png").read_bytes() == b"png 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pose-0000.json", "pose-0000.png"]


def test_repair_publishes_recorded_poses_and_drops_what_superseded_attempts_staged(tmp_path: Path) -> None:
    files = PoseFiles(tmp_path, attempt=3)
    staged(files, 0, 1)  # recorded by 1, never published: repaired
    staged(files, 1, 1)  # staged by 1, then recorded by 2 and published: 1's copy is garbage
    staged(files, 1, 2)
    PoseFiles(tmp_path, 2).publish(1, 2)
    staged(files, 2, 2)  # staged by 2, never recorded: garbage
    staged(files, 2, 4)  # a later attempt's (this worker is the superseded one then): left alone
    lost = files.repair({0: 1, 1: 2, 5: 1})
    assert lost == [5]
    assert files.final(0, "png").read_bytes() == b"png 1"
    assert files.final(1, "png").read_bytes() == b"png 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".pose-0002.a4.json.tmp",
        ".pose-0002.a4.png.tmp",
        "pose-0000.json",
        "pose-0000.png",
        "pose-0001.json",
        "pose-0001.png",
    ]


def test_repair_of_a_missing_directory_finds_every_recorded_pose_lost(tmp_path: Path) -> None:
    assert PoseFiles(tmp_path / "gone", attempt=2).repair({0: 1, 1: 1}) == [0, 1]
