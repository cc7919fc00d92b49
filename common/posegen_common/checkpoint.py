"""The operator's checkpoint queries: with the worker's (``posegen_worker.checkpoint``), the only
code that writes ``pose_generation`` and ``generated_pose``.

Fencing: ``pose_generation.attempt`` is bumped (``begin_attempt``) before a new worker starts, and
the worker's ``record_pose`` locks the row and writes only while its attempt is current and the
generation is processing. A replaced worker that wakes up (a zombie) therefore records nothing,
and the unique keys make a pose computed twice count once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, any_, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, insert

from posegen_common.contract import FINAL_STATUSES, GenerationSpec, GenerationStatus
from posegen_common.schema import pose_generation as generation


@dataclass(frozen=True)
class GenerationState:
    """A row as the operator observes it."""

    id: str
    status: str
    attempt: int
    poses_completed: int
    total_expected_poses: int
    recoveries: int
    attempt_reason: str | None
    worker_started_at: dt.datetime | None
    last_recovery_reason: str | None
    last_recovery_at: dt.datetime | None
    started_at: dt.datetime | None
    last_pose_at: dt.datetime | None
    completed_at: dt.datetime | None
    error_message: str | None
    worker_pod_created_at: dt.datetime | None = None
    pod_refusals: int = 0
    last_pod_error: str | None = None
    last_pod_error_at: dt.datetime | None = None
    transient_retries: int = 0
    suspended_seconds: float = 0.0

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


_STATE_COLUMNS = (
    generation.c.id,
    generation.c.status,
    generation.c.attempt,
    generation.c.poses_completed,
    generation.c.total_expected_poses,
    generation.c.recoveries,
    generation.c.attempt_reason,
    generation.c.worker_started_at,
    generation.c.worker_pod_created_at,
    generation.c.pod_refusals,
    generation.c.last_pod_error,
    generation.c.last_pod_error_at,
    generation.c.transient_retries,
    generation.c.suspended_seconds,
    generation.c.last_recovery_reason,
    generation.c.last_recovery_at,
    generation.c.started_at,
    generation.c.last_pose_at,
    generation.c.completed_at,
    generation.c.error_message,
)


def _state(row: Any) -> GenerationState:
    return GenerationState(**row._mapping)


def register(conn: Connection, spec: GenerationSpec) -> None:
    """Record a new generation (idempotent)."""
    values = {
        "id": spec.id,
        "namespace": spec.namespace,
        "name": spec.name,
        "project_id": spec.project_id,
        "generation_type": spec.generation_type,
        "text_prompt": spec.text_prompt,
        "pose_library_ids": spec.pose_library_ids,
        "seed": spec.seed,
        "total_expected_poses": spec.total_expected_poses,
        "status": GenerationStatus.QUEUED,
    }
    conn.execute(insert(generation).values(**values).on_conflict_do_nothing(index_elements=["id"]))


def fetch_states(conn: Connection, ids: Collection[str]) -> dict[str, GenerationState]:
    """One query for every generation in play."""
    if not ids:
        return {}
    # One array parameter, not thousands of bound values: cheaper to plan, and short in any log.
    in_play = bindparam("ids", value=list(ids), type_=ARRAY(String))
    rows = conn.execute(select(*_STATE_COLUMNS).where(generation.c.id == any_(in_play)))
    return {row.id: _state(row) for row in rows}


def fetch_unfinished_ids(conn: Connection, namespaces: Collection[str] = ()) -> set[str]:
    """Queued or processing rows (served by the partial index): finds rows whose resource is gone.
    With ``namespaces``, only theirs: other namespaces may belong to another release."""
    active = (GenerationStatus.QUEUED, GenerationStatus.PROCESSING)
    query = select(generation.c.id).where(generation.c.status.in_(active))
    if namespaces:
        query = query.where(generation.c.namespace.in_(list(namespaces)))
    return set(conn.scalars(query))


def fetch_unfinished_among(conn: Connection, ids: Collection[str]) -> set[str]:
    """Which of ``ids`` (by primary key) are not final yet, suspended included."""
    if not ids:
        return set()
    query = select(generation.c.id).where(
        generation.c.id == any_(bindparam("ids", list(ids), type_=ARRAY(String))),
        generation.c.status.not_in(list(FINAL_STATUSES)),
    )
    return set(conn.scalars(query))


@dataclass(frozen=True)
class ReadMark:
    """Taken before a pass's reads: the database's clock, and the oldest transaction still running
    (every row written by it or a later one is stamped ``change_xid >= xmin``)."""

    now: dt.datetime
    xmin: int


def read_mark(conn: Connection) -> ReadMark:
    now, xmin = conn.execute(text("SELECT now(), pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).one()
    return ReadMark(now, xmin)


def fetch_changed(conn: Connection, since_xmin: int) -> dict[str, GenerationState]:
    """Rows written since a ``ReadMark`` (served by the change_xid index): a pass's cost follows
    what changed, not how many generations are in play or how many rows the table holds."""
    rows = conn.execute(select(*_STATE_COLUMNS).where(generation.c.change_xid >= since_xmin))
    return {row.id: _state(row) for row in rows}


def begin_attempt(
    conn: Connection,
    generation_id: str,
    expected_attempt: int,
    recovery_reason: str | None,
    *,
    budgeted: bool = True,
) -> int | None:
    """Fence out every earlier worker and claim the next attempt; None if another actor won.
    A recovery spends one of the generation's recoveries unless it is not ``budgeted`` (a cause
    that is not the generation's fault: it counts as a transient retry)."""
    values: dict[str, Any] = {
        "attempt": generation.c.attempt + 1,
        "status": GenerationStatus.PROCESSING,
        "started_at": func.coalesce(generation.c.started_at, func.now()),
        # The stall clock restarts with each worker.
        "last_pose_at": func.now(),
        "error_message": None,
        "attempt_reason": recovery_reason,
        "worker_started_at": None,
        "worker_pod_created_at": None,
        "pod_refusals": 0,
        "last_pod_error": None,
        "last_pod_error_at": None,
        # A resume ends a suspension: its length is kept out of the deadline.
        "suspended_seconds": generation.c.suspended_seconds
        + func.coalesce(func.extract("epoch", func.now() - generation.c.suspended_at), 0),
        "suspended_at": None,
    }
    if recovery_reason is not None:
        counter = generation.c.recoveries if budgeted else generation.c.transient_retries
        values |= {
            counter.name: counter + 1,
            "last_recovery_reason": recovery_reason,
            "last_recovery_at": func.now(),
        }
    statement = (
        update(generation)
        .where(
            generation.c.id == generation_id,
            generation.c.attempt == expected_attempt,
            generation.c.status.not_in(list(FINAL_STATUSES)),
        )
        .values(**values)
        .returning(generation.c.attempt)
    )
    return conn.execute(statement).scalar_one_or_none()


