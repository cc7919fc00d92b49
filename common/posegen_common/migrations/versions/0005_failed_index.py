"""The health check's failed count from an index of its own (index-only, however many rows are
finished), as the waiting and active counts come from ix_pose_generation_active.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_pose_generation_failed", "pose_generation", ["status"], postgresql_where=sa.text("status = 'failed'")
    )


def downgrade() -> None:
    op.drop_index("ix_pose_generation_failed", table_name="pose_generation")
