"""Status rendering: the status subresource, its conditions and the phase Events a decision implies.
Only what differs from the observed status is patched, so a quiet generation costs no write."""

from __future__ import annotations

import datetime as dt
from typing import Any

from posegen_operator.actions import PatchStatus, Plan, PostEvent
from posegen_operator.model import FINAL_PHASES, Decision, InvalidGeneration, Phase, Reason, Snapshot


def timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


PHASE_EVENTS = {
    Phase.QUEUED: ("Normal", "Queued"),
    Phase.PROCESSING: ("Normal", "Started"),
    Phase.SUSPENDED: ("Normal", "Suspended"),
    Phase.COMPLETED: ("Normal", "Completed"),
    Phase.FAILED: ("Warning", "Failed"),
    Phase.CANCELLED: ("Normal", "Cancelled"),
}


def render(decision: Decision, snapshot: Snapshot, result: Plan) -> None:
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
        "recoveries": row.recoveries + (1 if recovered and start is not None and start.budgeted else 0),
        "lastRecoveryReason": last_reason,
        "lastRecoveryTime": timestamp(snapshot.db_now if recovered else row.last_recovery_at),
        "startedAt": timestamp(row.started_at),
        "completedAt": timestamp(row.completed_at) if phase in FINAL_PHASES else None,
        "message": decision.message,
        "observedGeneration": view.spec_generation,
    }
    if view.manual_check:
        desired["lastRecoveryRequest"] = view.recover_request
    existing = view.status.get("conditions") or []
    conditions = updated_conditions(existing, desired_conditions(phase, decision), view.spec_generation, snapshot.now)
    patch = {key: value for key, value in desired.items() if view.status.get(key) != value}
    if conditions != existing:
        patch["conditions"] = conditions
    if patch:
        result.actions.append(PatchStatus(view.key, patch))
    previous = view.status.get("phase")
    if previous != phase and phase in PHASE_EVENTS and not (phase == Phase.PROCESSING and previous == "Recovering"):
        kind, reason = PHASE_EVENTS[phase]
        result.actions.append(PostEvent(view.key, view.uid, kind, reason, decision.message))
    _announce_degradation(decision, existing, result)


def render_invalid(invalid: InvalidGeneration, snapshot: Snapshot, result: Plan) -> None:
    """A generation the operator cannot read: it says so in its status and one Event."""
    existing = invalid.status.get("conditions") or []
    desired = {kind: ("False", "InvalidObject", "") for kind in CONDITION_TYPES}
    desired["Degraded"] = ("True", "InvalidObject", invalid.message)
    conditions = updated_conditions(existing, desired, invalid.spec_generation, snapshot.now)
    if conditions != existing or invalid.status.get("message") != invalid.message:
        result.actions.append(PatchStatus(invalid.key, {"message": invalid.message, "conditions": conditions}))
        result.actions.append(PostEvent(invalid.key, invalid.uid, "Warning", "InvalidObject", invalid.message))


ACTIVE_PHASES = frozenset({"Pending", "Queued", "Processing", "Recovering"})


def outage_patches(generations: list[dict[str, Any]], reason: str, message: str, now: dt.datetime) -> list[PatchStatus]:
    """While the database is unreachable no pass can decide anything, but every generation in
    play says so: Degraded with the reason, its other conditions as they were."""
    patches = []
    for body in generations:
        status = body.get("status") or {}
        if status.get("phase", "Pending") not in ACTIVE_PHASES:
            continue
        existing = status.get("conditions") or []
        desired = {c["type"]: (c["status"], c.get("reason", ""), c.get("message", "")) for c in existing}
        desired = {kind: desired.get(kind, ("Unknown", reason, "")) for kind in CONDITION_TYPES}
        desired["Degraded"] = ("True", reason, message)
        generation = int(body["metadata"].get("generation") or 0)
        conditions = updated_conditions(existing, desired, generation, now)
        if conditions != existing:
            meta = body["metadata"]
            patches.append(PatchStatus((meta["namespace"], meta["name"]), {"conditions": conditions}))
    return patches


def _announce_degradation(decision: Decision, existing: list[dict[str, Any]], result: Plan) -> None:
    """An Event when the generation becomes degraded for a cause no recovery Event tells of (a
    refused pod, a pod that does not start, Redis unreachable), once per change of cause."""
    if decision.degraded is None or decision.degraded[0] in _RECOVERY_REASONS:
        return
    reason, message = decision.degraded
    old = next((c for c in existing if c.get("type") == "Degraded"), {})
    if old.get("status") != "True" or old.get("reason") != reason or old.get("message") != message:
        view = decision.view
        result.actions.append(PostEvent(view.key, view.uid, "Warning", reason, message))


_RECOVERY_REASONS = frozenset(str(reason) for reason in Reason)
CONDITION_TYPES = ("Complete", "Degraded", "Failed", "Progressing", "Suspended")


def desired_conditions(phase: Phase, decision: Decision) -> dict[str, tuple[str, str, str]]:
    """Each condition type's (status, reason, message), describing the generation as it is now
    (the API conventions; what happened before is in the status fields and Events)."""
    failure = decision.failure
    if phase == Phase.FAILED and failure is None:
        reason, _, message = (decision.row.error_message or "Failed: ").partition(": ")
        failure = (reason or "Failed", message)
    active = phase in (Phase.PROCESSING, Phase.RECOVERING)
    degraded = decision.degraded if decision.degraded is not None and phase not in FINAL_PHASES else None
    return {
        "Progressing": ("True" if active else "False", str(phase), decision.message),
        "Degraded": ("True", *degraded) if degraded else ("False", "AsExpected", ""),
        "Suspended": ("True", "Suspended", decision.message)
        if phase == Phase.SUSPENDED
        else ("False", "NotSuspended", ""),
        "Complete": ("True", "AllPosesRecorded", decision.message)
        if phase == Phase.COMPLETED
        else ("False", str(phase), ""),
        "Failed": ("True", *failure) if phase == Phase.FAILED and failure else ("False", "NotFailed", ""),
    }


def updated_conditions(
    existing: list[dict[str, Any]], desired: dict[str, tuple[str, str, str]], generation: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """The conditions to write: unchanged ones kept as they are, a transition time only when a
    condition's status changes, each with the spec generation it was computed for."""
    by_type = {c.get("type"): c for c in existing}
    stamp = timestamp(now)
    conditions = []
    for kind in CONDITION_TYPES:
        status, reason, message = desired[kind]
        old = by_type.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else stamp
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or stamp,
                "observedGeneration": generation,
            }
        )
    return conditions
