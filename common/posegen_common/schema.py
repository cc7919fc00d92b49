"""The tables of the data contract shared by the operator and the worker (its statuses, spec and pose
keys are in ``posegen_common.contract``, which the worker reads without SQLAlchemy).

The seed's SQL runs verbatim against these tables (``pose_generation`` with ``id, status,
poses_completed, total_expected_poses, started_at``; ``generated_pose`` with ``generation_id,
pose_library_id``), and its duplicate query returns no rows by construction: unique keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from posegen_common.contract import GenerationStatus

# SQLAlchemy Core, not the ORM: nothing maps rows to objects, and importing the ORM cost every
# process that reads the schema 6 MiB.
metadata = MetaData()
ColumnType = TypeEngine[Any] | type[TypeEngine[Any]]


def _required(name: str, kind: ColumnType, *foreign: ForeignKey, **options: Any) -> Column[Any]:
    return Column(name, kind, *foreign, nullable=False, **options)


def _optional(name: str, kind: ColumnType) -> Column[Any]:
    return Column(name, kind, nullable=True)


def _timestamp(name: str) -> Column[Any]:
    return _optional(name, DateTime(timezone=True))


pose_generation = Table(
    "pose_generation",
    metadata,
    Column("id", String(64), primary_key=True),
    _required("namespace", String(253)),
    _required("name", String(253)),
    _required("project_id", String(128)),
    _required("generation_type", String(32)),
    _optional("text_prompt", Text),
    _optional("pose_library_ids", JSONB),
    _required("seed", BigInteger),
    _required("status", String(16), default=GenerationStatus.QUEUED),
    _required("poses_completed", Integer, default=0, server_default="0"),
    _required("total_expected_poses", Integer),
    # Fencing token: bumped before every new worker starts; a worker writes only while it matches.
    _required("attempt", Integer, default=0, server_default="0"),
    # Recovery history lives with the checkpoint, so it survives the loss of any resource status.
    _required("recoveries", Integer, default=0, server_default="0"),
    # Why the current attempt started: a recovery reason, or NULL for a first start or a resume.
    _optional("attempt_reason", String(32)),
    # Set by the current attempt's worker when it starts: from then on its heartbeat is expected.
    _timestamp("worker_started_at"),
    # Set once the current attempt's pod exists: until then a refused create is retried under the
    # same attempt (migration 0003).
    _timestamp("worker_pod_created_at"),
    _required("pod_refusals", Integer, default=0, server_default="0"),
    _optional("last_pod_error", Text),
    _timestamp("last_pod_error_at"),
    # New attempts after causes that are not the generation's fault: outside the recovery budget.
    _required("transient_retries", Integer, default=0, server_default="0"),
    # Time spent suspended does not count against the deadline.
    _required("suspended_seconds", Float, default=0.0, server_default="0"),
    _timestamp("suspended_at"),
    _optional("last_recovery_reason", String(32)),
    _timestamp("last_recovery_at"),
    _timestamp("started_at"),
    _timestamp("last_pose_at"),
    _timestamp("completed_at"),
    _optional("error_message", Text),
    _required("created_at", DateTime(timezone=True), server_default=func.now()),
    _required("updated_at", DateTime(timezone=True), server_default=func.now(), onupdate=func.now()),
    # The writing transaction's id, stamped by a trigger (migration 0002): what changed since a read.
    _required("change_xid", BigInteger, default=0, server_default="0"),
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

generated_pose = Table(
    "generated_pose",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _required("generation_id", String(64), ForeignKey("pose_generation.id", ondelete="CASCADE")),
    _required("pose_index", Integer),
    _required("pose_library_id", String(160)),
    _required("attempt", Integer),
    _required("image_path", Text),
    _required("keypoints", JSONB),
    _required("base_pose", String(32)),
    _required("created_at", DateTime(timezone=True), server_default=func.now()),
    UniqueConstraint("generation_id", "pose_library_id", name="uq_generated_pose_library_id"),
    UniqueConstraint("generation_id", "pose_index", name="uq_generated_pose_index"),
)

# The login role minted for one worker attempt (migration 0004): only the owner reads it.
worker_credential = Table(
    "worker_credential",
    metadata,
    Column("role_name", Text, primary_key=True),
    _required("generation_id", String(64), ForeignKey("pose_generation.id", ondelete="CASCADE"), index=True),
    _required("attempt", Integer),
    _required("created_at", DateTime(timezone=True), server_default=func.now()),
)
