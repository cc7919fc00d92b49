"""Fixtures shared by the integration and end-to-end tiers.

The stack starts once per test session in a temporary state dir (so a developer's `make up` can
run beside it); set POSEGEN_TEST_STATE_DIR to reuse a running stack instead. Every test gets a
fresh namespace, and a failing test prints what helps: pod logs, events and resources."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import kubernetes
import pytest

from posegen_devstack.processes import wait_for
from posegen_devstack.stack import Stack
from tests.harness import Cluster, unique_name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


# Tests run the operator faster than people watch it: quick poses, short heartbeats and sweeps.
TEST_OPERATOR_ENV = {
    "POSEGEN_POSE_SECONDS": "0.05",
    "POSEGEN_SWEEP_INTERVAL_SECONDS": "2",
    "POSEGEN_STATUS_INTERVAL_SECONDS": "0.5",
    "POSEGEN_HEARTBEAT_TTL_SECONDS": "4",
    "POSEGEN_HEARTBEAT_INTERVAL_SECONDS": "0.5",
    "POSEGEN_WORKER_STARTUP_GRACE_SECONDS": "6",
    "POSEGEN_RECOVERY_BACKOFF_SECONDS": "0.5",
    "POSEGEN_MAX_CONCURRENT": "20",
    "POSEGEN_WORKER_GRACE_SECONDS": "10",
    "POSEGEN_GENERATE_NAMESPACES": "t-*",  # /generate into the tests' own namespaces only
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reuse = os.environ.get("POSEGEN_TEST_STATE_DIR")
    state_dir = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="posegen-test-"))
    stack = Stack(state_dir, operator_env=TEST_OPERATOR_ENV)
    try:
        stack.up()
        api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
        yield Cluster(stack, api)
    finally:
        if not reuse:
            stack.down()
            if not os.environ.get("POSEGEN_KEEP_STATE"):
                shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_name("t")
    cluster.core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the service-account controller has made the namespace's default account.
    wait_for(
        lambda: cluster.core.read_namespaced_service_account("default", name),
        timeout=30,
        what="the default service account",
    )
    yield name
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print_diagnostics(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def print_diagnostics(cluster: Cluster, namespace: str) -> None:
    print(f"\n===== diagnostics for namespace {namespace} =====")
    for args in (["get", "all,posegenerations", "-o", "yaml"], ["get", "events", "--sort-by=.lastTimestamp"]):
        result = cluster.kubectl("-n", namespace, *args, check=False)
        print(f"$ kubectl -n {namespace} {' '.join(args)}\n{result.stdout}{result.stderr}")
    for log in sorted((cluster.stack.state_dir / "node" / namespace).glob("*.log")):
        print(f"----- {log.name} (last 60 lines) -----")
        print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    for component in ("operator", "node"):
        log = cluster.stack.log(component)
        if log.exists():
            print(f"----- {component}.log (last 60 lines) -----")
            print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
