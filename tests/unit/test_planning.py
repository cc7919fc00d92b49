"""Unit tests of ``plan``: every rule of the operator, on plain dataclasses and a fixed clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
from typing import Any

import pytest

from posegen_common.contract import GenerationStatus
from posegen_operator.actions import (
    Action,
    AddFinalizer,
    DeletePod,
    PatchStatus,
    Plan,
    PostEvent,
    Recovery,
    RegisterRow,
    RemoveFinalizer,
    RevokeCredentials,
    SetRowStatus,
    StartWorker,
)
from posegen_operator.builders import RECOVER_ANNOTATION
from posegen_operator.model import GenerationView, Reason, worker_pod_name
from posegen_operator.observe import needs_attention, policy_of
from posegen_operator.rules import backoff_seconds
from posegen_operator.settings import Limits
from tests.unit.planning_fixtures import (
    CONFIG,
    DB_NOW,
    NOW,
    POLICY,
    POSES,
    TOTAL,
    ago,
    config,
    generation,
    healthy,
    heartbeat,
    key,
    of_type,
    patch_of,
    pod,
    policy,
    queued,
    row,
    run,
    settle,
    spec,
    stamp,
    steady,
    uid,
)

STAMP = stamp(NOW)


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def progressing(status: str, reason: str, message: str, since: str = STAMP) -> dict[str, Any]:
    return condition("Progressing", status, reason, message, since)


def condition(kind: str, status: str, reason: str, message: str, since: str = STAMP) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": 1,
    }


def conditions(
    phase: str,
    message: str,
    *,
    degraded: tuple[str, str] | None = None,
    failed: tuple[str, str] | None = None,
    since: str = STAMP,
) -> list[dict[str, Any]]:
    """The five conditions of a generation in ``phase`` (all but Suspended and Complete follow
    their arguments), every one transitioned at ``since``."""
    active = phase in ("Processing", "Recovering")
    return [
        condition("Complete", "False", phase, "", since),
        condition("Degraded", "True", *degraded, since)
        if degraded
        else condition("Degraded", "False", "AsExpected", "", since),
        condition("Failed", "True", *failed, since) if failed else condition("Failed", "False", "NotFailed", "", since),
        progressing("True" if active else "False", phase, message, since),
        condition("Suspended", "False", "NotSuspended", "", since),
    ]


def crashed(name: str = "a", exit_code: int = 137, **row_changes: Any) -> GenerationView:
    """A steady generation whose worker just exited with ``exit_code``."""
    view = steady(name)
    return dataclasses.replace(
        view,
        row=row(name, **row_changes),
        pods=(pod(name, phase="Failed", exit_code=exit_code),),
        heartbeat=None,
    )


def recovery_start(name: str, reason: Reason, detail: str, attempt: int = 1) -> StartWorker:
    return StartWorker(key(name), uid(name), uid(name), attempt, reason, detail, POSES, TOTAL)


def warning(name: str, reason: Reason, detail: str, new_attempt: int = 2) -> PostEvent:
    return PostEvent(
        key(name),
        uid(name),
        "Warning",
        str(reason),
        f"{detail}; resuming from checkpoint {POSES}/{TOTAL} as attempt {new_attempt}",
    )


def assert_quiet(view: GenerationView, **observed: Any) -> None:
    """A pass over a settled view changes nothing."""
    result = run(view, **observed)
    assert result.actions == []


# ---- a new resource -----------------------------------------------------------------------------
def test_new_resource_is_registered_started_and_reported() -> None:
    view = generation("a", row=None, has_finalizer=False)

    result = run(view)

    message = "worker a-w1 starting"
    assert result.actions == [
        RegisterRow(key("a"), spec("a")),
        AddFinalizer(key("a")),
        StartWorker(key("a"), uid("a"), uid("a"), expected_attempt=0, reason=None, detail="", total=TOTAL),
        PatchStatus(
            key("a"),
            {
                "phase": "Processing",
                "generationId": uid("a"),
                "posesCompleted": 0,
                "totalExpectedPoses": TOTAL,
                "progress": f"0/{TOTAL}",
                "workerPod": "a-w1",
                "attempt": 1,
                "recoveries": 0,
                "message": message,
                "observedGeneration": 1,
                "conditions": conditions("Processing", message),
            },
        ),
        PostEvent(key("a"), uid("a"), "Normal", "Started", message),
    ]
    assert of_type(result, StartWorker)[0].attempt == 1
    assert result.recoveries == []
    assert result.queued == []


def test_a_registered_resource_with_our_finalizer_is_not_registered_again() -> None:
    result = run(queued("a"))

    assert of_type(result, AddFinalizer) == []
    assert of_type(result, RegisterRow) == []
    assert [s.expected_attempt for s in of_type(result, StartWorker)] == [0]


def test_a_new_resource_that_must_wait_gets_no_finalizer_until_its_worker_is_admitted() -> None:
    # Nothing to clean up while it waits: one API write fewer for each resource in a burst.
    waiting = generation("b", row=None, has_finalizer=False, created_at=ago(1))

    result = run(steady("a"), waiting, cfg=config(max_concurrent=1))

    assert of_type(result, AddFinalizer) == []
    assert of_type(result, RegisterRow) == [RegisterRow(key("b"), spec("b"))]
    assert result.queued == [uid("b")]

    admitted = run(dataclasses.replace(queued("b"), has_finalizer=False), cfg=config(max_concurrent=1))

    kinds = [type(a) for a in admitted.actions if a.key == key("b")]
    assert kinds.index(AddFinalizer) < kinds.index(StartWorker)


def test_a_missing_finalizer_is_added_back_to_a_running_generation() -> None:
    view = dataclasses.replace(steady("a"), has_finalizer=False)

    assert run(view).actions == [AddFinalizer(key("a"))]


# ---- admission ----------------------------------------------------------------------------------
def test_concurrency_limit_starts_by_priority_then_age_and_queues_the_rest() -> None:
    waiting = [
        queued("low-oldest", priority=0, created_at=ago(600)),
        queued("high-newer", priority=10, created_at=ago(10)),
        queued("high-older", priority=10, created_at=ago(100)),
        queued("mid", priority=5, created_at=ago(50)),
        queued("low-newest", priority=0, created_at=ago(5)),
        queued("low-middle", priority=0, created_at=ago(300)),
    ]

    result = run(*waiting, cfg=config(max_concurrent=3))

    started = ["high-older", "high-newer", "mid"]
    assert [s.key for s in of_type(result, StartWorker)] == [key(n) for n in started]
    assert all(s.expected_attempt == 0 and s.reason is None for s in of_type(result, StartWorker))
    left = ["low-oldest", "low-middle", "low-newest"]
    assert result.queued == [uid(n) for n in left]
    message = "waiting for a worker slot (3 running at most)"
    for name in left:
        assert of_type(result, StartWorker, name) == []
        assert patch_of(result, name)["phase"] == "Queued"
        assert patch_of(result, name)["message"] == message
        assert of_type(result, PostEvent, name) == [PostEvent(key(name), uid(name), "Normal", "Queued", message)]
    for name in started:
        assert patch_of(result, name)["phase"] == "Processing"
        assert patch_of(result, name)["workerPod"] == f"{name}-w1"
        assert [e.reason for e in of_type(result, PostEvent, name)] == ["Started"]


def test_equal_priority_and_age_are_ordered_by_namespace_and_name() -> None:
    same = ago(60)
    result = run(
        queued("b", created_at=same),
        queued("a", created_at=same),
        queued("c", created_at=same),
        cfg=config(max_concurrent=1),
    )

    assert [s.key for s in of_type(result, StartWorker)] == [key("a")]
    assert result.queued == [uid("b"), uid("c")]


def test_running_generations_hold_their_slots() -> None:
    result = run(steady("p1"), steady("p2"), queued("q"), cfg=config(max_concurrent=2))

    assert of_type(result, StartWorker) == []
    assert result.queued == [uid("q")]


def test_more_running_than_the_limit_starts_nothing() -> None:
    result = run(steady("p1"), steady("p2"), queued("q"), cfg=config(max_concurrent=1))

    assert of_type(result, StartWorker) == []
    assert result.queued == [uid("q")]
    assert of_type(result, DeletePod) == []  # running workers are never preempted


def test_finished_generations_free_their_slots() -> None:
    done = generation(
        "done",
        row=row("done", status=GenerationStatus.COMPLETED, poses_completed=TOTAL, completed_at=ago(1)),
        pods=(pod("done", phase="Succeeded", exit_code=0),),
    )
    failed = generation("failed", row=row("failed", status=GenerationStatus.FAILED, error_message="boom"))

    result = run(done, failed, queued("q"), cfg=config(max_concurrent=1))

    assert [s.key for s in of_type(result, StartWorker)] == [key("q")]
    assert result.queued == []


def test_a_queued_generation_already_reported_queued_is_quiet() -> None:
    cfg = config(max_concurrent=1)
    busy = steady("busy")
    first = run(busy, queued("q"), cfg=cfg)
    waiting = dataclasses.replace(queued("q"), status=patch_of(first, "q"))

    result = run(busy, waiting, cfg=cfg)

    assert result.actions == []
    assert result.queued == [uid("q")]


# ---- steady state -------------------------------------------------------------------------------
def test_a_healthy_worker_needs_nothing_once_the_status_matches() -> None:
    view = healthy("a")
    first = run(view)
    assert [type(a) for a in first.actions] == [PatchStatus, PostEvent]
    assert patch_of(first, "a")["phase"] == "Processing"
    assert patch_of(first, "a")["workerPod"] == "a-w1"
    assert patch_of(first, "a")["startedAt"] == stamp(ago(100, DB_NOW))

    settled = settle(view)

    result = run(settled)
    assert result.actions == []
    assert of_type(result, PatchStatus) == []
    # Only the time-based checks are scheduled: the stall limit (600 - 5 s) comes before the deadline.
    assert result.retry_after == pytest.approx(595)


def test_idle_stays_quiet_as_time_passes() -> None:
    later = NOW + seconds(60)
    view = dataclasses.replace(steady("a"), row=row("a", last_pose_at=ago(5, later)))

    assert_quiet(view, now=later, db_now=later)


def test_the_operator_and_database_clocks_are_not_mixed() -> None:
    """Pod ages use the operator's clock, row times the database's, even an hour apart."""
    db_now = NOW - seconds(3600)
    view = healthy("a", row=row("a", started_at=ago(100, db_now), last_pose_at=ago(5, db_now)))

    result = run(view, db_now=db_now)

    assert result.recoveries == []
    assert of_type(result, StartWorker) == []
    assert of_type(result, SetRowStatus) == []


# ---- crash, eviction, orphan --------------------------------------------------------------------
def test_crashed_worker_is_recovered_from_its_checkpoint() -> None:
    view = crashed("a", exit_code=137)

    result = run(view)

    detail = "worker a-w1 exited with code 137"
    message = f"recovering from Crashed: {detail}"
    assert result.actions == [
        recovery_start("a", Reason.CRASHED, detail, attempt=1),
        warning("a", Reason.CRASHED, detail),
        PatchStatus(
            key("a"),
            {
                "phase": "Recovering",
                "workerPod": "a-w2",
                "attempt": 2,
                "recoveries": 1,
                "lastRecoveryReason": "Crashed",
                "lastRecoveryTime": stamp(DB_NOW),
                "message": message,
                "conditions": conditions("Recovering", message, degraded=("Crashed", detail)),
            },
        ),
    ]
    assert result.recoveries == [Recovery(uid("a"), key("a"), Reason.CRASHED, detail, POSES, TOTAL, "recover")]


def test_recovery_claims_the_next_attempt_after_the_rows_current_one() -> None:
    view = dataclasses.replace(
        steady("a"),
        row=row("a", attempt=4, recoveries=1, last_recovery_at=ago(3600, DB_NOW)),
        pods=(pod("a", attempt=4, phase="Failed", exit_code=1),),
        heartbeat=None,
    )

    (start,) = of_type(run(view), StartWorker)

    assert (start.expected_attempt, start.attempt, start.reason) == (4, 5, Reason.CRASHED)
    assert patch_of(run(view), "a")["recoveries"] == 2


def test_transition_times_are_kept_while_a_condition_keeps_its_status() -> None:
    later = NOW + seconds(60)
    view = crashed("a")

    conditions = patch_of(run(view, now=later), "a")["conditions"]

    by_type = {c["type"]: c for c in conditions}
    assert by_type["Progressing"]["lastTransitionTime"] == STAMP  # still True: Processing -> Recovering
    assert by_type["Progressing"]["reason"] == "Recovering"
    assert by_type["Degraded"]["lastTransitionTime"] == stamp(later)  # False -> True
    assert by_type["Complete"]["lastTransitionTime"] == STAMP  # still False


def test_missing_pod_on_the_first_pass_is_an_orphan_of_the_restart() -> None:
    view = dataclasses.replace(steady("a"), pods=(), heartbeat=None)

    result = run(view, first_pass=True)

    detail = "no worker pod for attempt 1 after an operator restart"
    (start,) = of_type(result, StartWorker)
    assert start == recovery_start("a", Reason.ORPHANED, detail)
    assert of_type(result, PostEvent) == [warning("a", Reason.ORPHANED, detail)]
    assert patch_of(result, "a")["lastRecoveryReason"] == "OrphanedAfterRestart"


def test_missing_pod_later_is_an_eviction() -> None:
    view = dataclasses.replace(steady("a"), pods=(), heartbeat=None)

    result = run(view, first_pass=False)

    detail = "worker pod for attempt 1 is gone"
    assert of_type(result, StartWorker) == [recovery_start("a", Reason.EVICTED, detail)]
    assert of_type(result, PostEvent) == [warning("a", Reason.EVICTED, detail)]


def test_evicted_pod_is_an_eviction() -> None:
    view = dataclasses.replace(
        steady("a"), pods=(pod("a", phase="Failed", reason="Evicted", exit_code=137),), heartbeat=None
    )

    result = run(view)

    detail = "worker a-w1 was stopped (Evicted) before finishing"
    assert of_type(result, StartWorker) == [recovery_start("a", Reason.EVICTED, detail)]
    assert of_type(result, DeletePod) == []  # a terminated pod needs no stopping


def test_pod_deleted_under_a_running_generation_is_an_eviction() -> None:
    view = dataclasses.replace(steady("a"), pods=(pod("a", deleting=True),))

    result = run(view)

    detail = "worker pod a-w1 was deleted"
    assert of_type(result, StartWorker) == [recovery_start("a", Reason.EVICTED, detail)]
    assert of_type(result, DeletePod) == []  # already on its way out


def test_worker_that_exited_cleanly_before_the_row_completed_is_replaced() -> None:
    view = dataclasses.replace(steady("a"), pods=(pod("a", phase="Succeeded", exit_code=0),), heartbeat=None)

    (start,) = of_type(run(view), StartWorker)

    assert start.reason == Reason.EVICTED
    assert start.detail == "worker a-w1 was stopped (exit 0) before finishing"


def failed(name: str, reason: str, cause: str, kept_since: str = STAMP) -> list[Action]:
    """The actions that fail a generation for good: its row, its status, a Warning event.
    Conditions whose status does not change keep their transition time, ``kept_since``."""
    message = f"{reason}: {cause}"
    kept = conditions("Failed", message, since=kept_since)
    return [
        SetRowStatus(key(name), uid(name), GenerationStatus.FAILED, message),
        RevokeCredentials(key(name), uid(name)),
        PatchStatus(
            key(name),
            {
                "phase": "Failed",
                "workerPod": None,
                "message": message,
                "conditions": [
                    kept[0],
                    kept[1],
                    condition("Failed", "True", reason, cause),
                    progressing("False", "Failed", message),
                    kept[4],
                ],
            },
        ),
        PostEvent(key(name), uid(name), "Warning", "Failed", message),
    ]


@pytest.mark.parametrize(
    ("code", "reason", "meaning"),
    [
        (2, "InvalidConfiguration", "the worker's configuration is invalid"),
        (4, "BadInput", "the generation's input was refused (bad prompt)"),
        (5, "UpstreamRefused", "the image API refused the request (check the API key and the prompt)"),
        (8, "OutputNotWritable", "permission denied writing to the output volume (check its ownership)"),
    ],
)
def test_permanent_exit_codes_fail_without_recovery(code: int, reason: str, meaning: str) -> None:
    view = crashed("a", exit_code=code)

    result = run(view)

    cause = f"worker a-w1 exited with code {code}: {meaning}"
    assert result.actions == failed("a", reason, cause)
    assert result.recoveries == []


def test_a_permanent_failure_frees_its_slot_in_the_same_pass() -> None:
    result = run(crashed("a", exit_code=4), queued("q"), cfg=config(max_concurrent=1))

    assert [s.key for s in of_type(result, StartWorker)] == [key("q")]


# ---- hang and stall -----------------------------------------------------------------------------
HUNG_DETAIL = "worker a-w1 is running but sent no heartbeat for attempt 1 in 31s (limit 30s)"


def silent(running_for: float, seen_missing: float = 31, **changes: Any) -> GenerationView:
    """A steady generation whose running worker has sent no heartbeat, missing for ``seen_missing``
    seconds as the operator watched it."""
    return dataclasses.replace(
        steady("a"),
        pods=(pod("a", running_for=running_for),),
        heartbeat=None,
        heartbeat_silent_for=seen_missing,
        **changes,
    )


def test_running_worker_without_heartbeat_past_ttl_and_startup_grace_is_hung() -> None:
    view = silent(running_for=30 + 60 + 1)

    result = run(view)

    assert result.actions[:3] == [
        DeletePod(key("a"), "a-w1", 0),  # fenced by the new attempt: no grace owed
        recovery_start("a", Reason.HUNG, HUNG_DETAIL),
        warning("a", Reason.HUNG, HUNG_DETAIL),
    ]
    assert patch_of(result, "a")["lastRecoveryReason"] == "Hung"
    assert [r.outcome for r in result.recoveries] == ["recover"]


def test_running_worker_without_heartbeat_within_startup_grace_is_given_time() -> None:
    view = silent(running_for=60)  # past the TTL (30 s), within TTL + grace (90 s)

    result = run(view)

    assert of_type(result, StartWorker) == []
    assert of_type(result, DeletePod) == []
    assert result.recoveries == []
    assert result.retry_after == pytest.approx(30)  # 90 - 60: when the hang check is due


def test_a_worker_that_reported_in_gets_no_startup_grace_only_one_ttl() -> None:
    reported = dataclasses.replace(silent(running_for=40), row=row("a", worker_started_at=ago(31, DB_NOW)))

    result = run(reported)

    assert [r.reason for r in result.recoveries] == [Reason.HUNG]
    assert len(of_type(result, StartWorker)) == 1


def test_a_heartbeat_seen_missing_for_less_than_a_ttl_is_no_hang() -> None:
    # Redis lost its data (FLUSHALL, a restart without persistence): the worker reported in long
    # ago, but the operator has seen its heartbeat missing only for 10 s.
    reported = dataclasses.replace(
        silent(running_for=3000, seen_missing=10), row=row("a", worker_started_at=ago(2900, DB_NOW))
    )

    result = run(reported)

    assert result.recoveries == []
    assert of_type(result, StartWorker) == []
    assert result.retry_after == pytest.approx(20)  # 30 s TTL - 10 s seen missing


def test_silence_before_the_worker_reported_in_is_not_its_own() -> None:
    # The attempt's pod was refused for minutes (its heartbeat missing all along); the worker
    # has just reported in and not beaten yet.
    view = dataclasses.replace(silent(running_for=3, seen_missing=300), row=row("a", worker_started_at=ago(1, DB_NOW)))

    result = run(view)

    assert result.recoveries == []
    assert result.retry_after == pytest.approx(29)


def test_a_heartbeat_nobody_watched_go_missing_is_no_hang() -> None:
    never_seen = dataclasses.replace(
        silent(running_for=3000, seen_missing=0), row=row("a", worker_started_at=ago(2900, DB_NOW))
    )

    assert run(never_seen).recoveries == []


def test_no_hang_is_declared_while_heartbeats_are_untrustworthy() -> None:
    view = silent(running_for=3600 - 200)

    result = run(view, trustworthy=False)

    assert of_type(result, StartWorker) == []
    assert result.recoveries == []
    assert result.actions == []  # status already says Processing


def test_heartbeat_of_an_older_attempt_does_not_count() -> None:
    view = dataclasses.replace(
        steady("a"),
        row=row("a", attempt=2),
        pods=(pod("a", attempt=2, running_for=91),),
        heartbeat=heartbeat(attempt=1),
        heartbeat_silent_for=91,
    )

    result = run(view)

    detail = "worker a-w2 is running but sent no heartbeat for attempt 2 in 91s (limit 30s)"
    assert of_type(result, StartWorker) == [recovery_start("a", Reason.HUNG, detail, attempt=2)]


def test_a_pending_pod_is_not_checked_for_heartbeats() -> None:
    view = dataclasses.replace(steady("a"), pods=(pod("a", phase="Pending"),), heartbeat=None)

    result = run(view)

    assert of_type(result, StartWorker) == []
    assert result.recoveries == []


def test_heartbeating_worker_without_a_pose_past_the_stall_timeout_is_stalled() -> None:
    view = dataclasses.replace(
        steady("a"), row=row("a", last_pose_at=ago(601, DB_NOW)), pods=(pod("a", running_for=700),)
    )

    result = run(view)

    detail = "worker a-w1 heartbeats but recorded no pose for 601s (limit 600s)"
    assert result.actions[:3] == [
        DeletePod(key("a"), "a-w1", 0),
        recovery_start("a", Reason.STALLED, detail),
        warning("a", Reason.STALLED, detail),
    ]


def test_a_pose_exactly_at_the_stall_timeout_is_not_a_stall() -> None:
    view = dataclasses.replace(
        steady("a"), row=row("a", last_pose_at=ago(600, DB_NOW)), pods=(pod("a", running_for=700),)
    )

    result = run(view)

    assert result.recoveries == []
    assert result.retry_after == pytest.approx(0)


def test_per_resource_policy_overrides_win_over_defaults() -> None:
    last_pose = ago(200, DB_NOW)
    strict = dataclasses.replace(
        steady("strict", policy=policy(stall_timeout=120)),
        row=row("strict", last_pose_at=last_pose),
        pods=(pod("strict", running_for=300),),
    )
    lenient = dataclasses.replace(steady("lenient"), row=row("lenient", last_pose_at=last_pose))

    result = run(strict, lenient)

    assert [(r.key, r.reason) for r in result.recoveries] == [(key("strict"), Reason.STALLED)]
    assert of_type(result, StartWorker, "lenient") == []


def test_per_resource_max_recoveries_and_deadline_are_honoured() -> None:
    no_retry = crashed("a", recoveries=0)
    no_retry = dataclasses.replace(no_retry, policy=policy(max_recoveries=0))
    short = dataclasses.replace(steady("b", policy=policy(deadline=60)), row=row("b", started_at=ago(61, DB_NOW)))

    result = run(no_retry, short)

    assert [(s.key, s.status) for s in of_type(result, SetRowStatus)] == [
        (key("a"), GenerationStatus.FAILED),
        (key("b"), GenerationStatus.FAILED),
    ]
    assert of_type(result, StartWorker) == []


def test_policy_of_resolves_resource_overrides_over_operator_defaults() -> None:
    defaults = types.SimpleNamespace(stall_timeout=600.0, deadline=7200.0, max_recoveries=5, limits=Limits())
    body = {"spec": {"recovery": {"stallTimeoutSeconds": 30, "maxRecoveries": 1}}}

    resolved = policy_of(body, defaults)  # type: ignore[arg-type]

    assert (resolved.stall_timeout, resolved.deadline, resolved.max_recoveries) == (30.0, 7200.0, 1)
    assert policy_of({"spec": {}}, defaults) == dataclasses.replace(  # type: ignore[arg-type]
        POLICY, stall_timeout=600.0, deadline=7200.0, max_recoveries=5
    )


def test_policy_of_keeps_overrides_within_the_admins_limits() -> None:
    limits = Limits(deadline=3600, max_recoveries=3, stall_timeout=300)
    defaults = types.SimpleNamespace(stall_timeout=600.0, deadline=7200.0, max_recoveries=5, limits=limits)
    body = {"spec": {"recovery": {"stallTimeoutSeconds": 86400, "deadlineSeconds": 604800, "maxRecoveries": 100}}}

    resolved = policy_of(body, defaults)  # type: ignore[arg-type]

    assert (resolved.stall_timeout, resolved.deadline, resolved.max_recoveries) == (300.0, 3600.0, 3)


def test_one_namespace_cannot_take_every_slot() -> None:
    crowd = [dataclasses.replace(queued(f"t{i}"), namespace="tenant-a") for i in range(4)]
    other = dataclasses.replace(queued("o", created_at=ago(10)), namespace="tenant-b")
    running = dataclasses.replace(steady("r"), namespace="tenant-a")

    result = run(running, *crowd, other, cfg=config(max_concurrent=4, max_per_namespace=2))

    started = {(s.key[0], s.key[1]) for s in of_type(result, StartWorker)}
    assert started == {("tenant-a", "t0"), ("tenant-b", "o")}  # tenant-a had one running: one more
    waiting = patch_of_key(result, ("tenant-a", "t1"))
    assert waiting["phase"] == "Queued" and "in namespace tenant-a" in waiting["message"]


def patch_of_key(result: Plan, key_: tuple[str, str]) -> dict[str, Any]:
    (patch,) = [a.patch for a in result.actions if isinstance(a, PatchStatus) and a.key == key_]
    return patch


# ---- deadline, recovery limit, backoff ----------------------------------------------------------
def test_deadline_exceeded_fails_the_generation_and_stops_its_worker() -> None:
    # Healthy and reported so two seconds ago, one second before its deadline.
    earlier = NOW - seconds(2)
    old = row("a", started_at=ago(3601, DB_NOW), last_pose_at=ago(5, DB_NOW))
    view = settle(healthy("a", row=old), now=earlier, db_now=earlier)
    assert view.status["phase"] == "Processing"

    result = run(view)

    cause = f"not completed within 3600s ({POSES}/{TOTAL} poses recorded)"
    kept = stamp(earlier)
    assert result.actions == [DeletePod(key("a"), "a-w1", 0), *failed("a", "DeadlineExceeded", cause, kept)]


def test_deadline_is_scheduled_when_it_comes_first() -> None:
    view = dataclasses.replace(steady("a"), row=row("a", started_at=ago(3590, DB_NOW)))

    assert run(view).retry_after == pytest.approx(10)


def test_max_recoveries_reached_fails_instead_of_recovering() -> None:
    view = crashed("a", exit_code=1, recoveries=3, last_recovery_at=ago(3600, DB_NOW))

    result = run(view)

    detail = "worker a-w1 exited with code 1"
    cause = f"3 recoveries already (limit 3); last cause Crashed: {detail}"
    assert of_type(result, StartWorker) == []
    assert of_type(result, SetRowStatus) == [
        SetRowStatus(key("a"), uid("a"), GenerationStatus.FAILED, f"MaxRecoveriesExceeded: {cause}")
    ]
    assert result.recoveries == [Recovery(uid("a"), key("a"), Reason.CRASHED, detail, POSES, TOTAL, "fail")]
    patch = patch_of(result, "a")
    assert patch["phase"] == "Failed"
    assert patch["recoveries"] == 3  # the row's count: nothing was recovered
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "MaxRecoveriesExceeded")
    assert [(e.type, e.reason) for e in of_type(result, PostEvent)] == [("Warning", "Failed")]


def test_second_recovery_within_the_backoff_waits() -> None:
    view = crashed("a", recoveries=1, last_recovery_at=ago(4, DB_NOW))

    result = run(view)

    detail = "worker a-w1 exited with code 137"
    assert of_type(result, StartWorker) == []
    assert of_type(result, DeletePod) == []
    assert of_type(result, PostEvent) == []
    assert result.recoveries == [Recovery(uid("a"), key("a"), Reason.CRASHED, detail, POSES, TOTAL, "backoff")]
    assert result.retry_after == pytest.approx(6)  # base 10 s - 4 s already waited
    patch = patch_of(result, "a")
    assert patch["phase"] == "Recovering"
    assert patch["message"] == f"Crashed: {detail}; next attempt at 2025-06-01T12:00:06Z (backoff)"
    assert patch["recoveries"] == 1  # the row's count: no new recovery yet
    assert patch["workerPod"] is None


def test_recovery_goes_ahead_once_the_backoff_has_passed() -> None:
    view = crashed("a", recoveries=1, last_recovery_at=ago(11, DB_NOW))

    result = run(view)

    assert [r.outcome for r in result.recoveries] == ["recover"]
    assert patch_of(result, "a")["recoveries"] == 2


def test_backoff_doubles_with_each_recovery() -> None:
    view = crashed("a", recoveries=2, last_recovery_at=ago(15, DB_NOW))

    result = run(view)

    assert [r.outcome for r in result.recoveries] == ["backoff"]
    assert result.retry_after == pytest.approx(5)  # 2 x 10 s - 15 s


@pytest.mark.parametrize(
    ("recoveries", "seconds"),
    [(-1, 0.0), (0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (5, 160.0), (6, 300.0), (50, 300.0)],
)
def test_backoff_seconds(recoveries: int, seconds: float) -> None:
    assert backoff_seconds(recoveries, CONFIG) == seconds


# ---- recovering -> processing -------------------------------------------------------------------
def test_replacement_worker_reports_recovering_until_it_heartbeats() -> None:
    recovered = row("a", attempt=2, attempt_reason="Crashed", recoveries=1, last_recovery_reason="Crashed")
    starting = settle(generation("a", row=recovered, pods=(pod("a", attempt=2, phase="Pending"),)))
    assert starting.status["phase"] == "Recovering"
    assert starting.status["message"] == "worker a-w2 starting after Crashed"

    result = run(dataclasses.replace(starting, pods=(pod("a", attempt=2),), heartbeat=heartbeat(2)))

    assert [type(a) for a in result.actions] == [PatchStatus]  # no "Started" event after a recovery
    assert patch_of(result, "a")["phase"] == "Processing"


# ---- suspend and resume -------------------------------------------------------------------------
def test_suspend_stops_the_worker_gracefully_and_holds_its_slot() -> None:
    view = dataclasses.replace(steady("a"), suspend=True)

    result = run(view, queued("q"), cfg=config(max_concurrent=1))

    message = "stopping worker a-w1 at a checkpoint"
    assert of_type(result, DeletePod) == [DeletePod(key("a"), "a-w1", None)]
    # The row is suspended at once; the worker's pose in flight is still accepted (see checkpoint).
    assert of_type(result, SetRowStatus) == [SetRowStatus(key("a"), uid("a"), GenerationStatus.SUSPENDED)]
    assert of_type(result, StartWorker) == []
    assert result.queued == [uid("q")]
    patch = patch_of(result, "a")
    assert (patch["phase"], patch["message"], patch.get("workerPod", "a-w1")) == ("Suspended", message, "a-w1")
    assert of_type(result, PostEvent, "a") == [PostEvent(key("a"), uid("a"), "Normal", "Suspended", message)]
    assert result.retry_after == 1


def test_suspend_waits_for_a_worker_that_is_already_stopping() -> None:
    view = settle(dataclasses.replace(steady("a"), suspend=True))
    stopping = dataclasses.replace(view, pods=(pod("a", deleting=True),), row=row("a", status="suspended"))

    result = run(stopping, queued("q"), cfg=config(max_concurrent=1))

    assert of_type(result, DeletePod) == []
    assert of_type(result, SetRowStatus) == []
    assert of_type(result, StartWorker) == []
    assert result.retry_after == 1


def test_suspend_with_no_worker_left_marks_the_row_suspended() -> None:
    view = dataclasses.replace(steady("a"), suspend=True, pods=(pod("a", phase="Succeeded", exit_code=0),))

    result = run(view, queued("q"), cfg=config(max_concurrent=1))

    message = f"suspended at {POSES}/{TOTAL}; progress kept"
    assert of_type(result, SetRowStatus) == [SetRowStatus(key("a"), uid("a"), GenerationStatus.SUSPENDED)]
    patch = patch_of(result, "a")
    assert (patch["phase"], patch["message"]) == ("Suspended", message)
    suspended = next(c for c in patch["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended")
    assert [s.key for s in of_type(result, StartWorker)] == [key("q")]  # the slot is free


def test_suspending_a_queued_generation_needs_no_worker() -> None:
    result = run(queued("a", suspend=True))

    assert of_type(result, StartWorker) == []
    assert of_type(result, SetRowStatus) == [SetRowStatus(key("a"), uid("a"), GenerationStatus.SUSPENDED)]
    assert result.queued == []


def test_a_suspended_row_is_quiet_while_suspend_stays_set() -> None:
    view = settle(generation("a", row=row("a", status=GenerationStatus.SUSPENDED), suspend=True))

    assert_quiet(view)


def test_resume_starts_a_worker_without_a_recovery_reason() -> None:
    suspended = settle(
        generation(
            "a",
            row=row("a", status=GenerationStatus.SUSPENDED),
            pods=(pod("a", phase="Succeeded", exit_code=0),),
            suspend=True,
        )
    )

    result = run(dataclasses.replace(suspended, suspend=False))

    message = "worker a-w2 starting (resumed)"
    assert of_type(result, StartWorker) == [
        StartWorker(key("a"), uid("a"), uid("a"), 1, None, "", POSES, TOTAL),
    ]
    assert result.recoveries == []
    patch = patch_of(result, "a")
    assert (patch["phase"], patch["workerPod"], patch["attempt"]) == ("Processing", "a-w2", 2)
    assert "recoveries" not in patch
    suspended_condition = next(c for c in patch["conditions"] if c["type"] == "Suspended")
    assert (suspended_condition["status"], suspended_condition["reason"]) == ("False", "NotSuspended")
    assert of_type(result, PostEvent) == [PostEvent(key("a"), uid("a"), "Normal", "Started", message)]


def test_resume_waits_for_a_free_slot() -> None:
    suspended = generation("a", row=row("a", status=GenerationStatus.SUSPENDED), created_at=ago(10))

    result = run(steady("busy"), suspended, cfg=config(max_concurrent=1))

    assert of_type(result, StartWorker) == []
    assert result.queued == [uid("a")]


def test_resume_before_the_suspended_worker_has_exited_is_not_a_recovery() -> None:
    at_limit = row("a", recoveries=3, last_recovery_at=ago(3600, DB_NOW))
    stopping = settle(dataclasses.replace(steady("a"), row=at_limit, suspend=True))
    assert stopping.status["phase"] == "Suspended"
    # The suspend pass marked the row suspended (SetRowStatus) before the worker exited.
    stopping = dataclasses.replace(stopping, row=dataclasses.replace(at_limit, status="suspended"))
    # The user flips suspend back while the worker is finishing its pose (the pod is terminating).
    resumed = dataclasses.replace(stopping, suspend=False, pods=(pod("a", deleting=True),), heartbeat=heartbeat(1))

    result = run(resumed)

    assert result.recoveries == []
    assert of_type(result, SetRowStatus) == []
    assert all(start.reason is None for start in of_type(result, StartWorker))


# ---- deletion (cancellation) --------------------------------------------------------------------
def test_deletion_with_a_live_worker_stops_it_gracefully_first() -> None:
    view = dataclasses.replace(steady("a"), deleting=True)

    result = run(view)

    assert result.actions == [DeletePod(key("a"), "a-w1", None)]
    assert result.retry_after == 1


def test_deletion_waits_for_a_terminating_worker() -> None:
    view = dataclasses.replace(steady("a"), deleting=True, pods=(pod("a", deleting=True),))

    result = run(view)

    assert result.actions == []
    assert result.retry_after == 1


def test_deletion_with_no_worker_cancels_the_row_and_releases_the_resource() -> None:
    view = dataclasses.replace(steady("a"), deleting=True, pods=(pod("a", phase="Succeeded", exit_code=0),))

    result = run(view)

    assert result.actions == [
        SetRowStatus(key("a"), uid("a"), GenerationStatus.CANCELLED, "cancelled by deletion"),
        RevokeCredentials(key("a"), uid("a")),
        PostEvent(
            key("a"),
            uid("a"),
            "Normal",
            "Cancelled",
            f"generation cancelled at {POSES}/{TOTAL}; the recorded poses are kept",
        ),
        RemoveFinalizer(key("a")),
    ]


def test_deleting_a_finished_generation_only_releases_it() -> None:
    done = row("a", status=GenerationStatus.COMPLETED, poses_completed=TOTAL, completed_at=ago(1, DB_NOW))
    view = generation("a", row=done, deleting=True)

    assert run(view).actions == [RemoveFinalizer(key("a"))]


def test_deleting_a_never_registered_generation_only_releases_it() -> None:
    assert run(generation("a", row=None, deleting=True)).actions == [RemoveFinalizer(key("a"))]


def test_deletion_without_our_finalizer_is_none_of_our_business() -> None:
    view = dataclasses.replace(steady("a"), deleting=True, has_finalizer=False)

    result = run(view)

    assert result.actions == []
    assert result.retry_after is None


def test_deletion_holds_the_slot_until_the_worker_has_exited() -> None:
    deleted = dataclasses.replace(steady("a"), deleting=True)

    result = run(deleted, queued("q"), cfg=config(max_concurrent=1))

    assert of_type(result, DeletePod) == [DeletePod(key("a"), "a-w1", None)]
    assert of_type(result, StartWorker) == []
    assert result.queued == [uid("q")]


# ---- finished rows ------------------------------------------------------------------------------
def test_completed_row_reports_completed_and_starts_nothing() -> None:
    done = row("a", status=GenerationStatus.COMPLETED, poses_completed=TOTAL, completed_at=ago(1, DB_NOW))
    view = dataclasses.replace(steady("a"), row=done, pods=(pod("a", phase="Succeeded", exit_code=0),), heartbeat=None)

    result = run(view)

    message = f"all {TOTAL} poses recorded"
    assert of_type(result, StartWorker) == []
    assert of_type(result, DeletePod) == []
    patch = patch_of(result, "a")
    assert patch["phase"] == "Completed"
    assert patch["completedAt"] == stamp(ago(1, DB_NOW))
    assert (patch["posesCompleted"], patch["progress"]) == (TOTAL, f"{TOTAL}/{TOTAL}")
    assert "workerPod" not in patch  # still a-w1
    complete = next(c for c in patch["conditions"] if c["type"] == "Complete")
    assert complete == condition("Complete", "True", "AllPosesRecorded", message)
    assert of_type(result, PostEvent) == [PostEvent(key("a"), uid("a"), "Normal", "Completed", message)]
    assert_quiet(settle(view))


def test_failed_row_stops_any_live_worker_and_reports_its_error() -> None:
    failed = row("a", status=GenerationStatus.FAILED, error_message="boom", completed_at=ago(1, DB_NOW))
    view = dataclasses.replace(steady("a"), row=failed)

    result = run(view)

    assert of_type(result, DeletePod) == [DeletePod(key("a"), "a-w1", 0)]
    assert of_type(result, StartWorker) == []
    patch = patch_of(result, "a")
    assert (patch["phase"], patch["message"]) == ("Failed", "boom")


# ---- stale pods ---------------------------------------------------------------------------------
def test_pods_of_older_attempts_are_deleted() -> None:
    view = dataclasses.replace(
        steady("a"),
        row=row("a", attempt=3),
        pods=(
            pod("a", attempt=1, phase="Failed", exit_code=137),  # finished: plain cleanup
            pod("a", attempt=2),  # still running: a zombie, killed at once
            pod("a", attempt=3),
        ),
        heartbeat=heartbeat(3),
    )

    result = run(view)

    assert of_type(result, DeletePod) == [DeletePod(key("a"), "a-w1", None), DeletePod(key("a"), "a-w2", 0)]
    assert of_type(result, StartWorker) == []


def test_stale_pods_already_being_deleted_are_left_alone() -> None:
    view = dataclasses.replace(
        steady("a"), row=row("a", attempt=2), pods=(pod("a", 1, deleting=True), pod("a", 2)), heartbeat=heartbeat(2)
    )

    assert of_type(run(view), DeletePod) == []


# ---- manual recovery checks ---------------------------------------------------------------------
def test_manual_check_on_a_healthy_worker_is_only_acknowledged() -> None:
    view = dataclasses.replace(steady("a"), recover_request="check-1")

    result = run(view)

    assert result.actions == [PatchStatus(key("a"), {"lastRecoveryRequest": "check-1"})]
    assert result.recoveries == []
    assert_quiet(settle(view))


def test_an_acknowledged_manual_check_is_not_repeated() -> None:
    view = dataclasses.replace(steady("a"), recover_request="check-1")
    view = dataclasses.replace(view, status=view.status | {"lastRecoveryRequest": "check-1"})

    assert_quiet(view)


def test_manual_check_recovers_a_silent_worker_without_the_startup_grace() -> None:
    view = silent(running_for=31, recover_request="check-1")  # past the TTL only

    result = run(view)

    assert of_type(result, StartWorker) == [recovery_start("a", Reason.MANUAL, HUNG_DETAIL)]
    assert of_type(result, PostEvent) == [warning("a", Reason.MANUAL, HUNG_DETAIL)]
    patch = patch_of(result, "a")
    assert (patch["lastRecoveryRequest"], patch["lastRecoveryReason"]) == ("check-1", "Manual")


def test_the_same_silent_worker_without_a_manual_check_is_given_its_grace() -> None:
    result = run(silent(running_for=31))

    assert of_type(result, StartWorker) == []
    assert result.retry_after == pytest.approx(59)  # 30 + 60 - 31


def test_manual_check_names_the_recovery_of_a_dead_worker() -> None:
    view = dataclasses.replace(crashed("a"), recover_request="check-2")

    (start,) = of_type(run(view), StartWorker)

    assert (start.reason, start.detail) == (Reason.MANUAL, "worker a-w1 exited with code 137")


# ---- rows without a resource, and the plan's bookkeeping ----------------------------------------
def test_orphan_rows_are_cancelled_and_their_logins_revoked() -> None:
    result = run(orphans=frozenset({"row-2", "row-1"}))

    message = "its PoseGeneration no longer exists"
    assert result.actions == [
        SetRowStatus(("", ""), "row-1", GenerationStatus.CANCELLED, message),
        RevokeCredentials(("", ""), "row-1"),
        SetRowStatus(("", ""), "row-2", GenerationStatus.CANCELLED, message),
        RevokeCredentials(("", ""), "row-2"),
    ]


def test_an_empty_world_plans_nothing() -> None:
    result = run()

    assert result == Plan()


def test_due_in_keeps_the_earliest() -> None:
    result = Plan()
    result.due_in(30)
    result.due_in(5)
    result.due_in(60)

    assert result.retry_after == 5


def test_worker_pod_name() -> None:
    assert worker_pod_name("gen", 3) == "gen-w3"


def test_only_generations_with_something_to_do_are_observed() -> None:
    def body(phase: str | None, **extra: Any) -> dict[str, Any]:
        meta = {"generation": 1, **extra.pop("meta", {})}
        status = {"phase": phase, "observedGeneration": 1, **extra.pop("status", {})} if phase else {}
        return {"metadata": meta, "spec": {"suspend": extra.pop("suspend", False)}, "status": status}

    assert needs_attention(body(None), has_pods=False), "new"
    assert needs_attention(body("Processing"), has_pods=True)
    assert not needs_attention(body("Completed"), has_pods=True)
    assert needs_attention(body("Completed", meta={"deletionTimestamp": "now"}), has_pods=False), "deleted"
    assert needs_attention(body("Completed", meta={"annotations": {RECOVER_ANNOTATION: "x"}}), has_pods=False)
    assert needs_attention(body("Completed", meta={"generation": 2}), has_pods=False), "spec changed"
    assert not needs_attention(body("Suspended", suspend=True), has_pods=False), "at rest"
    assert needs_attention(body("Suspended", suspend=True), has_pods=True), "its worker still stopping"
    assert needs_attention(body("Suspended", suspend=True, status={"workerPod": "a-w1"}), has_pods=False)
