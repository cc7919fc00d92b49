"""Recovery end to end, with real processes killed: the seed's "Testing Recovery" and worse."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from functools import partial
from typing import Any

import pytest

from posegen_devstack.processes import free_port, wait_for
from tests.harness import (
    Cluster,
    assert_exactly_once,
    create_generation,
    poses_of,
    seed_api,
    seed_generate,
    sql,
    status_of,
    wait_for_phase,
    wait_for_status,
    worker_log,
)

pytestmark = pytest.mark.e2e


@pytest.mark.usefixtures("slow_poses")
def test_the_seeds_recovery_test_kill_9_resumes_from_the_checkpoint(cluster: Cluster, namespace: str) -> None:
    # 1. Start a generation, through the seed's API.
    response = seed_generate(cluster, namespace, 50)
    assert response.status_code == 201, response.text
    name, generation_id = response.json()["name"], response.json()["generationId"]
    # 2. Wait for 10 poses to complete.
    status = wait_for_status(cluster, namespace, name, lambda s: s.get("posesCompleted", 0) >= 10, what="10 poses")
    victim = status["workerPod"]
    # 3. Kill the worker (pkill -9 -f pose-generation.worker).
    os.kill(cluster.pod_pid(namespace, victim), signal.SIGKILL)
    killed_at = time.time()
    at_kill = sql(cluster, "SELECT poses_completed FROM pose_generation WHERE id = %s", generation_id)[0][0]
    # 4-5. The operator notices in seconds and a new worker resumes: RECOVERY MODE, 50 poses, no duplicates.
    resumed = wait_for_status(cluster, namespace, name, lambda s: s.get("recoveries", 0) >= 1, what="a recovery")
    assert resumed["lastRecoveryReason"] == "Crashed"
    final = wait_for_phase(cluster, namespace, name, "Completed", timeout=120)
    assert final["posesCompleted"] == 50 and final["recoveries"] == 1
    new_worker = final["workerPod"]
    assert new_worker != victim
    log = worker_log(cluster, namespace, new_worker)
    match = re.search(r"RECOVERY MODE: resuming generation \S+ at (\d+)/50", log)
    assert match, log[:2000]
    assert int(match.group(1)) >= at_kill
    assert_exactly_once(cluster, generation_id, 50)
    first_after = sql(
        cluster,
        "SELECT extract(epoch FROM min(created_at)) FROM generated_pose WHERE generation_id = %s AND attempt > 1",
        generation_id,
    )[0][0]
    print(f"\nkill -9 to the next recorded pose: {float(first_after) - killed_at:.2f}s")
    events = cluster.kubectl("-n", namespace, "describe", "posegeneration", name).stdout
    assert "Crashed" in events and "resuming from checkpoint" in events
    operator_log = cluster.stack.log("operator").read_text()
    assert f"[Recovery] Recovering generation {generation_id} (" in operator_log
    assert f"[Recovery] Successfully re-queued generation {generation_id} as job {new_worker}" in operator_log


def test_a_hung_worker_is_replaced_and_records_nothing_after(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "frozen", variationCount=60)
    status = wait_for_status(cluster, namespace, "frozen", lambda s: s.get("posesCompleted", 0) >= 5, what="5 poses")
    pid = cluster.pod_pid(namespace, status["workerPod"])
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    time.sleep(0.5)  # a transaction in flight at the stop may still be committed by Postgres
    frozen_rows = [p for p in poses_of(cluster, status["generationId"]) if p[1] == 1]
    try:
        replaced = wait_for_status(
            cluster,
            namespace,
            "frozen",
            lambda s: s.get("lastRecoveryReason") == "Hung",
            timeout=60,
            what="a Hung recovery",
        )
        detected = time.monotonic() - stopped_at
        fenced = sql(cluster, "SELECT attempt FROM pose_generation WHERE id = %s", replaced["generationId"])[0][0]
        assert fenced >= 2
        print(f"\nSIGSTOP to replacement: {detected:.1f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    final = wait_for_phase(cluster, namespace, "frozen", "Completed", timeout=120)
    after = [p for p in poses_of(cluster, final["generationId"]) if p[1] == 1]
    assert after == frozen_rows, "the frozen attempt recorded nothing after it was replaced"
    assert_exactly_once(cluster, final["generationId"], 60)


def test_a_deleted_worker_pod_is_replaced(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "evicted", variationCount=40)
    status = wait_for_status(cluster, namespace, "evicted", lambda s: s.get("posesCompleted", 0) >= 3, what="poses")
    cluster.core.delete_namespaced_pod(status["workerPod"], namespace)
    final = wait_for_phase(cluster, namespace, "evicted", "Completed", timeout=120)
    assert final["recoveries"] >= 1 and final["lastRecoveryReason"] == "Evicted"
    assert_exactly_once(cluster, final["generationId"], 40)


def test_operator_kill_9_with_workers_dying_while_it_is_down(cluster: Cluster, namespace: str) -> None:
    for name in ("alpha", "beta"):
        create_generation(cluster, namespace, name, variationCount=300)
    pods = [
        wait_for_status(cluster, namespace, n, lambda s: s.get("posesCompleted", 0) >= 3, what="poses")["workerPod"]
        for n in ("alpha", "beta")
    ]
    cluster.stack.stop_operator(sig=signal.SIGKILL)
    for pod in pods:
        os.kill(cluster.pod_pid(namespace, pod), signal.SIGKILL)
    time.sleep(1)
    cluster.stack.start_operator()
    for name in ("alpha", "beta"):
        wait_for_status(
            cluster,
            namespace,
            name,
            lambda s: s.get("recoveries", 0) >= 1,
            timeout=30,
            what="the start-up sweep's recovery",
        )
    log = cluster.stack.log("operator").read_text()
    startup = log[log.rindex("Running startup recovery") :]
    assert "[Recovery] Found 2 stuck generations in database" in startup
    assert "Recovery complete: 2 recovered, 0 failed" in startup
    # Kill the operator again in the middle of the recoveries' restarts, then let it finish.
    cluster.stack.stop_operator(sig=signal.SIGKILL)
    cluster.stack.start_operator()
    for name in ("alpha", "beta"):
        final = wait_for_phase(cluster, namespace, name, "Completed", timeout=180)
        assert_exactly_once(cluster, final["generationId"], 300)


@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_a_service_restart_mid_generation_loses_nothing_and_recovers_nothing(
    cluster: Cluster, namespace: str, service: str
) -> None:
    create_generation(cluster, namespace, "steady", variationCount=120)
    wait_for_status(cluster, namespace, "steady", lambda s: s.get("posesCompleted", 0) >= 10, what="10 poses")
    cluster.stack.restart(service, down_seconds=2)
    final = wait_for_phase(cluster, namespace, "steady", "Completed", timeout=180)
    assert final["recoveries"] == 0, "no false recovery after a dependency blip"
    assert_exactly_once(cluster, final["generationId"], 120)


def test_health_reports_a_dependency_down_with_503(cluster: Cluster) -> None:
    pid_file = cluster.stack.run_dir / "redis.pid"
    os.kill(int(pid_file.read_text()), signal.SIGSTOP)
    try:
        response = seed_api(cluster, "GET", "/health", token=None)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy" and body["checks"]["redis"]["status"] == "disconnected"
        assert body["checks"]["database"]["status"] == "connected"
    finally:
        os.kill(int(pid_file.read_text()), signal.SIGCONT)


@pytest.mark.usefixtures("slow_poses")  # 500 poses must take well over the 30 s deadline
def test_the_deadline_fails_a_generation_and_stops_its_worker(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "late", variationCount=500, recovery={"deadlineSeconds": 30})
    running = wait_for_status(cluster, namespace, "late", lambda s: bool(s.get("workerPod")), what="a worker")
    pid = cluster.pod_pid(namespace, running["workerPod"])
    final = wait_for_phase(cluster, namespace, "late", "Failed", timeout=90)
    assert final["message"].startswith("DeadlineExceeded")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20, what="the worker to stop")
    reasons = cluster.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=late",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout
    assert "Failed" in reasons


def running_attempt(attempt: int, status: dict[str, Any]) -> bool:
    return bool(
        status.get("attempt") == attempt and status.get("phase") == "Processing" and status.get("posesCompleted")
    )


def test_max_recoveries_fails_with_the_reason(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "fragile", variationCount=400, recovery={"maxRecoveries": 1})
    for attempt in (1, 2):
        status = wait_for_status(
            cluster,
            namespace,
            "fragile",
            partial(running_attempt, attempt),
            what=f"attempt {attempt} running",
        )
        os.kill(cluster.pod_pid(namespace, status["workerPod"]), signal.SIGKILL)
        if attempt == 1:
            wait_for_status(cluster, namespace, "fragile", lambda s: s.get("recoveries") == 1, what="recovery 1")
    final = wait_for_phase(cluster, namespace, "fragile", "Failed", timeout=60)
    assert final["message"].startswith("MaxRecoveriesExceeded")
    assert final["recoveries"] == 1
    failed = [c for c in final["conditions"] if c["type"] == "Failed"]
    assert failed and failed[0]["reason"] == "MaxRecoveriesExceeded"


def test_the_recover_annotation_checks_one_generation_now(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "checked", variationCount=30)
    wait_for_status(cluster, namespace, "checked", lambda s: s.get("posesCompleted", 0) >= 2, what="poses")
    cluster.kubectl("-n", namespace, "annotate", "posegeneration", "checked", "posegen.io/recover=check-1")
    acknowledged = wait_for_status(
        cluster, namespace, "checked", lambda s: s.get("lastRecoveryRequest") == "check-1", what="the check"
    )
    assert acknowledged.get("recoveries", 0) == 0, "a healthy worker is left alone"
    wait_for_phase(cluster, namespace, "checked", "Completed")


@pytest.mark.usefixtures("slow_poses")
def test_two_replicas_never_both_act_and_the_standby_takes_over(cluster: Cluster, namespace: str) -> None:
    standby_api = free_port()
    cluster.stack.start_operator(
        "operator-b",
        POSEGEN_POSE_SECONDS="0.15",  # the generation must outlast the lease hand-over
        POSEGEN_IDENTITY="standby-operator",
        POSEGEN_API_PORT=str(standby_api),
        POSEGEN_METRICS_PORT=str(free_port()),
        POSEGEN_PROBE_PORT=str(free_port()),
    )
    try:
        time.sleep(3)
        standby_log = cluster.stack.log("operator-b")
        assert "became the active replica" not in standby_log.read_text()
        # The standby does not act, nor forward the caller's token: it names the active replica.
        refused = seed_api(cluster, "POST", "/recovery/trigger", base_url=f"http://127.0.0.1:{standby_api}")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert refused.json()["activeReplica"] == "local-operator"
        assert "trigger: manual" not in standby_log.read_text()
        create_generation(cluster, namespace, "handover", variationCount=400)
        wait_for_status(cluster, namespace, "handover", lambda s: s.get("posesCompleted", 0) >= 3, what="poses")
        assert "started generation" not in standby_log.read_text(), "the standby did nothing"
        cluster.stack.stop_operator(sig=signal.SIGKILL)
        wait_for(
            lambda: "became the active replica" in standby_log.read_text(), timeout=40, what="the standby to take over"
        )
        os.kill(cluster.pod_pid(namespace, status_of(cluster, namespace, "handover")["workerPod"]), signal.SIGKILL)
        final = wait_for_phase(cluster, namespace, "handover", "Completed", timeout=180)
        assert final["recoveries"] >= 1
        assert "Successfully re-queued generation" in standby_log.read_text()
        assert_exactly_once(cluster, final["generationId"], 400)
    finally:
        cluster.stack.stop_operator("operator-b")
        cluster.stack.start_operator()
