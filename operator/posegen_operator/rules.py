"""Decide: a pure function from what was snapshot to what to do. No I/O, no clock of its own.

Every rule of the operator lives here — admission and priority, suspend, cancel, completion,
deadline, crash/hang/stall/eviction/orphan detection, recovery backoff and its limit — and is
unit-tested with plain dataclasses and a fixed clock. ``act`` carries the result out."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

from posegen_common.checkpoint import GenerationState
from posegen_common.contract import GenerationSpec, GenerationStatus
from posegen_common.exit_codes import ExitMeaning, Fault, meaning
from posegen_operator.actions import (
    Action,
    AddFinalizer,
    CreatePod,
    DeletePod,
    Plan,
    PostEvent,
    Recovery,
    RegisterRow,
    RemoveFinalizer,
    RestoreWorkerAccess,
    RevokeCredentials,
    SetRowStatus,
    StartWorker,
)
from posegen_operator.model import (
    FINAL_PHASES,
    Decision,
    GenerationView,
    Phase,
    PlanConfig,
    PodView,
    Reason,
    Snapshot,
    worker_pod_name,
)
from posegen_operator.status import render, render_invalid, timestamp


def plan(snapshot: Snapshot, config: PlanConfig) -> Plan:
    """Decide for every generation. A generation whose decision fails (data no rule foresaw) is
    left out of this plan, named in ``Plan.skipped``; the others are decided as usual."""
    result = Plan()
    decisions: list[Decision] = []
    for view in snapshot.generations:
        own = Plan()
        try:
            decision = _decide(view, snapshot, config, own)
        except Exception as error:
            result.skipped.append((view.key, view.uid, error))
            continue
        result.merge(own)
        if decision is not None:
            decisions.append(decision)
    # A deleted generation's worker still runs until it has stopped: it keeps its slot till then.
    stopping = [v.namespace for v in snapshot.generations if v.deleting and any(not p.terminated for p in v.pods)]
    _admit(decisions, config, result, stopping)
    for decision in decisions:
        own = Plan()
        try:
            render(decision, snapshot, own)
        except Exception as error:
            result.skipped.append((decision.view.key, decision.view.uid, error))
            continue
        result.merge(own)
    for invalid in snapshot.invalid:
        render_invalid(invalid, snapshot, result)
    for generation_id in sorted(snapshot.orphan_row_ids):
        result.actions.append(
            SetRowStatus(("", ""), generation_id, GenerationStatus.CANCELLED, "its PoseGeneration no longer exists")
        )
        result.actions.append(RevokeCredentials(("", ""), generation_id))
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


def _decide(view: GenerationView, snapshot: Snapshot, config: PlanConfig, result: Plan) -> Decision | None:
    actions = result.actions
    if view.deleting:
        _cancel(view, actions, result)
        return None
    if view.row is None:
        actions.append(RegisterRow(view.key, view.spec))
    row = view.row or _fresh_row(view.spec)
    # The finalizer guards what a worker leaves (its pod, its credentials): a generation gets it
    # when its first worker is admitted (``_admit``), not while it waits. A queued one deleted
    # meanwhile leaves only its row, which is cancelled as an orphan.
    if not view.has_finalizer and row.attempt > 0:
        actions.append(AddFinalizer(view.key))
    decision = Decision(view, row)
    current = _current_pod(view.pods, row.attempt)
    for pod in view.pods:
        if pod is not current and not pod.deleting:
            actions.append(DeletePod(view.key, pod.name, 0 if pod.live else None))
            if pod.attempt is None:
                actions.append(
                    PostEvent(
                        view.key,
                        view.uid,
                        "Warning",
                        "MalformedWorkerPod",
                        f"pod {pod.name} has no valid posegen.io/attempt label: it is no one's worker and is deleted",
                    )
                )

    if row.final and view.status.get("phase") not in FINAL_PHASES:
        actions.append(RevokeCredentials(view.key, row.id))  # the generation is over: so is every login
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
        elapsed = (snapshot.db_now - row.started_at).total_seconds() - row.suspended_seconds
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
    _check_worker(decision, current, snapshot, config, result)
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
        actions.append(RevokeCredentials(view.key, row.id))
        done = f"{row.poses_completed}/{row.total_expected_poses}"
        actions.append(
            PostEvent(
                view.key,
                view.uid,
                "Normal",
                "Cancelled",
                f"generation cancelled at {done}; the recorded poses are kept",
            )
        )
    actions.append(RemoveFinalizer(view.key))


def _check_worker(
    decision: Decision, current: PodView | None, snapshot: Snapshot, config: PlanConfig, result: Plan
) -> None:
    """A processing generation: is its worker alive, heartbeating and making progress?"""
    view, row = decision.view, decision.row
    if not snapshot.redis_reachable:
        decision.degraded = ("RedisUnavailable", "Redis is unreachable: hang detection is paused")
    if current is not None and current.live:
        if snapshot.redis_data_lost:
            result.actions.append(RestoreWorkerAccess(view.key, row.id, row.attempt))
        _check_live_worker(decision, current, snapshot, config, result)
        return
    if current is None and row.worker_pod_created_at is None:
        _create_again(decision, snapshot, config, result)
        return
    budgeted = True
    if current is not None and current.terminated:
        exit_meaning = meaning(current.exit_code)
        if exit_meaning.fault == Fault.PERMANENT:
            detail = f"worker {current.name} exited with code {current.exit_code}: {exit_meaning.message}"
            _fail(decision, result.actions, exit_meaning.reason, detail)
            return
        reason, detail, budgeted = _exit_cause(current, exit_meaning)
    elif current is not None:
        reason, detail = Reason.EVICTED, f"worker pod {current.name} was deleted"
    elif snapshot.first_pass:
        reason, detail = Reason.ORPHANED, f"no worker pod for attempt {row.attempt} after an operator restart"
    else:
        reason, detail = Reason.EVICTED, f"worker pod for attempt {row.attempt} is gone"
    if view.manual_check:
        reason = Reason.MANUAL
    _recover(decision, reason, detail, snapshot, config, result, budgeted=budgeted)


def _exit_cause(pod: PodView, exit_meaning: ExitMeaning) -> tuple[Reason, str, bool]:
    """Why a worker that is not permanently failed exited: (reason, detail, budgeted)."""
    if pod.terminated_reason == "OOMKilled":
        return (
            Reason.OOM_KILLED,
            f"worker {pod.name} ran out of memory (OOMKilled): raise the worker's memory limit",
            True,
        )
    if exit_meaning.fault == Fault.TRANSIENT:
        return Reason(exit_meaning.reason), f"worker {pod.name} exited: {exit_meaning.message}", False
    if pod.reason == "Evicted" or pod.phase == "Succeeded":
        return Reason.EVICTED, f"worker {pod.name} was stopped ({pod.reason or 'exit 0'}) before finishing", True
    detail = f"worker {pod.name} exited with code {pod.exit_code}"
    if pod.terminated_message:
        detail += f": {pod.terminated_message.strip()[-200:]}"
    return Reason.CRASHED, detail, True


# Waiting reasons a new pod cannot cure: the image or the pod's configuration must be fixed.
_UNRECOVERABLE_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"}
)


def _check_live_worker(
    decision: Decision, current: PodView, snapshot: Snapshot, config: PlanConfig, result: Plan
) -> None:
    view, row = decision.view, decision.row
    heartbeat_ok = view.heartbeat is not None and view.heartbeat.attempt == row.attempt
    decision.worker_pod = current.name
    recovering = row.attempt_reason is not None and not heartbeat_ok
    decision.phase = Phase.RECOVERING if recovering else Phase.PROCESSING
    decision.message = (
        f"worker {current.name} starting after {row.attempt_reason}" if recovering else f"worker {current.name} running"
    )
    if recovering:
        decision.degraded = decision.degraded or (str(row.attempt_reason), decision.message)
    if current.phase != "Running":
        _check_starting_worker(decision, current, snapshot, config, result)
        return
    if (
        not heartbeat_ok
        and snapshot.heartbeats_trustworthy
        and _check_heartbeat(decision, current, snapshot, config, result)
    ):
        return
    quiet = (snapshot.db_now - row.last_pose_at).total_seconds() if row.last_pose_at else 0.0
    # The stall clock runs from this worker's start at the earliest (its pod may have been refused
    # or pending long after the attempt was claimed).
    if row.worker_started_at is not None:
        quiet = min(quiet, (snapshot.db_now - row.worker_started_at).total_seconds())
    if current.running_since is not None:
        quiet = min(quiet, (snapshot.now - current.running_since).total_seconds())
    if snapshot.database_back_for is not None:
        quiet = min(quiet, snapshot.database_back_for)  # nothing could be recorded during the outage
    if quiet > view.policy.stall_timeout:
        _recover(
            decision,
            Reason.STALLED,
            f"worker {current.name} heartbeats but recorded no pose for "
            f"{quiet:.0f}s (limit {view.policy.stall_timeout:.0f}s)",
            snapshot,
            config,
            result,
        )
        return
    result.due_in(view.policy.stall_timeout - quiet)


def _check_heartbeat(
    decision: Decision, current: PodView, snapshot: Snapshot, config: PlanConfig, result: Plan
) -> bool:
    """A running worker without a heartbeat: a hang only once this operator has seen the heartbeat
    missing for a whole TTL (never inferred from silence nobody watched), and not while a worker
    that has not reported in yet is still within its start-up grace. True if it recovered."""
    view, row = decision.view, decision.row
    if row.worker_started_at is None and not view.manual_check and current.running_since is not None:
        starting = (snapshot.now - current.running_since).total_seconds()
        grace_left = config.heartbeat_ttl + config.worker_startup_grace - starting
        if grace_left > 0:
            result.due_in(grace_left)
            return False
    silent = view.heartbeat_silent_for or 0.0
    if row.worker_started_at is not None:
        # The clock may have started before this worker existed (its pod refused, or pending).
        silent = min(silent, (snapshot.db_now - row.worker_started_at).total_seconds())
    if silent <= config.heartbeat_ttl:
        result.due_in(config.heartbeat_ttl - silent)
        return False
    _recover(
        decision,
        Reason.MANUAL if view.manual_check else Reason.HUNG,
        f"worker {current.name} is running but sent no heartbeat for attempt {row.attempt} in {silent:.0f}s "
        f"(limit {config.heartbeat_ttl:.0f}s)",
        snapshot,
        config,
        result,
    )
    return True


def _check_starting_worker(
    decision: Decision, current: PodView, snapshot: Snapshot, config: PlanConfig, result: Plan
) -> None:
    """A worker pod not running yet: say why at once; past the start-up timeout, fail if a new pod
    cannot help (the image or the configuration is wrong), replace it otherwise."""
    waiting = current.waiting_reason
    cause = f"{waiting}: {current.waiting_message}" if waiting and current.waiting_message else waiting
    if cause:
        decision.degraded = (waiting or "NotStarted", f"worker {current.name} is not running: {cause}")
    if current.created_at is None:
        return
    age = (snapshot.now - current.created_at).total_seconds()
    if age <= config.worker_start_timeout:
        result.due_in(config.worker_start_timeout - age)
        return
    detail = f"worker {current.name} did not start within {config.worker_start_timeout:.0f}s" + (
        f" ({cause})" if cause else ""
    )
    if waiting in _UNRECOVERABLE_WAITING:
        _fail(decision, result.actions, "WorkerNotStarted", detail)
        return
    _recover(decision, Reason.NOT_STARTED, detail, snapshot, config, result)


def _create_again(decision: Decision, snapshot: Snapshot, config: PlanConfig, result: Plan) -> None:
    """The current attempt's pod was never created (refused by the API server, or the operator
    stopped first): create it again under the same attempt, with backoff after refusals. No
    worker of this attempt ever ran, so this is no recovery and spends nothing."""
    view, row = decision.view, decision.row
    decision.worker_pod = worker_pod_name(view.name, row.attempt)
    decision.phase = Phase.RECOVERING if row.attempt_reason is not None else Phase.PROCESSING
    decision.message = f"creating worker {decision.worker_pod}"
    if row.pod_refusals and row.last_pod_error:
        decision.degraded = ("PodCreateRefused", f"worker pod refused: {row.last_pod_error}")
        decision.message = f"worker pod {decision.worker_pod} refused ({row.pod_refusals}x): {row.last_pod_error}"
        if row.last_pod_error_at is not None:
            retry_at = row.last_pod_error_at + dt.timedelta(seconds=backoff_seconds(row.pod_refusals, config))
            remaining = (retry_at - snapshot.db_now).total_seconds()
            if remaining > 0:
                decision.message += f"; retrying at {timestamp(retry_at)}"
                result.due_in(remaining)
                return
    result.actions.append(CreatePod(view.key, view.uid, row.id, row.attempt))


def backoff_seconds(recoveries: int, config: PlanConfig) -> float:
    """No wait before the first recovery, then base, 2 x base, 4 x base... capped."""
    if recoveries <= 0:
        return 0.0
    return float(min(config.backoff_max, config.backoff_base * 2 ** (recoveries - 1)))


def _recover(
    decision: Decision,
    reason: Reason,
    detail: str,
    snapshot: Snapshot,
    config: PlanConfig,
    result: Plan,
    *,
    budgeted: bool = True,
) -> None:
    """Replace the worker with a new attempt, after the backoff; a ``budgeted`` recovery spends one
    of the generation's recoveries and fails it past the limit. Causes that are not the
    generation's fault are retried with backoff until the deadline instead."""
    view, row = decision.view, decision.row
    progress = (row.poses_completed, row.total_expected_poses)
    decision.degraded = (str(reason), detail)
    if budgeted and row.recoveries >= view.policy.max_recoveries:
        decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="fail")
        _fail(
            decision,
            result.actions,
            "MaxRecoveriesExceeded",
            f"{row.recoveries} recoveries already (limit {view.policy.max_recoveries}); last cause {reason}: {detail}",
        )
        return
    wait = backoff_seconds(row.recoveries if budgeted else row.transient_retries + 1, config)
    decision.phase = Phase.RECOVERING
    if row.last_recovery_at is not None and wait > 0:
        resume_at = row.last_recovery_at + dt.timedelta(seconds=wait)
        remaining = (resume_at - snapshot.db_now).total_seconds()
        if remaining > 0:
            decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="backoff")
            # An absolute time keeps the message (and so the status) still while waiting.
            decision.message = f"{reason}: {detail}; next attempt at {timestamp(resume_at)} (backoff)"
            result.due_in(remaining)
            return
    decision.recovery = Recovery(row.id, view.key, reason, detail, *progress, outcome="recover")
    start = StartWorker(view.key, view.uid, row.id, row.attempt, reason, detail, *progress, budgeted=budgeted)
    decision.start = start
    decision.worker_pod = worker_pod_name(view.name, start.attempt)
    decision.message = f"recovering from {reason}: {detail}"
    # The replaced pod may be frozen or stuck: it is fenced by the new attempt, so no grace is owed.
    _stop_workers(view, result.actions)
    result.actions.append(start)
    result.actions.append(
        PostEvent(
            view.key,
            view.uid,
            "Warning",
            str(reason),
            f"{detail}; resuming from checkpoint {progress[0]}/{progress[1]} as attempt {start.attempt}",
        )
    )


