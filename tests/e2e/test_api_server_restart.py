"""The API server restarts under a running operator: the worker-pod watch (pod_watch.py) comes back
on its own, so a worker that crashes afterwards is seen crashing (its pod Failed), not only found
out later by its missing heartbeat."""

from __future__ import annotations

import os
import signal

import pytest

from posegen_devstack.processes import wait_for
from tests.harness import (
    Cluster,
    assert_exactly_once,
    create_generation,
    wait_for_phase,
    wait_for_status,
)

pytestmark = pytest.mark.e2e


@pytest.mark.usefixtures("slow_poses")
def test_a_crash_after_an_api_server_restart_is_seen_as_a_crash(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "steady", variationCount=500)
    status = wait_for_status(cluster, namespace, "steady", lambda s: s.get("posesCompleted", 0) >= 3, what="poses")
    victim = status["workerPod"]

    cluster.stack.restart("kube-apiserver", down_seconds=3)
    wait_for(lambda: cluster.core.list_namespace(limit=1), timeout=60, what="the API server to answer")
    # The operator's watches reconnect with backoff; let it see the worker's pod again first.
    wait_for_status(
        cluster, namespace, "steady", lambda s: s.get("posesCompleted", 0) >= status["posesCompleted"] + 5, what="poses"
    )
    os.kill(cluster.pod_pid(namespace, victim), signal.SIGKILL)

    replaced = wait_for_status(cluster, namespace, "steady", lambda s: s.get("recoveries") == 1, what="a recovery")
    assert replaced["lastRecoveryReason"] == "Crashed", "seen through the pod watch, not the heartbeat"
    final = wait_for_phase(cluster, namespace, "steady", "Completed", timeout=180)
    assert final["recoveries"] == 1
    assert_exactly_once(cluster, final["generationId"], 500)
