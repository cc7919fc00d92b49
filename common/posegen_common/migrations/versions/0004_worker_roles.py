"""Least-privilege worker credentials: a Postgres login role per worker attempt, minted by the
operator, that can read and write its own generation's checkpoint and nothing else.
The operator passes a SCRAM verifier, never the password: no log line or view ever holds it.

- ``posegen_worker`` (NOLOGIN) holds the grants every minted role inherits: read both tables, insert
  poses, update the progress columns of pose_generation. No DELETE, no TRUNCATE, no DDL (the tables
  and the schema belong to the operator's role).
- Row-level security narrows that to one generation and, for writes, to the current attempt: a
  superseded worker's writes match no row (fencing enforced by the database, not only by the
  queries). Roles that are not workers (the operator, the migration, a runbook) see every row.
- ``worker_credential`` maps each minted role to its generation and attempt; only the owner reads
  it. ``posegen_mint_worker`` creates a role (dropping the generation's earlier ones) and
  ``posegen_revoke_worker`` drops them; both run with the owner's rights, so the operator needs no
  CREATEROLE of its own when it is not the owner. Creating the roles needs CREATEROLE here.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WORKER_GROUP = "posegen_worker"
# Columns a worker writes (posegen_worker.checkpoint: load_checkpoint and record_pose).
PROGRESS_COLUMNS = "worker_started_at, poses_completed, last_pose_at, status, completed_at, updated_at"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WORKER_GROUP}') THEN
                CREATE ROLE {WORKER_GROUP} NOLOGIN;
            END IF;
        END $$
        """
    )
    op.execute(
        """
        CREATE TABLE worker_credential (
            role_name text PRIMARY KEY,
            generation_id varchar(64) NOT NULL REFERENCES pose_generation (id) ON DELETE CASCADE,
            attempt integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_worker_credential_generation_id ON worker_credential (generation_id)")
    op.execute("REVOKE ALL ON worker_credential FROM PUBLIC")
    # session_user, not current_user: inside these SECURITY DEFINER functions current_user is the owner.
    for name, column in (("posegen_worker_generation", "generation_id"), ("posegen_worker_attempt", "attempt")):
        kind = "varchar" if column == "generation_id" else "integer"
        op.execute(
            f"""
            CREATE FUNCTION {name}() RETURNS {kind} LANGUAGE sql STABLE SECURITY DEFINER
            SET search_path = public, pg_temp AS $$
                SELECT {column} FROM worker_credential WHERE role_name = session_user
            $$
            """
        )
    op.execute(
        f"""
        CREATE FUNCTION posegen_is_worker() RETURNS boolean LANGUAGE sql STABLE
        SET search_path = public, pg_temp AS $$
            SELECT pg_has_role(session_user, '{WORKER_GROUP}', 'MEMBER')
        $$
        """
    )
    op.execute(f"GRANT SELECT ON pose_generation, generated_pose TO {WORKER_GROUP}")
    op.execute(f"GRANT UPDATE ({PROGRESS_COLUMNS}) ON pose_generation TO {WORKER_GROUP}")
    op.execute(f"GRANT INSERT ON generated_pose TO {WORKER_GROUP}")
    op.execute(f"GRANT USAGE ON SEQUENCE generated_pose_id_seq TO {WORKER_GROUP}")
    op.execute("ALTER TABLE pose_generation ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE generated_pose ENABLE ROW LEVEL SECURITY")
    for table in ("pose_generation", "generated_pose"):
        # Anyone but a worker: as before row-level security (table privileges still apply).
        op.execute(f"CREATE POLICY not_a_worker ON {table} USING (NOT posegen_is_worker())")
    op.execute(
        f"CREATE POLICY own_generation ON pose_generation FOR SELECT TO {WORKER_GROUP}"
        " USING (id = posegen_worker_generation())"
    )
    op.execute(
        f"CREATE POLICY current_attempt ON pose_generation FOR UPDATE TO {WORKER_GROUP}"
        " USING (id = posegen_worker_generation() AND attempt = posegen_worker_attempt())"
        " WITH CHECK (id = posegen_worker_generation() AND attempt = posegen_worker_attempt())"
    )
    op.execute(
        f"CREATE POLICY own_poses ON generated_pose FOR SELECT TO {WORKER_GROUP}"
        " USING (generation_id = posegen_worker_generation())"
    )
    op.execute(
        f"CREATE POLICY current_attempt_poses ON generated_pose FOR INSERT TO {WORKER_GROUP}"
        " WITH CHECK (generation_id = posegen_worker_generation() AND attempt = posegen_worker_attempt()"
        " AND attempt = (SELECT g.attempt FROM pose_generation g WHERE g.id = generation_id))"
    )
    op.execute(
        """
        CREATE FUNCTION posegen_revoke_worker(generation varchar) RETURNS integer LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            minted text;
            dropped integer := 0;
        BEGIN
            FOR minted IN DELETE FROM worker_credential WHERE generation_id = generation RETURNING role_name LOOP
                EXECUTE format('DROP ROLE IF EXISTS %I', minted);
                dropped := dropped + 1;
            END LOOP;
            RETURN dropped;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION posegen_mint_worker(generation varchar, attempt integer, verifier text)
        RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            minted text := format('pgw_%s_%s', left(md5(generation), 20), attempt);
        BEGIN
            IF verifier NOT LIKE 'SCRAM-SHA-256$%' THEN
                RAISE EXCEPTION 'a SCRAM-SHA-256 verifier is expected, never a password';
            END IF;
            PERFORM posegen_revoke_worker(generation);
            EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE {WORKER_GROUP} CONNECTION LIMIT 10',
                           minted, verifier);
            INSERT INTO worker_credential (role_name, generation_id, attempt) VALUES (minted, generation, attempt);
            RETURN minted;
        END $$
        """
    )
    for function in ("posegen_mint_worker(varchar, integer, text)", "posegen_revoke_worker(varchar)"):
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")


def downgrade() -> None:
    op.execute(
        "SELECT posegen_revoke_worker(generation_id) FROM (SELECT DISTINCT generation_id FROM worker_credential) g"
    )
    for table, policies in (
        ("pose_generation", ("not_a_worker", "own_generation", "current_attempt")),
        ("generated_pose", ("not_a_worker", "own_poses", "current_attempt_poses")),
    ):
        for policy in policies:
            op.execute(f"DROP POLICY {policy} ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION posegen_mint_worker(varchar, integer, text)")
    op.execute("DROP FUNCTION posegen_revoke_worker(varchar)")
    op.execute("DROP FUNCTION posegen_is_worker()")
    op.execute("DROP FUNCTION posegen_worker_generation()")
    op.execute("DROP FUNCTION posegen_worker_attempt()")
    op.execute("DROP TABLE worker_credential")
    op.execute(f"REVOKE ALL ON pose_generation, generated_pose FROM {WORKER_GROUP}")
    op.execute(f"REVOKE ALL ON SEQUENCE generated_pose_id_seq FROM {WORKER_GROUP}")
    op.execute(f"DROP ROLE IF EXISTS {WORKER_GROUP}")
