"""The worker's side of the checkpoint (the operator's is ``posegen_common.checkpoint``): where an
attempt resumes, and each pose recorded with the progress in one fenced transaction. Plain SQL on a
psycopg2 cursor, so a starting worker imports no SQLAlchemy.

Fencing: the operator bumps ``pose_generation.attempt`` (``begin_attempt``) before a new worker
starts, and ``record_pose`` locks the row and writes only while the caller's attempt is current and
the generation is processing. A replaced worker that wakes up (a zombie) therefore records nothing,
and the unique keys make a pose computed twice count once. A worker's minted role may run exactly
these statements on its own generation (row-level security, migration 0004)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import psycopg2.extensions

from posegen_common.contract import GenerationSpec, GenerationStatus, Superseded


@dataclass(frozen=True)
class Checkpoint:
    """What a worker resumes from."""

    spec: GenerationSpec
    attempt: int
    recorded: Mapping[int, int]  # pose index -> the attempt whose row recorded it (its files are that attempt's)


@dataclass(frozen=True)
class PoseRecorded:
    poses_completed: int
    keep_going: bool  # False once the generation is complete or suspended
    # The pose's row is the caller's (inserted now, or by its own earlier try whose commit reply was
    # lost): only then may it publish its files. False: another attempt recorded it first.
    ours: bool


@dataclass(frozen=True)
class RecordedPose:
    index: int
    pose_library_id: str
    image_path: str
    keypoints: list[dict[str, Any]]
    base_pose: str


# The spec's fields are named as the columns that hold them.
_SPEC_COLUMNS = ", ".join(field.name for field in fields(GenerationSpec))
_WRITABLE = (GenerationStatus.PROCESSING, GenerationStatus.SUSPENDED)


def load_checkpoint(cursor: psycopg2.extensions.cursor, generation_id: str, attempt: int) -> Checkpoint:
    """The worker's start: check its attempt is current and say so (``worker_started_at``: from
    now on its heartbeat is expected), then read what is already done."""
    cursor.execute(
        "UPDATE pose_generation SET worker_started_at = now(), updated_at = now()"
        f" WHERE id = %s AND attempt = %s AND status = %s RETURNING {_SPEC_COLUMNS}",
        (generation_id, attempt, GenerationStatus.PROCESSING.value),
    )
    row = cursor.fetchone()
    if row is None:
        cursor.execute("SELECT attempt, status FROM pose_generation WHERE id = %s", (generation_id,))
        current = cursor.fetchone()
        if current is None:
            raise Superseded(f"generation {generation_id} does not exist")
        raise Superseded(f"generation {generation_id} is at attempt {current[0]} ({current[1]}), not {attempt}")
    cursor.execute("SELECT pose_index, attempt FROM generated_pose WHERE generation_id = %s", (generation_id,))
    return Checkpoint(GenerationSpec(*row), attempt, {index: by for index, by in cursor.fetchall()})


def record_pose(
    cursor: psycopg2.extensions.cursor, generation_id: str, attempt: int, recorded: RecordedPose
) -> PoseRecorded:
    """Record one pose and the progress in the caller's transaction.

    Raises Superseded (and writes nothing) unless ``attempt`` is current and the generation is
    processing, or suspended (the pose a worker had in flight when it was suspended still counts;
    ``PoseRecorded.keep_going`` then tells it to stop). The row lock orders this write against
    ``begin_attempt``: a bump waits for an in-flight pose, and a pose after a bump sees it.
    ``PoseRecorded.ours`` tells whether the pose's row belongs to the caller's attempt."""
    cursor.execute(
        "SELECT attempt, status, poses_completed, total_expected_poses FROM pose_generation WHERE id = %s FOR UPDATE",
        (generation_id,),
    )
    current = cursor.fetchone()
    if current is None or current[0] != attempt or current[1] not in _WRITABLE:
        raise Superseded(f"attempt {attempt} of {generation_id} is no longer current")
    _, status, poses_completed, total_expected_poses = current
    cursor.execute(
        "INSERT INTO generated_pose (generation_id, pose_index, pose_library_id, attempt, image_path, keypoints,"
        " base_pose) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING RETURNING id",
        (
            generation_id,
            recorded.index,
            recorded.pose_library_id,
            attempt,
            recorded.image_path,
            json.dumps(recorded.keypoints),
            recorded.base_pose,
        ),
    )
    inserted = cursor.fetchone() is not None
    recorder = attempt if inserted else pose_recorder(cursor, generation_id, recorded.index)
    completed = int(poses_completed) + (1 if inserted else 0)
    finished = completed >= total_expected_poses
    completing = ", status = %(completed)s, completed_at = now()" if finished else ""
    cursor.execute(
        f"UPDATE pose_generation SET poses_completed = %(poses)s, last_pose_at = now(){completing}, updated_at = now()"
        " WHERE id = %(id)s",
        {"poses": completed, "completed": GenerationStatus.COMPLETED.value, "id": generation_id},
    )
    keep_going = status == GenerationStatus.PROCESSING and not finished
    return PoseRecorded(completed, keep_going=keep_going, ours=recorder == attempt)


def pose_recorder(cursor: psycopg2.extensions.cursor, generation_id: str, index: int) -> int | None:
    """The attempt whose row recorded pose ``index`` (its files are that attempt's), if any."""
    cursor.execute(
        "SELECT attempt FROM generated_pose WHERE generation_id = %s AND pose_index = %s", (generation_id, index)
    )
    row = cursor.fetchone()
    return None if row is None else int(row[0])
