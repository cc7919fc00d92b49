"""The tables of the data contract shared by the operator and the worker (its statuses, spec and pose
keys are in ``posegen_common.contract``, which the worker reads without SQLAlchemy).

The seed's SQL runs verbatim against these tables (``pose_generation`` with ``id, status,
poses_completed, total_expected_poses, started_at``; ``generated_pose`` with ``generation_id,
pose_library_id``), and its duplicate query returns no rows by construction: unique keys."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from posegen_common.contract import GenerationStatus


class Base(DeclarativeBase):
    pass


class PoseGenerationRow(Base):
    __tablename__ = "pose_generation"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    project_id: Mapped[str] = mapped_column(String(128))
    generation_type: Mapped[str] = mapped_column(String(32))
    text_prompt: Mapped[str | None] = mapped_column(Text)
    pose_library_ids: Mapped[list[str] | None] = mapped_column(JSONB)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=GenerationStatus.QUEUED)
    poses_completed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    total_expected_poses: Mapped[int] = mapped_column(Integer)
    # Fencing token: bumped before every new worker starts; a worker writes only while it matches.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Recovery history lives with the checkpoint, so it survives the loss of any resource status.
    recoveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why the current attempt started: a recovery reason, or NULL for a first start or a resume.
    attempt_reason: Mapped[str | None] = mapped_column(String(32))
    # Set by the current attempt's worker when it starts: from then on its heartbeat is expected.
    worker_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once the current attempt's pod exists: until then a refused create is retried under the
    # same attempt (migration 0003).
    worker_pod_created_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    pod_refusals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_pod_error: Mapped[str | None] = mapped_column(Text)
    last_pod_error_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # New attempts after causes that are not the generation's fault: outside the recovery budget.
    transient_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Time spent suspended does not count against the deadline.
    suspended_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    suspended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_recovery_reason: Mapped[str | None] = mapped_column(String(32))
    last_recovery_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_pose_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # The writing transaction's id, stamped by a trigger (migration 0002): what changed since a read.
    change_xid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        # Counting generations in play reads this index alone, however many rows are finished.
        Index(
            "ix_pose_generation_active",
            "status",
            postgresql_include=["started_at", "last_pose_at"],
            postgresql_where=text("status IN ('queued', 'processing')"),
        ),
        # The health check's failed count (migration 0005).
        Index("ix_pose_generation_failed", "status", postgresql_where=text("status = 'failed'")),
        Index("ix_pose_generation_change_xid", "change_xid"),
        Index("ix_pose_generation_namespace_name", "namespace", "name"),
    )


class GeneratedPoseRow(Base):
    __tablename__ = "generated_pose"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    generation_id: Mapped[str] = mapped_column(ForeignKey("pose_generation.id", ondelete="CASCADE"))
    pose_index: Mapped[int] = mapped_column(Integer)
    pose_library_id: Mapped[str] = mapped_column(String(160))
    attempt: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str] = mapped_column(Text)
    keypoints: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    base_pose: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("generation_id", "pose_library_id", name="uq_generated_pose_library_id"),
        UniqueConstraint("generation_id", "pose_index", name="uq_generated_pose_index"),
    )


class WorkerCredentialRow(Base):
    """The login role minted for one worker attempt (migration 0004): only the owner reads it."""

    __tablename__ = "worker_credential"

    role_name: Mapped[str] = mapped_column(Text, primary_key=True)
    generation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("pose_generation.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
