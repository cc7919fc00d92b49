"""What the operator and the worker agree on about a generation, free of any database library (the
worker must not pay for SQLAlchemy's import): its statuses, its spec, the key of each pose, and the
signal that an attempt lost the generation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class GenerationStatus(StrEnum):
    """``pose_generation.status``; lower case as in the seed's "stuck in processing"."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset({GenerationStatus.COMPLETED, GenerationStatus.FAILED, GenerationStatus.CANCELLED})


@dataclass(frozen=True)
class GenerationSpec:
    """What the operator records when it first sees a resource."""

    id: str
    namespace: str
    name: str
    project_id: str
    generation_type: str
    text_prompt: str | None
    pose_library_ids: list[str] | None
    seed: int
    total_expected_poses: int


class Superseded(Exception):
    """The caller's attempt is no longer current (or the generation stopped processing)."""


def pose_key(reference_id: str | None, index: int) -> str:
    """``generated_pose.pose_library_id`` of the index-th pose: one per pose, stable across attempts."""
    return f"{reference_id or 'text'}:{index:04d}"


def reference_for(pose_library_ids: list[str] | None, index: int) -> str | None:
    """Gallery generations cycle through their reference poses."""
    if not pose_library_ids:
        return None
    return pose_library_ids[index % len(pose_library_ids)]
