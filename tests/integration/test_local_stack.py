"""The foundation, proven against the real stack: API server, node runner, GC, Postgres, Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from posegen_devstack.process_node import NODE_HEARTBEAT
from posegen_devstack.processes import pid_alive, wait_for
from tests.harness import Cluster, pod_manifest, unique_name

pytestmark = pytest.mark.integration


def pod_phase(cluster: Cluster, namespace: str, name: str) -> str:
    return str(cluster.core.read_namespaced_pod(name, namespace).status.phase)


def pod_is(cluster: Cluster, namespace: str, name: str, phase: str) -> bool:
    return pod_phase(cluster, namespace, name) == phase


def pod_gone(cluster: Cluster, namespace: str, name: str) -> bool:
    return not cluster.core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}").items


def terminated(cluster: Cluster, namespace: str, name: str) -> Any:
    statuses = cluster.core.read_namespaced_pod(name, namespace).status.container_statuses or []
    return statuses[0].state.terminated if statuses else None


def test_api_server_is_ready_and_reports_a_stamped_version(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0-master+$Format:%H$"
    assert version["serverVersion"]["gitTreeState"] == "clean"


def test_crd_with_cel_rule_refuses_invalid_object_at_apply(cluster: Cluster, namespace: str) -> None:
    group = f"{unique_name('w')}.example.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                    ],
                                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")

    def widget(name: str, low: int, high: int) -> str:
        return json.dumps(
            {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"min": low, "max": high},
            }
        )

    try:
        ok = wait_for(
            lambda: (
                cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=widget("good", 1, 2), check=False).returncode
                == 0
            ),
            what="the new CRD to serve",
        )
        assert ok
        refused = cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=widget("bad", 5, 2), check=False)
        assert refused.returncode != 0
        assert "min must not exceed max" in refused.stderr
    finally:
        cluster.kubectl("delete", f"crd/widgets.{group}", "--wait=false", check=False)


def test_pods_run_to_succeeded_and_failed_with_their_exit_codes(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "conf"}, "data": {"mode": "fast"}})
    env: list[dict[str, Any]] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "mode"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
    ]
    script = "import os; print(*(os.environ[k] for k in ('TOKEN','MODE','POD_NAME','POD_NS','GREETING')))"
    cluster.core.create_namespaced_pod(namespace, pod_manifest("good", ["python", "-c", script], env=env))
    cluster.core.create_namespaced_pod(namespace, pod_manifest("bad", ["sh", "-c", "exit 3"]))

    wait_for(lambda: pod_phase(cluster, namespace, "good") == "Succeeded", what="good to succeed")
    wait_for(lambda: pod_phase(cluster, namespace, "bad") == "Failed", what="bad to fail")
    assert terminated(cluster, namespace, "good").exit_code == 0
    assert terminated(cluster, namespace, "bad").exit_code == 3
    output = cluster.node_file(namespace, "good", "log").read_text()
    assert f"s3cret fast good {namespace} hi good" in output


def test_kill_9_of_a_pod_process_is_reported_as_a_failure(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_pod(namespace, pod_manifest("sleeper", ["sleep", "600"]))
    pid = cluster.pod_pid(namespace, "sleeper")
    wait_for(lambda: pod_phase(cluster, namespace, "sleeper") == "Running", what="Running")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pod_phase(cluster, namespace, "sleeper") == "Failed", what="Failed after kill -9")
    state = terminated(cluster, namespace, "sleeper")
    assert state.exit_code == 137
    assert state.reason == "Error"


def test_restart_policy_on_failure_restarts_the_container(cluster: Cluster, namespace: str) -> None:
    marker = cluster.stack.state_dir / f"{namespace}-marker"
    script = f"test -e {marker} && exit 0; touch {marker}; exit 1"
    cluster.core.create_namespaced_pod(
        namespace, pod_manifest("flaky", ["sh", "-c", script], restart_policy="OnFailure")
    )
    wait_for(lambda: pod_phase(cluster, namespace, "flaky") == "Succeeded", what="success after a restart")
    status = cluster.core.read_namespaced_pod("flaky", namespace).status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1


def test_deleting_a_pod_terminates_its_process_within_the_grace_period(cluster: Cluster, namespace: str) -> None:
    ready = "print('ready', flush=True); time.sleep(600)"
    graceful = f"import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); {ready}"
    stubborn = f"import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); {ready}"
    cluster.core.create_namespaced_pod(namespace, pod_manifest("graceful", ["python", "-c", graceful], grace=30))
    cluster.core.create_namespaced_pod(namespace, pod_manifest("stubborn", ["python", "-c", stubborn], grace=2))
    pids = {name: cluster.pod_pid(namespace, name) for name in ("graceful", "stubborn")}
    for name in pids:
        wait_for(partial(pod_is, cluster, namespace, name, "Running"), what=f"{name} Running")
        # Running means started, not that Python has set its signal handler yet (slow under load).
        wait_for(partial(says_ready, cluster.node_file(namespace, name, "log")), what=f"{name} handling SIGTERM")
    started = time.monotonic()
    for name in pids:
        cluster.core.delete_namespaced_pod(name, namespace)
    wait_for(lambda: not process_exists(pids["graceful"]), timeout=10, what="graceful process to exit")
    graceful_seconds = time.monotonic() - started
    wait_for(lambda: not process_exists(pids["stubborn"]), timeout=15, what="stubborn process to be killed")
    stubborn_seconds = time.monotonic() - started
    assert graceful_seconds < 30, "SIGTERM was honoured well inside the grace period"
    assert stubborn_seconds >= 2, "SIGKILL came only after the 2 s grace period"
    for name in pids:
        wait_for(partial(pod_gone, cluster, namespace, name), what=f"{name} removed from the API")


def says_ready(log: Path) -> bool:
    return log.exists() and "ready" in log.read_text()


def test_deleting_an_owner_garbage_collects_its_pods(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    cluster.core.create_namespaced_pod(namespace, pod_manifest("owned", ["sleep", "600"], owner=reference, grace=1))
    pid = cluster.pod_pid(namespace, "owned")
    cluster.core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: not cluster.core.list_namespaced_pod(namespace).items,
        timeout=60,
        what="the owned pod to be garbage-collected",
    )
    wait_for(lambda: not process_exists(pid), timeout=10, what="the owned pod's process to end")


def test_node_runner_restart_adopts_running_pods(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_pod(namespace, pod_manifest("survivor", ["sleep", "600"]))
    pid = cluster.pod_pid(namespace, "survivor")
    wait_for(lambda: pod_phase(cluster, namespace, "survivor") == "Running", what="Running")
    node_pid_file = cluster.stack.run_dir / "node.pid"
    os.kill(int(node_pid_file.read_text()), signal.SIGKILL)
    time.sleep(0.5)
    assert process_exists(pid), "pod processes outlive the node runner"
    cluster.stack.up()  # idempotent: restarts only what is down, here the node runner
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pod_phase(cluster, namespace, "survivor") == "Failed", what="adopted pod's exit reported")
    assert terminated(cluster, namespace, "survivor").exit_code == 137


def test_namespaces_can_be_deleted(cluster: Cluster) -> None:
    name = unique_name("gone")
    cluster.core.create_namespace({"metadata": {"name": name}})
    cluster.core.create_namespaced_config_map(name, {"metadata": {"name": "x"}})
    cluster.core.delete_namespace(name)
    wait_for(
        lambda: not cluster.core.list_namespace(field_selector=f"metadata.name={name}").items,
        timeout=60,
        what="the namespace to be finalized",
    )


def test_postgres_and_redis_answer(cluster: Cluster) -> None:
    conn = psycopg2.connect(cluster.stack.database_url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert redis.Redis.from_url(cluster.stack.redis_url, socket_timeout=2).ping()


def test_prometheus_is_up_with_promtool(cluster: Cluster) -> None:
    result = subprocess.run(["promtool", "--version"], capture_output=True, text=True, env=cluster.env, check=False)
    assert result.returncode == 0
    with urllib.request.urlopen(f"{cluster.stack.prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200


def process_exists(pid: int) -> bool:
    return pid_alive(pid)


def test_process_node_rides_out_an_api_server_restart(cluster: Cluster, namespace: str) -> None:
    """Like a kubelet: an API server away for two heartbeats is no reason to exit (it once did, on
    the first refused connection of its heartbeat)."""
    node_pid = int((cluster.stack.run_dir / "node.pid").read_text())
    cluster.stack.restart("kube-apiserver", down_seconds=2 * NODE_HEARTBEAT + 1)
    assert pid_alive(node_pid), "the process node exited while the API server was away"
    cluster.core.create_namespaced_pod(namespace, pod_manifest("after", ["true"]))
    wait_for(lambda: pod_is(cluster, namespace, "after", "Succeeded"), timeout=60, what="a pod run after the restart")
