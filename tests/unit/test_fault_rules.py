"""The rules for faults beyond a crash: refused creates, pods that never start, malformed objects,
causes that are not the generation's fault, Redis outages and suspended time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from posegen_common.contract import GenerationStatus
from posegen_operator.actions import (
    CreatePod,
    DeletePod,
    PostEvent,
    RestoreWorkerAccess,
    RevokeCredentials,
    SetRowStatus,
    StartWorker,
)
from posegen_operator.model import InvalidGeneration, PodView, Reason
from tests.unit.planning_fixtures import (
    DB_NOW,
    ago,
    config,
    key,
    of_type,
    patch_of,
    pod,
    row,
    run,
    steady,
    uid,
)


def condition_of(result: Any, name: str, kind: str) -> dict[str, Any]:
    return next(c for c in patch_of(result, name)["conditions"] if c["type"] == kind)


def exited(code: int, **pod_changes: Any) -> Any:
    """A steady generation whose worker just exited with ``code``."""
    worker = dataclasses.replace(pod("a", phase="Failed", exit_code=code), **pod_changes)
    return dataclasses.replace(steady("a"), pods=(worker,), heartbeat=None)


# ---- a refused pod create is no recovery ----------------------------------------------------------
def test_a_pod_never_created_is_created_again_under_the_same_attempt() -> None:
    view = dataclasses.replace(steady("a"), row=row("a", worker_pod_created_at=None), pods=(), heartbeat=None)

    result = run(view, first_pass=True)  # not an orphan of the restart: no worker of it ever ran

    assert of_type(result, CreatePod) == [CreatePod(key("a"), uid("a"), uid("a"), 1)]
    assert of_type(result, StartWorker) == []
    assert result.recoveries == []
    assert "recoveries" not in patch_of(result, "a")


def test_a_refused_create_waits_out_its_backoff_and_says_why() -> None:
    refused = row(
        "a",
        worker_pod_created_at=None,
        pod_refusals=2,
        last_pod_error="403 Forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: pods=0",
        last_pod_error_at=ago(5, DB_NOW),
    )
    view = dataclasses.replace(steady("a"), row=refused, pods=(), heartbeat=None)

    result = run(view)  # backoff after 2 refusals: 10 s x 2 = 20 s

    assert of_type(result, CreatePod) == []
    assert result.retry_after == pytest.approx(15)
    degraded = condition_of(result, "a", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PodCreateRefused")
    assert "exceeded quota" in degraded["message"]
    (event,) = of_type(result, PostEvent)
    assert (event.type, event.reason) == ("Warning", "PodCreateRefused")
    assert result.recoveries == []


def test_a_refused_create_is_retried_once_its_backoff_is_over() -> None:
    refused = row(
        "a", worker_pod_created_at=None, pod_refusals=1, last_pod_error="500", last_pod_error_at=ago(11, DB_NOW)
    )
    view = dataclasses.replace(steady("a"), row=refused, pods=(), heartbeat=None)

    assert of_type(run(view), CreatePod) == [CreatePod(key("a"), uid("a"), uid("a"), 1)]


def test_the_stall_clock_starts_when_the_worker_does() -> None:
    # The attempt was claimed (last_pose_at) 20 min ago, its pod refused until a minute ago.
    late = row("a", last_pose_at=ago(1200, DB_NOW), worker_started_at=ago(50, DB_NOW))
    view = dataclasses.replace(steady("a"), row=late, pods=(pod("a", running_for=55),))

    result = run(view)

    assert result.recoveries == []
    assert result.retry_after == pytest.approx(550)  # 600 s stall timeout - 50 s since it reported in


def test_a_created_pod_that_is_gone_is_still_a_recovery() -> None:
    view = dataclasses.replace(steady("a"), pods=(), heartbeat=None)  # worker_pod_created_at is set

    (start,) = of_type(run(view), StartWorker)

    assert start.reason == Reason.EVICTED


# ---- malformed pods ---------------------------------------------------------------------------------
def test_a_pod_with_a_malformed_attempt_label_is_no_ones_worker() -> None:
    garbage = dataclasses.replace(pod("a"), attempt=None)
    view = dataclasses.replace(steady("a"), pods=(garbage,))

    result = run(view)

    assert DeletePod(key("a"), "a-w1", 0) in result.actions
    assert next(e.reason for e in of_type(result, PostEvent)) == "MalformedWorkerPod"
    (start,) = of_type(result, StartWorker)  # its worker is gone for the rules: replaced (fenced)
    assert start.reason == Reason.EVICTED


def test_one_generation_the_rules_cannot_decide_leaves_the_others_alone() -> None:
    poison = dataclasses.replace(steady("bad"), row=row("bad", started_at=dt.datetime(2025, 1, 1)))  # naive time
    healthy_one = dataclasses.replace(steady("good"), pods=(), heartbeat=None)

    result = run(poison, healthy_one)

    assert [s.key for s in of_type(result, StartWorker)] == [key("good")]
    assert [(k, u) for k, u, _ in result.skipped] == [(key("bad"), uid("bad"))]
    assert all(getattr(a, "key", None) != key("bad") for a in result.actions)


def test_an_unreadable_generation_says_so_in_its_status_once() -> None:
    invalid = InvalidGeneration(
        key("x"), uid("x"), 3, {}, "the operator cannot read this object: KeyError: 'projectId'"
    )

    result = run(invalid=(invalid,))

    degraded = condition_of(result, "x", "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["observedGeneration"]) == ("True", "InvalidObject", 3)
    assert [e.reason for e in of_type(result, PostEvent)] == ["InvalidObject"]
    settled = dataclasses.replace(invalid, status=patch_of(result, "x"))
    assert run(invalid=(settled,)).actions == []


# ---- pods that never start ------------------------------------------------------------------------
def waiting(reason: str, message: str, age: float) -> Any:
    pending = PodView(
        name="a-w1",
        attempt=1,
        phase="Pending",
        deleting=False,
        created_at=ago(age),
        waiting_reason=reason,
        waiting_message=message,
    )
    return dataclasses.replace(steady("a"), pods=(pending,), heartbeat=None)


def test_a_pod_that_cannot_pull_its_image_is_named_at_once() -> None:
    result = run(waiting("ImagePullBackOff", 'Back-off pulling image "posegen-worker:nope"', age=5))

    degraded = condition_of(result, "a", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ImagePullBackOff")
    assert "posegen-worker:nope" in degraded["message"]
    assert result.retry_after == pytest.approx(295)  # the start-up timeout is due then
    assert of_type(result, SetRowStatus) == []


def test_a_pod_whose_image_cannot_be_pulled_fails_the_generation_after_the_timeout() -> None:
    result = run(waiting("ImagePullBackOff", "Back-off pulling image", age=301))

    (failed,) = of_type(result, SetRowStatus)
    assert failed.status == GenerationStatus.FAILED
    assert failed.message is not None and failed.message.startswith("WorkerNotStarted: worker a-w1 did not start")
    assert "ImagePullBackOff" in failed.message
    assert of_type(result, StartWorker) == []


def test_an_unschedulable_pod_is_replaced_after_the_timeout() -> None:
    result = run(waiting("Unschedulable", "0/2 nodes are available", age=301), cfg=config(worker_start_timeout=300))

    (start,) = of_type(result, StartWorker)
    assert start.reason == Reason.NOT_STARTED
    assert DeletePod(key("a"), "a-w1", 0) in result.actions


# ---- exits that are not the generation's fault, and OOM ------------------------------------------------
@pytest.mark.parametrize(("code", "reason"), [(6, Reason.DEPENDENCY_UNAVAILABLE), (7, Reason.DISK_FULL)])
def test_a_transient_exit_is_retried_without_spending_the_budget(code: int, reason: Reason) -> None:
    view = exited(code)
    view = dataclasses.replace(view, row=row("a", recoveries=3))  # the limit: a crash would fail it

    result = run(view)

    (start,) = of_type(result, StartWorker)
    assert (start.reason, start.budgeted) == (reason, False)
    assert patch_of(result, "a")["recoveries"] == 3
    assert of_type(result, SetRowStatus) == []


def test_transient_retries_back_off() -> None:
    view = dataclasses.replace(exited(6), row=row("a", transient_retries=2, last_recovery_at=ago(5, DB_NOW)))

    result = run(view)  # third retry: 10 s x 2^2 = 40 s after the last

    assert of_type(result, StartWorker) == []
    assert result.retry_after == pytest.approx(35)


def test_an_oom_killed_worker_is_recovered_with_a_cause_a_user_can_act_on() -> None:
    (start,) = of_type(run(exited(137, terminated_reason="OOMKilled")), StartWorker)

    assert start.reason == Reason.OOM_KILLED
    assert "memory limit" in start.detail


# ---- outages and suspended time -------------------------------------------------------------------------
def test_an_unreachable_redis_shows_on_processing_generations() -> None:
    result = run(steady("a"), trustworthy=False, redis_reachable=False)

    degraded = condition_of(result, "a", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RedisUnavailable")
    assert of_type(result, StartWorker) == []


def test_suspended_time_does_not_count_against_the_deadline() -> None:
    # Started 3 h ago with a 1 h deadline, but suspended for 2 h 30 min of it.
    resumed = row("a", started_at=ago(3 * 3600, DB_NOW), suspended_seconds=2.5 * 3600)

    result = run(dataclasses.replace(steady("a"), row=resumed))

    assert of_type(result, SetRowStatus) == []
    never_suspended = dataclasses.replace(resumed, suspended_seconds=0.0)
    (failed,) = of_type(run(dataclasses.replace(steady("a"), row=never_suspended)), SetRowStatus)
    assert failed.message is not None and failed.message.startswith("DeadlineExceeded")


# ---- worker credentials -------------------------------------------------------------------------------
def test_a_generation_that_completes_has_its_credentials_revoked_once() -> None:
    done = row("a", status=GenerationStatus.COMPLETED, poses_completed=50, completed_at=ago(1, DB_NOW))
    view = dataclasses.replace(steady("a"), row=done, pods=(pod("a", phase="Succeeded", exit_code=0),))

    result = run(view)

    assert of_type(result, RevokeCredentials) == [RevokeCredentials(key("a"), uid("a"))]
    settled = dataclasses.replace(view, status=view.status | patch_of(result, "a"))
    assert of_type(run(settled), RevokeCredentials) == []


def test_redis_losing_its_data_gives_running_workers_their_users_back() -> None:
    result = run(steady("a"), trustworthy=False, redis_data_lost=True)

    assert of_type(result, RestoreWorkerAccess) == [RestoreWorkerAccess(key("a"), uid("a"), 1)]
    assert of_type(run(steady("a")), RestoreWorkerAccess) == []