def pod_created(conn: Connection, generation_id: str, attempt: int) -> None:
    """The pod of ``attempt`` exists: from now on its absence means it is gone, not refused."""
    conn.execute(
        update(generation)
        .where(
            generation.c.id == generation_id,
            generation.c.attempt == attempt,
            generation.c.worker_pod_created_at.is_(None),
        )
        .values(worker_pod_created_at=func.now(), last_pod_error=None)
    )


def pod_refused(conn: Connection, generation_id: str, attempt: int, message: str) -> None:
    """The API server refused the pod of ``attempt``: it is retried under the same attempt."""
    conn.execute(
        update(generation)
        .where(
            generation.c.id == generation_id,
            generation.c.attempt == attempt,
            generation.c.worker_pod_created_at.is_(None),
        )
        .values(pod_refusals=generation.c.pod_refusals + 1, last_pod_error=message, last_pod_error_at=func.now())
    )


def set_status(
    conn: Connection, generation_id: str, status: GenerationStatus, *, error_message: str | None = None
) -> bool:
    """Move an unfinished generation to ``status``; a final status is never overwritten."""
    values: dict[str, Any] = {"status": status, "error_message": error_message}
    if status in FINAL_STATUSES:
        values["completed_at"] = func.now()
    if status == GenerationStatus.SUSPENDED:
        values["suspended_at"] = func.coalesce(generation.c.suspended_at, func.now())
    statement = (
        update(generation)
        .where(generation.c.id == generation_id, generation.c.status.not_in(list(FINAL_STATUSES)))
        .values(**values)
    )
    return conn.execute(statement).rowcount > 0


def status_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(generation.c.status, func.count()).group_by(generation.c.status))
    return {status: count for status, count in rows}


def status_summary(conn: Connection, stall_timeout: float) -> dict[str, Any]:
    """The seed's status counts in one query over active rows (served by the partial index):
    queued, processing, stalled (no pose for ``stall_timeout``) and the oldest processing start
    (the seed's "Processing Time", MAX(NOW() - started_at))."""
    row = conn.execute(
        text(
            "SELECT count(*) FILTER (WHERE status = 'queued') AS queued,"
            " count(*) FILTER (WHERE status = 'processing') AS processing,"
            " count(*) FILTER (WHERE status = 'processing'"
            "   AND last_pose_at < now() - make_interval(secs => :stall)) AS stalled,"
            " min(started_at) FILTER (WHERE status = 'processing') AS oldest_started_at"
            " FROM pose_generation WHERE status IN ('queued', 'processing')"
        ),
        {"stall": stall_timeout},
    ).one()
    return dict(row._mapping)


def seed_duplicates(conn: Connection) -> Sequence[Any]:
    """The seed's duplicate query, verbatim."""
    return conn.execute(
        text(
            "SELECT generation_id, pose_library_id, COUNT(*)\n"
            "FROM generated_pose\n"
            "GROUP BY generation_id, pose_library_id\n"
            "HAVING COUNT(*) > 1"
        )
    ).all()
