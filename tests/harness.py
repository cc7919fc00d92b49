"""Test harness: the same local stack `make up` runs, in a temporary state dir, plus helpers."""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import psycopg2
import requests

from posegen_devstack import kubelet_node
from posegen_devstack.operator_process import worker_secret
from posegen_devstack.processes import wait_for
from posegen_devstack.stack import Stack
from posegen_operator.kube import KubeClient
from posegen_operator.kube.config import from_kubeconfig

T = TypeVar("T")


@dataclass
class Cluster:
    """A running local stack and clients for it."""

    stack: Stack
    api: kubernetes.client.ApiClient

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def coordination(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.api)

    @functools.cached_property
    def operator_api(self) -> KubeClient:
        """The operator's own client (kube/), from the same kubeconfig: for its parts under test."""
        return KubeClient(from_kubeconfig([self.stack.kubeconfig]), connections=4)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.stack.environment()}

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def node_file(self, namespace: str, pod: str, suffix: str) -> Path:
        return self.stack.state_dir / "node" / namespace / f"{pod}.{suffix}"

    def container_pid(self, namespace: str, pod: str, timeout: float = 60) -> int:
        """The host PID of a pod's first container's main process on the kubelet node."""

        return wait_for(
            lambda: kubelet_node.main_pid(self.stack, self.core, namespace, pod),
            timeout=timeout,
            what=f"the main process of {namespace}/{pod}",
        )

    def pod_pid(self, namespace: str, pod: str, timeout: float = 30) -> int:
        pid_file = self.node_file(namespace, pod, "pid")
        return wait_for(
            lambda: int(pid_file.read_text().split()[0]),
            timeout=timeout,
            what=f"pid file of {namespace}/{pod}",
        )


def create_worker_secret(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_secret(namespace, worker_secret(cluster.stack))


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pod_manifest(
    name: str,
    command: list[str],
    *,
    restart_policy: str = "Never",
    grace: int | None = None,
    owner: dict[str, Any] | None = None,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "containers": [{"name": "main", "image": "local", "command": command, "env": env or []}],
    }
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    metadata: dict[str, Any] = {"name": name}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# ---- PoseGenerations ------------------------------------------------------------------------------
GROUP, VERSION, PLURAL = "posegen.io", "v1", "posegenerations"


def generation_manifest(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "projectId": "test-project",
        "generationType": "TEXT_DESCRIPTION",
        "textPrompt": "a person running",
        "variationCount": 10,
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PoseGeneration", "metadata": {"name": name}, "spec": body}


def create_generation(cluster: Cluster, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    created: dict[str, Any] = cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, generation_manifest(name, **spec)
    )
    return created


def get_generation(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return found


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_generation(cluster, namespace, name).get("status") or {})


def wait_for_status(
    cluster: Cluster,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 60,
    what: str = "status",
) -> dict[str, Any]:
    def matching() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, name)
        return status if check(status) else None

    return wait_for(matching, timeout=timeout, what=f"{namespace}/{name} {what}")


def wait_for_phase(cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for_status(
        cluster, namespace, name, lambda s: s.get("phase") == phase, timeout=timeout, what=f"phase {phase}"
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status's condition of type ``kind`` ({} while it has none)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def wait_for_degraded(
    cluster: Cluster, namespace: str, name: str, *reasons: str, timeout: float = 60
) -> dict[str, Any]:
    """The status once its Degraded condition gives one of ``reasons``."""
    return wait_for_status(
        cluster,
        namespace,
        name,
        lambda s: condition(s, "Degraded").get("reason") in reasons,
        timeout=timeout,
        what=f"Degraded with {' or '.join(reasons)}",
    )


def patch_spec(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def sql(cluster: Cluster, query: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(cluster.stack.database_url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


SEED_DUPLICATE_QUERY = """
SELECT generation_id, pose_library_id, COUNT(*)
FROM generated_pose
GROUP BY generation_id, pose_library_id
HAVING COUNT(*) > 1
"""


def worker_log(cluster: Cluster, namespace: str, pod: str) -> str:
    path = cluster.node_file(namespace, pod, "log")
    return path.read_text(errors="replace") if path.exists() else ""


SEED_API = "/api/apps/pose-generator"


def seed_api(
    cluster: Cluster,
    method: str,
    path: str,
    *,
    token: str | None = "",
    base_url: str | None = None,
    timeout: float = 30,
    **kwargs: Any,
) -> requests.Response:
    """Call the seed's API: with the admin token by default, a given one, or none (token=None)."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token or cluster.stack.config.admin_token}"
    url = f"{base_url or cluster.stack.api_url}{SEED_API}{path}"
    return requests.request(method, url, headers=headers, timeout=timeout, **kwargs)


def seed_generate(cluster: Cluster, namespace: str, variation_count: int) -> requests.Response:
    """The seed's generate request, with the body its quickstart sends."""
    body = {
        "projectId": "test-project",
        "generationType": "TEXT_DESCRIPTION",
        "textPrompt": "test pose",
        "variationCount": variation_count,
        "namespace": namespace,
    }
    return seed_api(cluster, "POST", "/generate", json=body)


def poses_of(cluster: Cluster, generation_id: str) -> list[tuple[int, int]]:
    return [
        (r[0], r[1])
        for r in sql(
            cluster,
            "SELECT pose_index, attempt FROM generated_pose WHERE generation_id = %s ORDER BY pose_index",
            generation_id,
        )
    ]


def assert_exactly_once(cluster: Cluster, generation_id: str, total: int) -> None:
    assert [index for index, _ in poses_of(cluster, generation_id)] == list(range(total))
    assert sql(
        cluster,
        "SELECT status, poses_completed, total_expected_poses FROM pose_generation WHERE id = %s",
        generation_id,
    ) == [("completed", total, total)]
    assert sql(cluster, SEED_DUPLICATE_QUERY) == []
