"""The faults of a real cluster, on the kubelet node: workers in containers of the image built from
the Dockerfile (non-root, read-only root filesystem, a hostPath output volume), killed, starved of
memory, given a wrong image or no Secret, and a kubelet restarted under them. The ledger (every pose
index once, the seed's duplicate query empty) is checked wherever poses are written."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posegen_devstack import chart_install, control_plane, images, kubelet_node
from posegen_devstack.layout import StackConfig
from posegen_devstack.process_node import NODE_NAME, TAINT
from posegen_devstack.processes import wait_for
from posegen_devstack.stack import Stack
from tests.harness import (
    Cluster,
    assert_exactly_once,
    condition,
    create_generation,
    sql,
    wait_for_degraded,
    wait_for_phase,
    wait_for_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.real_node]


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
    status = wait_for_degraded(real_cluster, real_namespace, "badimage", "ErrImagePull", "ImagePullBackOff")
    assert "no-such-tag" in condition(status, "Degraded")["message"]


@pytest.mark.no_worker_secret
def test_a_missing_worker_secret_is_named_at_once(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    # Without minted credentials workers read their database and Redis URLs from the worker Secret
    # (with them, that Secret holds only the optional FLUX key, and its absence stops nothing).
    operator_with(POSEGEN_WORKER_CREDENTIAL_KEY="")
    create_generation(real_cluster, real_namespace, "nosecret", variationCount=5)
    status = wait_for_degraded(real_cluster, real_namespace, "nosecret", "CreateContainerConfigError")
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


def test_a_second_stack_uses_the_process_node_and_says_so(
    real_cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Stack(tmp_path / "other")
    other.state_dir.mkdir()
    other._config = StackConfig.load_or_create(other.config_file, real_cluster.stack.config.bin_dir)
    assert any("another kubelet runs on this machine" in problem for problem in kubelet_node.missing(other))
    assert other.start_kubelet_node() is False
    assert "the kubelet node cannot run here: another kubelet runs" in capsys.readouterr().err


def freezer_state(pid: int) -> Path:
    """The freezer cgroup file of a process (cgroup v1, or cgroup.freeze on v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path("/sys/fs/cgroup/freezer") / path.lstrip("/") / "freezer.state"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/") / "cgroup.freeze"
    raise AssertionError(f"no freezer cgroup for pid {pid}")


def set_frozen(state: Path, frozen: bool) -> None:
    if state.name == "cgroup.freeze":
        state.write_text("1" if frozen else "0")
    else:
        state.write_text("FROZEN" if frozen else "THAWED")


def test_node_loss_moves_the_work_and_the_zombie_writes_nothing(
    real_cluster: Cluster, real_namespace: str, operator_with: Any
) -> None:
    """The kubelet node is lost (kubelet stopped, the worker's cgroup frozen): the node goes NotReady
    and is tainted, the work moves to the process node while the old pod hangs in Terminating; the
    thawed zombie writes nothing, its successor is not disturbed, every pose is recorded once."""
    stack = real_cluster.stack
    outputs = str(stack.output_dir)  # the same path in containers and for the process node's processes
    operator_with(
        POSEGEN_POSE_SECONDS="0.3",
        # Longer than the node-monitor grace (20 s): the node is tainted before the hang is called.
        POSEGEN_HEARTBEAT_TTL_SECONDS="40",
        POSEGEN_HEARTBEAT_INTERVAL_SECONDS="2",
        POSEGEN_WORKER_NODE_SELECTOR="{}",
        POSEGEN_WORKER_TOLERATIONS=json.dumps([{**TAINT, "operator": "Equal"}]),
        POSEGEN_OUTPUT_MOUNT_PATH=outputs,
    )
    real_cluster.kubectl("cordon", NODE_NAME)  # the first worker goes to the kubelet node
    try:
        create_generation(real_cluster, real_namespace, "lost", variationCount=60)
        status = wait_for_status(
            real_cluster, real_namespace, "lost", lambda s: s.get("posesCompleted", 0) >= 5, timeout=120, what="5 poses"
        )
    finally:
        real_cluster.kubectl("uncordon", NODE_NAME)
    zombie = status["workerPod"]
    assert real_cluster.core.read_namespaced_pod(zombie, real_namespace).spec.node_name == kubelet_node.NODE_NAME
    state = freezer_state(real_cluster.container_pid(real_namespace, zombie))
    stack.stop_component("kubelet")
    set_frozen(state, True)
    frozen_at = time.time()
    try:
        wait_for(
            lambda: not control_plane.node_ready(stack, kubelet_node.NODE_NAME),
            timeout=60,
            what="the kubelet node NotReady",
        )
        moved = wait_for_status(
            real_cluster,
            real_namespace,
            "lost",
            lambda s: s.get("workerPod") not in (None, zombie) and s.get("phase") == "Processing",
            timeout=180,
            what="the work moved to a new worker",
        )
        successor = real_cluster.core.read_namespaced_pod(moved["workerPod"], real_namespace)
        assert successor.spec.node_name == NODE_NAME
        old = real_cluster.core.read_namespaced_pod(zombie, real_namespace)
        assert old.metadata.deletion_timestamp is not None, "the lost node's pod hangs in Terminating"
    finally:
        set_frozen(state, False)
    kubelet_node.start_kubelet(stack)
    final = wait_for_phase(real_cluster, real_namespace, "lost", "Completed", timeout=240)
    generation_id = final["generationId"]
    assert_exactly_once(real_cluster, generation_id, 60)
    late = sql(
        real_cluster,
        "SELECT count(*) FROM generated_pose WHERE generation_id = %s AND attempt = %s "
        "AND created_at > to_timestamp(%s)",
        generation_id,
        int(zombie.rsplit("-w", 1)[1]),
        frozen_at,
    )[0][0]
    assert late == 0, "the thawed zombie wrote after its node was lost"


def operator_pod(cluster: Cluster) -> Any:
    pods = cluster.core.list_namespaced_pod(
        chart_install.RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
    ).items
    running = [pod for pod in pods if pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None]
    return running[0] if len(running) == 1 else None


def test_the_chart_in_containers_upgrade_and_rollback_lose_nothing(real_cluster: Cluster, real_namespace: str) -> None:
    """`make demo`'s way: the chart's operator Deployment and migration Job in containers on the
    kubelet node; `helm upgrade` to a new image tag and `helm rollback` with a generation in flight."""
    stack = real_cluster.stack
    built = images.build_images(stack)
    operator_image = built["operator"]
    repository, tag = operator_image.rsplit(":", 1)
    images.push(f"localhost/posegen/posegen-operator:{tag}", f"{repository}:rollout")
    overrides = {"worker": {"poseSeconds": 0.3, "secret": {"namespaces": [real_namespace]}}}
    try:
        chart_install.install(stack, built, stop_local_operator=stack.stop_operator, overrides=overrides)
        installed = operator_pod(real_cluster)
        assert installed.spec.node_name == kubelet_node.NODE_NAME and installed.spec.host_network
        assert installed.spec.containers[0].image == operator_image
        create_generation(real_cluster, real_namespace, "rolling", variationCount=60)
        wait_for_status(
            real_cluster,
            real_namespace,
            "rolling",
            lambda s: s.get("posesCompleted", 0) >= 3,
            timeout=120,
            what="3 poses under the installed chart",
        )
        chart_install.helm(
            stack,
            "upgrade",
            chart_install.RELEASE,
            str(chart_install.CHART),
            "--reuse-values",
            "--set",
            "image.tag=rollout",
            "--wait",
            "--timeout=300s",
        )
        upgraded = wait_for(lambda: operator_pod(real_cluster), timeout=120, what="the upgraded operator")
        assert upgraded.spec.containers[0].image == f"{repository}:rollout"
        chart_install.helm(stack, "rollback", chart_install.RELEASE, "1", "--wait", "--timeout=300s")
        rolled_back = wait_for(
            lambda: (
                (pod := operator_pod(real_cluster)) is not None
                and pod.spec.containers[0].image == operator_image
                and pod
            ),
            timeout=120,
            what="the rolled-back operator",
        )
        assert rolled_back.metadata.name != upgraded.metadata.name
        final = wait_for_phase(real_cluster, real_namespace, "rolling", "Completed", timeout=240)
        assert final["recoveries"] == 0, "an operator rollout is no reason to replace a healthy worker"
        assert_exactly_once(real_cluster, final["generationId"], 60)
    finally:
        chart_install.uninstall(stack)
        stack.start_operator()
