"""Faults beyond a crash, end to end: Redis losing its data, a garbage label on a worker pod, pod
creates refused by a quota or a squatter, and a controller loop wedged on a database that never
answers. Each must change nothing for healthy generations and never spend a recovery wrongly."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from posegen_devstack.processes import wait_for
from tests.harness import (
    Cluster,
    assert_exactly_once,
    condition,
    create_generation,
    pod_manifest,
    wait_for_degraded,
    wait_for_phase,
    wait_for_status,
)

pytestmark = pytest.mark.e2e


def events_of(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    listed = cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [(event.reason, event.message) for event in listed.items]


@pytest.mark.usefixtures("slow_poses")
def test_redis_losing_all_its_data_recovers_no_healthy_worker(cluster: Cluster, namespace: str) -> None:
    names = [f"g{i}" for i in range(4)]
    for name in names:
        create_generation(cluster, namespace, name, variationCount=200)
    for name in names:
        wait_for_status(cluster, namespace, name, lambda s: s.get("posesCompleted", 0) >= 5, what="5 poses")
    client = redis.Redis.from_url(cluster.stack.redis_url)
    for _ in range(3):  # FLUSHALL, as a failover to an empty replica or a restart without persistence does
        client.flushall()
        time.sleep(3)
    for name in names:
        final = wait_for_phase(cluster, namespace, name, "Completed", timeout=240)
        assert final["recoveries"] == 0, f"{name} was recovered after Redis lost its data: {final}"
        assert_exactly_once(cluster, final["generationId"], 200)
    assert "redis lost its data" in cluster.stack.log("operator").read_text()


def test_a_garbage_label_on_one_pod_halts_nothing_else(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "labelled", variationCount=300)
    status = wait_for_status(cluster, namespace, "labelled", lambda s: s.get("posesCompleted", 0) >= 3, what="poses")
    pod = status["workerPod"]
    cluster.stack.stop_operator()
    cluster.kubectl("-n", namespace, "label", "pod", pod, "posegen.io/attempt=x", "--overwrite")
    cluster.stack.start_operator()  # it comes up with the bad pod present

    create_generation(cluster, namespace, "bystander", variationCount=20)
    bystander = wait_for_phase(cluster, namespace, "bystander", "Completed", timeout=90)
    assert bystander["recoveries"] == 0
    final = wait_for_phase(cluster, namespace, "labelled", "Completed", timeout=180)
    assert_exactly_once(cluster, final["generationId"], 300)
    assert any(reason == "MalformedWorkerPod" for reason, _ in events_of(cluster, namespace, "labelled"))
    log = cluster.stack.log("operator").read_text()
    assert log.count(f"skipping pod {namespace}/{pod}") == 1, "reported once, not every pass"


@pytest.mark.usefixtures("slow_poses")
def test_a_quota_refusing_the_replacement_spends_no_recovery(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "quota", variationCount=200)
    status = wait_for_status(cluster, namespace, "quota", lambda s: s.get("posesCompleted", 0) >= 3, what="poses")
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    cluster.core.create_namespaced_resource_quota(namespace, quota)
    os.kill(cluster.pod_pid(namespace, status["workerPod"]), signal.SIGKILL)
    refused = wait_for_degraded(cluster, namespace, "quota", "PodCreateRefused")
    assert "quota" in condition(refused, "Degraded")["message"]
    time.sleep(6)  # several refused creates under backoff
    assert wait_for_status(cluster, namespace, "quota", lambda s: s.get("recoveries") == 1, what="one recovery")
    assert any(reason == "PodCreateRefused" for reason, _ in events_of(cluster, namespace, "quota"))

    cluster.core.delete_namespaced_resource_quota("no-pods", namespace)
    final = wait_for_phase(cluster, namespace, "quota", "Completed", timeout=180)
    assert final["recoveries"] == 1, "only the crash counts, not the refused creates"
    assert condition(final, "Degraded")["status"] == "False"
    assert_exactly_once(cluster, final["generationId"], 200)


def test_a_pod_squatting_the_workers_name_is_never_adopted(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "squatter-owner"}})
    controller = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "squatter-owner",
        "uid": owner.metadata.uid,
        "controller": True,
    }
    cluster.core.create_namespaced_pod(namespace, pod_manifest("squat-w1", ["sleep", "600"], owner=controller))

    create_generation(cluster, namespace, "squat", variationCount=10)
    refused = wait_for_degraded(cluster, namespace, "squat", "PodCreateRefused")
    assert "already exists" in condition(refused, "Degraded")["message"].lower()

    cluster.core.delete_namespaced_pod("squat-w1", namespace, grace_period_seconds=0)
    final = wait_for_phase(cluster, namespace, "squat", "Completed", timeout=120)
    assert (final["recoveries"], final["attempt"]) == (0, 1)
    assert_exactly_once(cluster, final["generationId"], 10)


def test_liveness_fails_while_the_loop_is_wedged_on_the_database(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.stack.config.ports.operator_probe}/healthz"
    assert requests.get(url, timeout=5).status_code == 200
    postgres = postmaster_pid(cluster.stack.state_dir)
    os_kill_group(postgres, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        wait_for(lambda: requests.get(url, timeout=5).status_code == 500, timeout=60, what="liveness failing")
    finally:
        os_kill_group(postgres, signal.SIGCONT)
    wait_for(lambda: requests.get(url, timeout=5).status_code == 200, timeout=60, what="liveness back")


def postmaster_pid(state_dir: Path) -> int:
    (pid_file,) = state_dir.glob("**/postmaster.pid")
    return int(pid_file.read_text().split()[0])


def os_kill_group(postmaster: int, sig: signal.Signals) -> None:
    """Signal the postmaster and its backends (the backends would still answer on their own)."""
    pgrep = ["pgrep", "-P", str(postmaster)]
    children = subprocess.run(pgrep, check=False, capture_output=True, text=True).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        os.kill(pid, sig)


@pytest.mark.usefixtures("slow_poses")
def test_a_postgres_outage_is_shown_and_costs_no_generation_anything(cluster: Cluster, namespace: str) -> None:
    names = ("outage-a", "outage-b")
    for name in names:
        create_generation(cluster, namespace, name, variationCount=200)
    for name in names:
        wait_for_status(cluster, namespace, name, lambda s: s.get("posesCompleted", 0) >= 5, what="5 poses")
    outage = threading.Thread(target=cluster.stack.restart, args=("postgres",), kwargs={"down_seconds": 20})
    outage.start()
    try:
        for name in names:
            degraded = wait_for_degraded(cluster, namespace, name, "DatabaseUnavailable", timeout=30)
            assert condition(degraded, "Degraded")["status"] == "True"
    finally:
        outage.join()
    for name in names:
        final = wait_for_phase(cluster, namespace, name, "Completed", timeout=240)
        assert final["recoveries"] == 0, f"the outage cost {name} a recovery: {final}"
        assert condition(final, "Degraded")["status"] == "False"
        assert_exactly_once(cluster, final["generationId"], 200)
    log = cluster.stack.log("operator").read_text()
    assert "failed again" in log, "passes back off while the database is down"
