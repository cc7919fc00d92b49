"""Decide: a pure function from what was observed to what to do. No I/O, no clock of its own.

Every rule of the operator lives here — admission and priority, suspend, cancel, completion,
deadline, crash/hang/stall/eviction/orphan detection, recovery backoff and its limit — and is
unit-tested with plain dataclasses and a fixed clock. ``act`` carries the result out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from posegen_common.checkpoint import GenerationSpec, GenerationState
from posegen_common.exit_codes import Fault, meaning
from posegen_common.schema import GenerationStatus


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    PROCESSING = "Processing"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})


class Reason(StrEnum):
    """Why a worker was replaced."""

    CRASHED = "Crashed"
    HUNG = "Hung"
    STALLED = "Stalled"
    EVICTED = "Evicted"
    ORPHANED = "OrphanedAfterRestart"
    MANUAL = "Manual"


@dataclass(frozen=True)
class Policy:
    stall_timeout: float
    deadline: float
    max_recoveries: int


@dataclass(frozen=True)
class PlanConfig:
    max_concurrent: int
    heartbeat_ttl: float
    worker_startup_grace: float
    backoff_base: float
    backoff_max: float


@dataclass(frozen=True)
class PodView:
    name: str
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool
    exit_code: int | None = None
    reason: str | None = None  # pod.status.reason: Evicted, NodeLost, ...
    running_since: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def live(self) -> bool:
        return not self.deleting and self.phase in ("Pending", "Running", "Unknown")

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class HeartbeatView:
    attempt: int
    poses: int


@dataclass(frozen=True)
class GenerationView:
    """One PoseGeneration with everything observed about it."""

    namespace: str
    name: str
    uid: str
    created_at: dt.datetime
    spec_generation: int
    priority: int
    suspend: bool
    deleting: bool
    has_finalizer: bool
    policy: Policy
    spec: GenerationSpec
    status: dict[str, Any]
    recover_request: str | None = None
    row: GenerationState | None = None
    pods: tuple[PodView, ...] = ()
    heartbeat: HeartbeatView | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def manual_check(self) -> bool:
        return self.recover_request is not None and self.recover_request != self.status.get("lastRecoveryRequest")


@dataclass(frozen=True)
class Observed:
    generations: tuple[GenerationView, ...]
    now: dt.datetime  # the operator's clock, for pod ages
    db_now: dt.datetime  # the database's clock, for row timestamps
    heartbeats_trustworthy: bool  # Redis reachable and up longer than one heartbeat TTL
    first_pass: bool  # the start-up sweep after the operator (re)started or became leader
    orphan_row_ids: frozenset[str] = frozenset()  # unfinished rows whose resource is gone


# ---- actions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AddFinalizer:
    key: tuple[str, str]


@dataclass(frozen=True)
class RemoveFinalizer:
    key: tuple[str, str]


@dataclass(frozen=True)
class Register:
    key: tuple[str, str]
    spec: GenerationSpec


@dataclass(frozen=True)
class StartWorker:
    """Claim attempt ``expected_attempt + 1`` (fencing every earlier worker), then create its pod."""

    key: tuple[str, str]
    uid: str
    generation_id: str
    expected_attempt: int
    reason: Reason | None = None
    detail: str = ""
    poses_completed: int = 0
    total: int = 0

    @property
    def attempt(self) -> int:
        return self.expected_attempt + 1


@dataclass(frozen=True)
class DeletePod:
    key: tuple[str, str]
    pod: str
    grace_seconds: int | None = None  # None: the pod's own grace period (a graceful stop)


@dataclass(frozen=True)
class SetRowStatus:
    key: tuple[str, str]
    generation_id: str
    status: GenerationStatus
    message: str | None = None


@dataclass(frozen=True)
class PatchStatus:
    key: tuple[str, str]
    patch: dict[str, Any]


@dataclass(frozen=True)
class Emit:
    key: tuple[str, str]
    uid: str
    type: str  # Normal or Warning
    reason: str
    message: str


Action = AddFinalizer | RemoveFinalizer | Register | StartWorker | DeletePod | SetRowStatus | PatchStatus | Emit


@dataclass(frozen=True)
class Recovery:
    """A stuck generation found by this pass, and what was decided for it."""

    generation_id: str
    key: tuple[str, str]
    reason: Reason
    detail: str
    poses_completed: int
    total: int
    outcome: str  # "recover", "backoff" or "fail"


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # generation ids waiting for a slot, in order
    retry_after: float | None = None  # seconds until something time-based is due

    def due_in(self, seconds: float) -> None:
        self.retry_after = seconds if self.retry_after is None else min(self.retry_after, seconds)


# ---- deciding -----------------------------------------------------------------------------------
@dataclass
class _Decision:
    view: GenerationView
    row: GenerationState
    phase: Phase | None = None
    message: str = ""
    worker_pod: str | None = None
    holds_slot: bool = False
    wants_slot: bool = False
    recovery: Recovery | None = None
    start: StartWorker | None = None
    condition: dict[str, Any] | None = None
    transition: tuple[str, str, str] | None = None  # (type, reason, message) of an Event


def plan(observed: Observed, config: PlanConfig) -> Plan:
    result = Plan()
    decisions: list[_Decision] = []
    for view in observed.generations:
        decision = _decide(view, observed, config, result)
        if decision is not None:
            decisions.append(decision)
    # A deleted generation's worker still runs until it has stopped: it keeps its slot till then.
    stopping = sum(1 for v in observed.generations if v.deleting and any(not p.terminated for p in v.pods))
    _admit(decisions, config, result, busy=stopping)
    for decision in decisions:
        _finish(decision, observed, result)
    for generation_id in sorted(observed.orphan_row_ids):
        result.actions.append(
            SetRowStatus(("", ""), generation_id, GenerationStatus.CANCELLED, "its PoseGeneration no longer exists")
        )
    return result


def _fresh_row(spec: GenerationSpec) -> GenerationState:
    return GenerationState(
        id=spec.id,
        status=GenerationStatus.QUEUED,
        attempt=0,
        poses_completed=0,
        total_expected_poses=spec.total_expected_poses,
        recoveries=0,
        attempt_reason=None,
        worker_started_at=None,
        last_recovery_reason=None,
        last_recovery_at=None,
        started_at=None,
        last_pose_at=None,
        completed_at=None,
        error_message=None,
    )


def _decide(view: GenerationView, observed: Observed, config: PlanConfig, result: Plan) -> _Decision | None:
    actions = result.actions
    if view.deleting:
        _cancel(view, actions, result)
        return None
    if not view.has_finalizer:
        actions.append(AddFinalizer(view.key))
    if view.row is None:
        actions.append(Register(view.key, view.spec))
    row = view.row or _fresh_row(view.spec)
    decision = _Decision(view, row)
    current = _current_pod(view.pods, row.attempt)
    for pod in view.pods:
        if pod is not current and not pod.deleting:
            actions.append(DeletePod(view.key, pod.name, 0 if pod.live else None))

    if row.status == GenerationStatus.COMPLETED:
        decision.phase, decision.message = Phase.COMPLETED, f"all {row.total_expected_poses} poses recorded"
        decision.worker_pod = current.name if current else None
        return decision
    if row.status in (GenerationStatus.FAILED, GenerationStatus.CANCELLED):
        decision.phase = Phase.FAILED if row.status == GenerationStatus.FAILED else Phase.CANCELLED
        decision.message = row.error_message or view.status.get("message", "")
        _stop_workers(view, actions)
        return decision

    if view.suspend:
        # The row is suspended at once and the worker stopped gracefully: its pose in flight is still
        # recorded (a suspended row accepts its current attempt's last pose) and then it exits. A
        # resume claims a new attempt, which fences the old worker if it is somehow still running.
        stopping = [pod for pod in view.pods if not pod.terminated]
        _stop_workers(view, actions, grace=None)
        decision.phase = Phase.SUSPENDED
        if row.status != GenerationStatus.SUSPENDED:
            actions.append(SetRowStatus(view.key, row.id, GenerationStatus.SUSPENDED))
        if stopping:
            decision.holds_slot = True
            decision.worker_pod = stopping[0].name  # until it is gone: then the generation is at rest
            decision.message = f"stopping worker {stopping[0].name} at a checkpoint"
            result.due_in(1)
        else:
            decision.message = f"suspended at {row.poses_completed}/{row.total_expected_poses}; progress kept"
        return decision

    if row.status == GenerationStatus.PROCESSING and row.started_at is not None:
        elapsed = (observed.db_now - row.started_at).total_seconds()
        if elapsed > view.policy.deadline:
            _fail(
                decision,
                actions,
                "DeadlineExceeded",
                f"not completed within {view.policy.deadline:.0f}s "
                f"({row.poses_completed}/{row.total_expected_poses} poses recorded)",
            )
            return decision
        result.due_in(view.policy.deadline - elapsed)

    if row.status in (GenerationStatus.QUEUED, GenerationStatus.SUSPENDED):
        decision.wants_slot = True
        return decision

    decision.holds_slot = True
    _check_worker(decision, current, observed, config, result)
    return decision


def _current_pod(pods: Sequence[PodView], attempt: int) -> PodView | None:
    """The pod of the current attempt (a live one first, if somehow there are two)."""
    mine = [pod for pod in pods if pod.attempt == attempt]
    return next((pod for pod in mine if pod.live), mine[0] if mine else None)


def _stop_workers(view: GenerationView, actions: list[Action], grace: int | None = 0) -> None:
    for pod in view.pods:
        if pod.live:
            actions.append(DeletePod(view.key, pod.name, grace))


def _cancel(view: GenerationView, actions: list[Action], result: Plan) -> None:
    """Deletion is cancellation: stop the worker gracefully, mark the row, keep recorded poses."""
    if not view.has_finalizer:
        return
    if any(pod.live for pod in view.pods):
        _stop_workers(view, actions, grace=None)
        result.due_in(1)
        return
    if any(not pod.terminated for pod in view.pods):
        result.due_in(1)  # still terminating: its last pose may be in flight
        return
    row = view.row
    if row is not None and not row.final:
        actions.append(SetRowStatus(view.key, row.id, GenerationStatus.CANCELLED, "cancelled by deletion"))
        done = f"{row.poses_completed}/{row.total_expected_poses}"
        actions.append(
            Emit(
                view.key,
                view.uid,
                "Normal",
                "Cancelled",
                f"generation cancelled at {done}; the recorded poses are kept",
            )
        )
    actions.append(RemoveFinalizer(view.key))


def _check_worker(
    decision: _Decision, current: PodView | None, observed: Observed, config: PlanConfig, result: Plan
) -> None:
    """A processing generation: is its worker alive, heartbeating and making progress?"""
    view, row = decision.view, decision.row
    heartbeat_ok = view.heartbeat is not None and view.heartbeat.attempt == row.attempt
    if current is not None and current.live:
        decision.worker_pod = current.name
        recovering = row.attempt_reason is not None and not heartbeat_ok
        decision.phase = Phase.RECOVERING if recovering else Phase.PROCESSING
        decision.message = (
            f"worker {current.name} starting after {row.attempt_reason}"
            if recovering
            else f"worker {current.name} running"
        )
        if current.phase != "Running":
            return
        if not heartbeat_ok and observed.heartbeats_trustworthy:
            if row.worker_started_at is not None:
                # The worker reported in, so it has been heartbeating: silence past one TTL is a hang.
                waited = (observed.db_now - row.worker_started_at).total_seconds()
                patience = config.heartbeat_ttl
            else:
                waited = (observed.now - current.running_since).total_seconds() if current.running_since else 0.0
                patience = config.heartbeat_ttl + (0 if view.manual_check else config.worker_startup_grace)
            if waited > patience:
                reason = Reason.MANUAL if view.manual_check else Reason.HUNG
                _recover(
                    decision,
                    reason,
                    f"worker {current.name} is running but sent no heartbeat for "
                    f"attempt {row.attempt} within {config.heartbeat_ttl:.0f}s",
                    observed,
                    config,
                    result,
                )
                return
            result.due_in(patience - waited)
        quiet = (observed.db_now - row.last_pose_at).total_seconds() if row.last_pose_at else 0.0
        if quiet > view.policy.stall_timeout:
            _recover(
                decision,
                Reason.STALLED,
                f"worker {current.name} heartbeats but recorded no pose for "
                f"{quiet:.0f}s (limit {view.policy.stall_timeout:.0f}s)",
                observed,
                config,
                result,
            )
            return
        result.due_in(view.policy.stall_timeout - quiet)
        return

    if current is not None and current.terminated:
        code = current.exit_code
        exit_meaning = meaning(code)
        if exit_meaning.fault == Fault.PERMANENT:
            _fail(
                decision,
                result.actions,
                "PermanentFailure",
                f"worker {current.name} exited with code {code}: {exit_meaning.message}",
            )
            return
        if current.reason == "Evicted" or current.phase == "Succeeded":
            reason, detail = (
                Reason.EVICTED,
                f"worker {current.name} was stopped ({current.reason or 'exit 0'}) before finishing",
            )
        else:
            reason, detail = Reason.CRASHED, f"worker {current.name} exited with code {code}"
    elif current is not None:
        reason, detail = Reason.EVICTED, f"worker pod {current.name} was deleted"
    elif observed.first_pass:
        reason, detail = Reason.ORPHANED, f"no worker pod for attempt {row.attempt} after an operator restart"
    else:
        reason, detail = Reason.EVICTED, f"worker pod for attempt {row.attempt} is gone"
    if view.manual_check:
        reason = Reason.MANUAL
    _recover(decision, reason, detail, observed, config, result)


def backoff_seconds(recoveries: int, config: PlanConfig) -> float:
    """No wait before the first recovery, then base, 2 x base, 4 x base... capped."""
    if recoveries <= 0:
        return 0.0
    return float(min(config.backoff_max, config.backoff_base * 2 ** (recoveries - 1)))


def _recover(
    decision: _Decision, reason: Reason, detail: str, observed: Observed, config: PlanConfig, result: Plan
) -> None:
    view, row = decision.view, decision.row
    progress = (row.poses_completed, row.total_expected_poses)
    if row.recoveries >= view.policy.max_recoveries:
        decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="fail")
        _fail(
            decision,
            result.actions,
            "MaxRecoveriesExceeded",
            f"{row.recoveries} recoveries already (limit {view.policy.max_recoveries}); last cause {reason}: {detail}",
        )
        return
    wait = backoff_seconds(row.recoveries, config)
    decision.phase = Phase.RECOVERING
    if row.last_recovery_at is not None and wait > 0:
        resume_at = row.last_recovery_at + dt.timedelta(seconds=wait)
        remaining = (resume_at - observed.db_now).total_seconds()
        if remaining > 0:
            decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="backoff")
            # An absolute time keeps the message (and so the status) still while waiting.
            decision.message = f"{reason}: {detail}; next attempt at {_timestamp(resume_at)} (backoff)"
            result.due_in(remaining)
            return
    decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="recover")
    start = StartWorker(view.key, view.uid, row.id, row.attempt, reason, detail, *progress)
    decision.start = start
    decision.worker_pod = worker_pod_name(view.name, start.attempt)
    decision.message = f"recovering from {reason}: {detail}"
    decision.condition = _condition("Recovered", "True", reason, detail)
    # The replaced pod may be frozen or stuck: it is fenced by the new attempt, so no grace is owed.
    _stop_workers(view, result.actions)
    result.actions.append(start)
    result.actions.append(
        Emit(
            view.key,
            view.uid,
            "Warning",
            str(reason),
            f"{detail}; resuming from checkpoint {progress[0]}/{progress[1]} as attempt {start.attempt}",
        )
    )


def _fail(decision: _Decision, actions: list[Action], reason: str, message: str) -> None:
    view, row = decision.view, decision.row
    decision.phase, decision.message = Phase.FAILED, f"{reason}: {message}"
    decision.condition = _condition("Failed", "True", reason, message)
    decision.holds_slot = False
    _stop_workers(view, actions)
    actions.append(SetRowStatus(view.key, row.id, GenerationStatus.FAILED, f"{reason}: {message}"))


def _admit(decisions: list[_Decision], config: PlanConfig, result: Plan, busy: int) -> None:
    """Start waiting generations in priority, then age, order while worker slots are free."""
    busy += sum(1 for decision in decisions if decision.holds_slot)
    waiting = sorted(
        (d for d in decisions if d.wants_slot),
        key=lambda d: (-d.view.priority, d.view.created_at, d.view.namespace, d.view.name),
    )
    free = max(0, config.max_concurrent - busy)
    for decision in waiting[:free]:
        view, row = decision.view, decision.row
        start = StartWorker(
            view.key, view.uid, row.id, row.attempt, None, "", row.poses_completed, row.total_expected_poses
        )
        result.actions.append(start)
        decision.start = start
        decision.phase, decision.holds_slot = Phase.PROCESSING, True
        decision.worker_pod = worker_pod_name(view.name, start.attempt)
        resumed = row.status == GenerationStatus.SUSPENDED
        decision.message = f"worker {decision.worker_pod} starting" + (" (resumed)" if resumed else "")
    for decision in waiting[free:]:
        decision.phase = Phase.QUEUED
        decision.message = f"waiting for a worker slot ({config.max_concurrent} running at most)"
        result.queued.append(decision.row.id)


def worker_pod_name(generation_name: str, attempt: int) -> str:
    return f"{generation_name}-w{attempt}"


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def _timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_PHASE_EVENTS = {
    Phase.QUEUED: ("Normal", "Queued"),
    Phase.PROCESSING: ("Normal", "Started"),
    Phase.SUSPENDED: ("Normal", "Suspended"),
    Phase.COMPLETED: ("Normal", "Completed"),
    Phase.FAILED: ("Warning", "Failed"),
    Phase.CANCELLED: ("Normal", "Cancelled"),
}


def _finish(decision: _Decision, observed: Observed, result: Plan) -> None:
    """Turn a decision into the status it implies; patch only what differs (level-based, quiet)."""
    view, row = decision.view, decision.row
    if decision.recovery is not None:
        result.recoveries.append(decision.recovery)
    phase = decision.phase or Phase.PENDING
    start = decision.start
    recovered = start is not None and start.reason is not None
    last_reason = str(start.reason) if start is not None and start.reason is not None else row.last_recovery_reason
    desired: dict[str, Any] = {
        "phase": str(phase),
        "generationId": row.id,
        "posesCompleted": row.poses_completed,
        "totalExpectedPoses": row.total_expected_poses,
        "progress": f"{row.poses_completed}/{row.total_expected_poses}",
        "workerPod": decision.worker_pod,
        "attempt": start.attempt if start else row.attempt,
        "recoveries": row.recoveries + (1 if recovered else 0),
        "lastRecoveryReason": last_reason,
        "lastRecoveryTime": _timestamp(observed.db_now if recovered else row.last_recovery_at),
        "startedAt": _timestamp(row.started_at),
        "completedAt": _timestamp(row.completed_at) if phase in FINAL_PHASES else None,
        "message": decision.message,
        "observedGeneration": view.spec_generation,
    }
    if view.manual_check:
        desired["lastRecoveryRequest"] = view.recover_request
    conditions = _conditions(view.status.get("conditions") or [], phase, decision, observed.now)
    patch = {key: value for key, value in desired.items() if view.status.get(key) != value}
    if conditions != (view.status.get("conditions") or []):
        patch["conditions"] = conditions
    if patch:
        result.actions.append(PatchStatus(view.key, patch))
    previous = view.status.get("phase")
    if previous != phase and phase in _PHASE_EVENTS and not (phase == Phase.PROCESSING and previous == "Recovering"):
        kind, reason = _PHASE_EVENTS[phase]
        result.actions.append(Emit(view.key, view.uid, kind, reason, decision.message))


def _conditions(
    existing: list[dict[str, Any]], phase: Phase, decision: _Decision, now: dt.datetime
) -> list[dict[str, Any]]:
    """Progressing, Suspended, Complete and Failed follow the phase; Recovered keeps the last recovery."""
    by_type = {c["type"]: c for c in existing}
    stamp = _timestamp(now)

    def put(kind: str, status: str, reason: str, message: str) -> None:
        old = by_type.get(kind)
        if old and old.get("status") == status and old.get("reason") == reason and old.get("message") == message:
            return
        since = old["lastTransitionTime"] if old and old.get("status") == status else stamp
        by_type[kind] = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }

    active = phase in (Phase.PROCESSING, Phase.RECOVERING)
    put("Progressing", "True" if active else "False", str(phase), decision.message)
    if phase == Phase.SUSPENDED or "Suspended" in by_type:
        put(
            "Suspended",
            "True" if phase == Phase.SUSPENDED else "False",
            "Suspended" if phase == Phase.SUSPENDED else "Resumed",
            decision.message,
        )
    if phase == Phase.COMPLETED:
        put("Complete", "True", "AllPosesRecorded", decision.message)
    if decision.condition is not None:
        c = decision.condition
        put(c["type"], c["status"], c["reason"], c["message"])
    return [by_type[kind] for kind in sorted(by_type)]
