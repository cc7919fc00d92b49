"""Let a pass read only the rows changed since the last one, and count active rows from an index.

``change_xid`` holds the id of the transaction that last wrote the row, set by a trigger so that
every writer (workers, the operator, a runbook's hand-written UPDATE) is covered. A reader that
remembers the oldest transaction still running when it last read (its snapshot's xmin) finds
every row committed since with ``change_xid >= xmin``: exact, no clock involved.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('queued', 'processing')")


def upgrade() -> None:
    op.add_column("pose_generation", sa.Column("change_xid", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_pose_generation_change_xid", "pose_generation", ["change_xid"])
    op.execute(
        """
        CREATE FUNCTION pose_generation_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.change_xid := pg_current_xact_id()::text::bigint;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER pose_generation_stamp_change BEFORE INSERT OR UPDATE ON pose_generation"
        " FOR EACH ROW EXECUTE FUNCTION pose_generation_stamp_change()"
    )
    # The status counts (every metrics refresh) read only this index: no row visits.
    op.drop_index("ix_pose_generation_active", table_name="pose_generation")
    op.create_index(
        "ix_pose_generation_active",
        "pose_generation",
        ["status"],
        postgresql_include=["started_at", "last_pose_at"],
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_pose_generation_active", table_name="pose_generation")
    op.create_index("ix_pose_generation_active", "pose_generation", ["status"], postgresql_where=ACTIVE)
    op.execute("DROP TRIGGER pose_generation_stamp_change ON pose_generation")
    op.execute("DROP FUNCTION pose_generation_stamp_change()")
    op.drop_index("ix_pose_generation_change_xid", table_name="pose_generation")
    op.drop_column("pose_generation", "change_xid")
