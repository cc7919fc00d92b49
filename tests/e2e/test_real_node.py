"""The faults of a real cluster, on the kubelet node: workers in containers of the image built from
the Dockerfile (non-root, read-only root filesystem, a hostPath output volume), killed, starved of
memory, given a wrong image or no Secret, and a kubelet restarted under them. The ledger (every pose
index once, the seed's duplicate query empty) is checked wherever poses are written."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import (
    Cluster,
    assert_exactly_once,
    create_generation,
    sql,
    wait_for_phase,
    wait_for_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.real_node]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def events_of(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("-n", namespace, "describe", "posegeneration", name).stdout


@pytest.fixture
def operator_with(real_cluster: Cluster) -> Iterator[Any]:
    """Restart the operator with other settings for one test; the usual ones afterwards."""

    def restart(**overrides: str) -> None:
        real_cluster.stack.stop_operator()
        real_cluster.stack.start_operator(**overrides)

    yield restart
    real_cluster.stack.stop_operator()
    real_cluster.stack.start_operator()


def test_kill_9_of_the_worker_container_resumes_exactly_once(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    operator_with(POSEGEN_POSE_SECONDS="0.15")
    created = create_generation(real_cluster, real_namespace, "kill", variationCount=40)
    assert created["metadata"]["name"] == "kill"
    status = wait_for_status(
        real_cluster, real_namespace, "kill", lambda s: s.get("posesCompleted", 0) >= 8, timeout=120, what="8 poses"
    )
    victim = status["workerPod"]
    pod = real_cluster.core.read_namespaced_pod(victim, real_namespace)
    assert pod.spec.node_name == "posegen-kubelet" and pod.spec.host_network is True
    os.kill(real_cluster.container_pid(real_namespace, victim), signal.SIGKILL)
    killed_at = time.time()
    final = wait_for_phase(real_cluster, real_namespace, "kill", "Completed", timeout=180)
    assert final["recoveries"] == 1 and final["lastRecoveryReason"] == "Crashed"
    assert final["workerPod"] != victim
    assert f"worker {victim} exited with code 137" in events_of(real_cluster, real_namespace, "kill")
    generation_id = final["generationId"]
    assert_exactly_once(real_cluster, generation_id, 40)
    first_after = sql(
        real_cluster,
        "SELECT extract(epoch FROM min(created_at)) FROM generated_pose WHERE generation_id = %s AND attempt > 1",
        generation_id,
    )[0][0]
    print(f"\nreal node: kill -9 to the next recorded pose: {float(first_after) - killed_at:.2f}s")
    # Non-root (uid 10001), read-only root filesystem: the images are on the hostPath volume.
    outputs = real_cluster.stack.output_dir / real_namespace
    pngs = list(outputs.rglob("pose-*.png"))
    assert len(pngs) == 40
    assert {path.stat().st_uid for path in pngs} == {10001}


def test_oom_killed_worker_is_recorded_with_what_to_do(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    # Python alone needs more than this: the worker is OOMKilled on every attempt.
    operator_with(POSEGEN_WORKER_RESOURCES='{"limits": {"memory": "12Mi"}}', POSEGEN_MAX_RECOVERIES="1")
    create_generation(real_cluster, real_namespace, "oom", variationCount=5)
    final = wait_for_phase(real_cluster, real_namespace, "oom", "Failed", timeout=180)
    assert "OOMKilled" in final["message"] and "memory limit" in final["message"], final["message"]
    assert final["lastRecoveryReason"] == "OOMKilled"
    assert "raise the worker's memory limit" in events_of(real_cluster, real_namespace, "oom")


def test_a_wrong_image_tag_is_named_at_once_not_after_the_deadline(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    worker_image = real_cluster.stack.operator_env["POSEGEN_WORKER_IMAGE"]
    operator_with(POSEGEN_WORKER_IMAGE=worker_image.rsplit(":", 1)[0] + ":no-such-tag")
    create_generation(real_cluster, real_namespace, "badimage", variationCount=5)
    status = wait_for_status(
        real_cluster,
        real_namespace,
        "badimage",
        lambda s: condition(s, "Degraded").get("reason") in ("ErrImagePull", "ImagePullBackOff"),
        timeout=60,
        what="Degraded with the image pull error",
    )
    assert "no-such-tag" in condition(status, "Degraded")["message"]


@pytest.mark.no_worker_secret
def test_a_missing_worker_secret_is_named_at_once(real_cluster: Cluster, real_namespace: str) -> None:
    create_generation(real_cluster, real_namespace, "nosecret", variationCount=5)
    status = wait_for_status(
        real_cluster,
        real_namespace,
        "nosecret",
        lambda s: condition(s, "Degraded").get("reason") == "CreateContainerConfigError",
        timeout=60,
        what="Degraded with CreateContainerConfigError",
    )
    assert "posegen-worker" in condition(status, "Degraded")["message"]


def test_a_kubelet_restart_is_no_reason_to_recover(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    operator_with(POSEGEN_POSE_SECONDS="0.2")
    create_generation(real_cluster, real_namespace, "kubelet", variationCount=40)
    status = wait_for_status(
        real_cluster, real_namespace, "kubelet", lambda s: s.get("posesCompleted", 0) >= 5, timeout=120, what="5 poses"
    )
    worker = status["workerPod"]
    pid = real_cluster.container_pid(real_namespace, worker)
    real_cluster.stack.restart("kubelet", down_seconds=2)
    assert real_cluster.container_pid(real_namespace, worker) == pid, "the container outlives its kubelet"
    final = wait_for_phase(real_cluster, real_namespace, "kubelet", "Completed", timeout=180)
    assert final["recoveries"] == 0 and final["workerPod"] == worker
    assert_exactly_once(real_cluster, final["generationId"], 40)