def _fail(decision: Decision, actions: list[Action], reason: str, message: str) -> None:
    view, row = decision.view, decision.row
    decision.phase, decision.message = Phase.FAILED, f"{reason}: {message}"
    decision.failure = (reason, message)
    decision.holds_slot = False
    _stop_workers(view, actions)
    actions.append(SetRowStatus(view.key, row.id, GenerationStatus.FAILED, f"{reason}: {message}"))
    actions.append(RevokeCredentials(view.key, row.id))


def _admit(decisions: list[Decision], config: PlanConfig, result: Plan, stopping: list[str]) -> None:
    """Start waiting generations in priority, then age, order while worker slots are free, and
    while their namespace holds fewer than its share (one tenant cannot take every slot)."""
    holding = Counter([*stopping, *(d.view.namespace for d in decisions if d.holds_slot)])
    waiting = sorted(
        (d for d in decisions if d.wants_slot),
        key=lambda d: (-d.view.priority, d.view.created_at, d.view.namespace, d.view.name),
    )
    free = max(0, config.max_concurrent - sum(holding.values()))
    admitted: list[Decision] = []
    for decision in waiting:
        namespace = decision.view.namespace
        if len(admitted) < free and not (0 < config.max_per_namespace <= holding[namespace]):
            admitted.append(decision)
            holding[namespace] += 1
    for decision in admitted:
        view, row = decision.view, decision.row
        if not view.has_finalizer and row.attempt == 0:
            result.actions.append(AddFinalizer(view.key))  # its first worker: see _decide
        start = StartWorker(
            view.key, view.uid, row.id, row.attempt, None, "", row.poses_completed, row.total_expected_poses
        )
        result.actions.append(start)
        decision.start = start
        decision.phase, decision.holds_slot = Phase.PROCESSING, True
        decision.worker_pod = worker_pod_name(view.name, start.attempt)
        resumed = row.status == GenerationStatus.SUSPENDED
        decision.message = f"worker {decision.worker_pod} starting" + (" (resumed)" if resumed else "")
    for decision in waiting:
        if decision in admitted:
            continue
        decision.phase = Phase.QUEUED
        if 0 < config.max_per_namespace <= holding[decision.view.namespace]:
            decision.message = (
                f"waiting for a worker slot ({config.max_per_namespace} running at most in namespace "
                f"{decision.view.namespace})"
            )
        else:
            decision.message = f"waiting for a worker slot ({config.max_concurrent} running at most)"
        result.queued.append(decision.row.id)
