"""Builders for the planning tests: plain dataclasses on a fixed clock, no I/O.

A generation named ``a`` lives in namespace ``poses``, has the uid (and generation id) ``uid-a`` and
its worker pods are named ``a-w<attempt>``. By default a row is processing attempt 1 at 5/50 poses,
started 100 s ago with its last pose 5 s ago; a pod runs since 120 s; nothing is near a limit."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, TypeVar

from posegen_common.checkpoint import GenerationState
from posegen_common.contract import GenerationSpec, GenerationStatus
from posegen_operator.actions import PatchStatus, Plan
from posegen_operator.model import (
    GenerationView,
    HeartbeatView,
    InvalidGeneration,
    PlanConfig,
    PodView,
    Policy,
    Snapshot,
)
from posegen_operator.rules import plan

NAMESPACE = "poses"
NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)  # the operator's clock
DB_NOW = NOW  # the database's clock (a test that needs them apart says so)
TOTAL = 50
POSES = 5

CONFIG = PlanConfig(
    max_concurrent=2,
    heartbeat_ttl=30.0,
    worker_startup_grace=60.0,
    backoff_base=10.0,
    backoff_max=300.0,
)
POLICY = Policy(stall_timeout=600.0, deadline=3600.0, max_recoveries=3)

A = TypeVar("A")


def ago(seconds: float, clock: dt.datetime = NOW) -> dt.datetime:
    return clock - dt.timedelta(seconds=seconds)


def stamp(value: dt.datetime) -> str:
    """A time as the status carries it."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key(name: str) -> tuple[str, str]:
    return (NAMESPACE, name)


def uid(name: str) -> str:
    return f"uid-{name}"


def config(**changes: Any) -> PlanConfig:
    return dataclasses.replace(CONFIG, **changes)


def policy(**changes: Any) -> Policy:
    return dataclasses.replace(POLICY, **changes)


def spec(name: str, total: int = TOTAL) -> GenerationSpec:
    return GenerationSpec(
        id=uid(name),
        namespace=NAMESPACE,
        name=name,
        project_id="project-1",
        generation_type="text",
        text_prompt="a dancer mid-leap",
        pose_library_ids=None,
        seed=42,
        total_expected_poses=total,
    )


def row(name: str, **changes: Any) -> GenerationState:
    """A processing row at attempt 1 (override any field)."""
    base = GenerationState(
        id=uid(name),
        status=GenerationStatus.PROCESSING,
        attempt=1,
        poses_completed=POSES,
        total_expected_poses=TOTAL,
        recoveries=0,
        attempt_reason=None,
        worker_started_at=None,
        last_recovery_reason=None,
        last_recovery_at=None,
        started_at=ago(100, DB_NOW),
        last_pose_at=ago(5, DB_NOW),
        completed_at=None,
        error_message=None,
        worker_pod_created_at=ago(100, DB_NOW),
    )
    return dataclasses.replace(base, **changes)


def queued_row(name: str, **changes: Any) -> GenerationState:
    """A registered row that never started."""
    fresh: dict[str, Any] = {
        "status": GenerationStatus.QUEUED,
        "attempt": 0,
        "poses_completed": 0,
        "started_at": None,
        "last_pose_at": None,
        "worker_pod_created_at": None,
    }
    return row(name, **(fresh | changes))


def pod(
    name: str,
    attempt: int = 1,
    phase: str = "Running",
    *,
    deleting: bool = False,
    exit_code: int | None = None,
    reason: str | None = None,
    running_for: float = 120.0,
) -> PodView:
    terminated = phase in ("Succeeded", "Failed")
    return PodView(
        name=f"{name}-w{attempt}",
        attempt=attempt,
        phase=phase,
        deleting=deleting,
        exit_code=exit_code,
        reason=reason,
        running_since=ago(running_for) if phase != "Pending" else None,
        finished_at=NOW if terminated else None,
        created_at=ago(running_for + 1),
    )


def heartbeat(attempt: int = 1, poses: int = POSES) -> HeartbeatView:
    return HeartbeatView(attempt=attempt, poses=poses)


def generation(
    name: str,
    *,
    row: GenerationState | None = None,
    pods: tuple[PodView, ...] = (),
    heartbeat: HeartbeatView | None = None,
    silent_for: float | None = None,
    status: dict[str, Any] | None = None,
    priority: int = 0,
    created_at: dt.datetime | None = None,
    suspend: bool = False,
    deleting: bool = False,
    has_finalizer: bool = True,
    policy: Policy = POLICY,
    recover_request: str | None = None,
    total: int = TOTAL,
) -> GenerationView:
    return GenerationView(
        namespace=NAMESPACE,
        name=name,
        uid=uid(name),
        created_at=created_at or ago(3600),
        spec_generation=1,
        priority=priority,
        suspend=suspend,
        deleting=deleting,
        has_finalizer=has_finalizer,
        policy=policy,
        spec=spec(name, total),
        status=dict(status or {}),
        recover_request=recover_request,
        row=row,
        pods=pods,
        heartbeat=heartbeat,
        heartbeat_silent_for=silent_for,
    )


def healthy(name: str, **changes: Any) -> GenerationView:
    """Processing attempt 1 with a running worker and a fresh heartbeat (override any part)."""
    parts: dict[str, Any] = {"row": row(name), "pods": (pod(name),), "heartbeat": heartbeat(1)}
    return generation(name, **(parts | changes))


def queued(name: str, **changes: Any) -> GenerationView:
    return generation(name, row=queued_row(name), **changes)


def observe(
    *views: GenerationView,
    now: dt.datetime = NOW,
    db_now: dt.datetime = DB_NOW,
    trustworthy: bool = True,
    first_pass: bool = False,
    orphans: frozenset[str] = frozenset(),
    redis_reachable: bool = True,
    redis_data_lost: bool = False,
    invalid: tuple[InvalidGeneration, ...] = (),
) -> Snapshot:
    return Snapshot(
        generations=views,
        now=now,
        db_now=db_now,
        heartbeats_trustworthy=trustworthy,
        first_pass=first_pass,
        orphan_row_ids=orphans,
        redis_reachable=redis_reachable,
        redis_data_lost=redis_data_lost,
        invalid=invalid,
    )


def run(*views: GenerationView, cfg: PlanConfig = CONFIG, **observed: Any) -> Plan:
    return plan(observe(*views, **observed), cfg)


# ---- reading a plan -----------------------------------------------------------------------------
def of_type(result: Plan, kind: type[A], name: str | None = None) -> list[A]:
    """The plan's actions of one type, optionally only those for one generation."""
    return [
        action
        for action in result.actions
        if isinstance(action, kind) and (name is None or getattr(action, "key", None) == key(name))
    ]


def patch_of(result: Plan, name: str) -> dict[str, Any]:
    """The status patch for one generation ({} when the plan has none)."""
    patches = of_type(result, PatchStatus, name)
    assert len(patches) <= 1, patches
    return patches[0].patch if patches else {}


def apply_patch(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of the status: None removes a key."""
    merged = dict(status)
    for field, value in patch.items():
        if value is None:
            merged.pop(field, None)
        else:
            merged[field] = value
    return merged


def settle(view: GenerationView, **observed: Any) -> GenerationView:
    """The view after its status patch was applied: what the next pass sees if nothing else moved."""
    result = run(view, **observed)
    return dataclasses.replace(view, status=apply_patch(view.status, patch_of(result, view.name)))


def steady(name: str, **changes: Any) -> GenerationView:
    """A healthy processing generation whose status already says so."""
    return settle(healthy(name, **changes))
