"""Status rendering: the status subresource, its conditions and the phase Events a decision implies.
Only what differs from the observed status is patched, so a quiet generation costs no write."""

from __future__ import annotations

import datetime as dt
from typing import Any

from posegen_operator.actions import PatchStatus, Plan, PostEvent
from posegen_operator.model import FINAL_PHASES, Decision, Phase, Snapshot


def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


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
        "recoveries": row.recoveries + (1 if recovered else 0),
        "lastRecoveryReason": last_reason,
        "lastRecoveryTime": timestamp(snapshot.db_now if recovered else row.last_recovery_at),
        "startedAt": timestamp(row.started_at),
        "completedAt": timestamp(row.completed_at) if phase in FINAL_PHASES else None,
        "message": decision.message,
        "observedGeneration": view.spec_generation,
    }
    if view.manual_check:
        desired["lastRecoveryRequest"] = view.recover_request
    conditions = updated_conditions(view.status.get("conditions") or [], phase, decision, snapshot.now)
    patch = {key: value for key, value in desired.items() if view.status.get(key) != value}
    if conditions != (view.status.get("conditions") or []):
        patch["conditions"] = conditions
    if patch:
        result.actions.append(PatchStatus(view.key, patch))
    previous = view.status.get("phase")
    if previous != phase and phase in PHASE_EVENTS and not (phase == Phase.PROCESSING and previous == "Recovering"):
        kind, reason = PHASE_EVENTS[phase]
        result.actions.append(PostEvent(view.key, view.uid, kind, reason, decision.message))


def updated_conditions(
    existing: list[dict[str, Any]], phase: Phase, decision: Decision, now: dt.datetime
) -> list[dict[str, Any]]:
    """Progressing, Suspended, Complete and Failed follow the phase; Recovered keeps the last recovery."""
    by_type = {c["type"]: c for c in existing}
    stamp = timestamp(now)

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
