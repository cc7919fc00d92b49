"""What the operator needs to tell faults apart: whether the current attempt's pod was created (a
refused create is retried under the same attempt, never counted as a recovery), transient retries
kept apart from the recovery budget, and suspended time kept out of the deadline.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    sa.Column("worker_pod_created_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("pod_refusals", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_pod_error", sa.Text(), nullable=True),
    sa.Column("last_pod_error_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("transient_retries", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("suspended_seconds", sa.Float(), nullable=False, server_default="0"),
    sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("pose_generation", column)
    # Rows of running attempts were created by a pod already: they must not be re-created.
    op.execute("UPDATE pose_generation SET worker_pod_created_at = now() WHERE status = 'processing'")


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("pose_generation", column.name)
