"""pose_generation and generated_pose, as the seed queries them, plus fencing and recovery columns.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pose_generation",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("project_id", sa.String(128), nullable=False),
        sa.Column("generation_type", sa.String(32), nullable=False),
        sa.Column("text_prompt", sa.Text()),
        sa.Column("pose_library_ids", JSONB()),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("poses_completed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_expected_poses", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempt_reason", sa.String(32)),
        sa.Column("worker_started_at", sa.DateTime(timezone=True)),
        sa.Column("last_recovery_reason", sa.String(32)),
        sa.Column("last_recovery_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("last_pose_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("error_message", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "ix_pose_generation_active",
        "pose_generation",
        ["status"],
        postgresql_where=sa.text("status IN ('queued', 'processing')"),
    )
    op.create_index("ix_pose_generation_namespace_name", "pose_generation", ["namespace", "name"])
    op.create_table(
        "generated_pose",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "generation_id",
            sa.String(64),
            sa.ForeignKey("pose_generation.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("pose_index", sa.Integer(), nullable=False),
        sa.Column("pose_library_id", sa.String(160), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("image_path", sa.Text(), nullable=False),
        sa.Column("keypoints", JSONB(), nullable=False),
        sa.Column("base_pose", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("generation_id", "pose_library_id", name="uq_generated_pose_library_id"),
        sa.UniqueConstraint("generation_id", "pose_index", name="uq_generated_pose_index"),
    )


def downgrade() -> None:
    op.drop_table("generated_pose")
    op.drop_table("pose_generation")
