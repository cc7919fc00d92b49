"""The operator as a local process on the stack (as `kopf run` would run it), its workers on the
process node, or in containers on the kubelet node."""

from __future__ import annotations

import json
import signal
import sys

from posegen_devstack import kubelet_node
from posegen_devstack.layout import Layout
from posegen_devstack.process_node import NODE_NAME, TAINT
from posegen_devstack.processes import http_get, stop, wait_until

WORKER_SECRET = "posegen-worker"


def operator_environment(layout: Layout, extra: dict[str, str], **overrides: str) -> dict[str, str]:
    """The operator's settings on the local stack: images go to <state>/outputs on this machine."""
    ports = layout.config.ports
    env = {
        "POSEGEN_API_HOST": "127.0.0.1",
        "POSEGEN_API_PORT": str(ports.operator_api),
        "POSEGEN_METRICS_PORT": str(ports.operator_metrics),
        "POSEGEN_PROBE_PORT": str(ports.operator_probe),
        "POSEGEN_OUTPUT_HOST_PATH": str(layout.output_dir),
        "POSEGEN_OUTPUT_MOUNT_PATH": str(layout.output_dir),
        "POSEGEN_LEASE_NAMESPACE": "default",
        "POSEGEN_IDENTITY": "local-operator",
        "POSEGEN_POSE_SECONDS": "0.6",
        "POSEGEN_STATUS_INTERVAL_SECONDS": "1",
        # Its workers are local processes: they run on the process node, whatever else is there.
        "POSEGEN_WORKER_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": NODE_NAME}),
        "POSEGEN_WORKER_TOLERATIONS": json.dumps([{**TAINT, "operator": "Equal"}]),
    }
    env.update(extra)
    env.update(overrides)
    return env


def kubelet_node_environment(layout: Layout, worker_image: str) -> dict[str, str]:
    """Settings that put the workers in containers on the kubelet node, from the image built from
    the Dockerfile, their connection URLs in the Secret `posegen-worker` of their namespace."""
    return {
        "POSEGEN_WORKER_IMAGE": worker_image,
        "POSEGEN_WORKER_HOST_NETWORK": "true",
        "POSEGEN_WORKER_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": kubelet_node.NODE_NAME}),
        "POSEGEN_WORKER_TOLERATIONS": "[]",
        "POSEGEN_WORKER_SECRET": WORKER_SECRET,
        "POSEGEN_WORKER_RESOURCES": json.dumps({"limits": {"memory": "256Mi"}}),
        "POSEGEN_OUTPUT_HOST_PATH": str(layout.output_dir),
        "POSEGEN_OUTPUT_MOUNT_PATH": "/var/lib/posegen/outputs",
        # A container starts in about a second, the worker's Python in a few more.
        "POSEGEN_WORKER_STARTUP_GRACE_SECONDS": "20",
        "POSEGEN_WORKER_START_TIMEOUT_SECONDS": "60",
    }


def worker_secret(layout: Layout) -> dict[str, object]:
    """What the chart creates in each namespace where generations run: the workers' connection URLs."""
    return {
        "metadata": {"name": WORKER_SECRET},
        "stringData": {"database-url": layout.database_url, "redis-url": layout.redis_url},
    }


def start_operator(layout: Layout, extra: dict[str, str], name: str = "operator", **overrides: str) -> int:
    layout.ensure_output_dir()
    pid = layout.start(
        name, [sys.executable, "-m", "posegen_operator"], env=operator_environment(layout, extra, **overrides)
    )
    port = int(overrides.get("POSEGEN_API_PORT", layout.config.ports.operator_api))
    wait_until(
        lambda: b"ready" in http_get(f"http://127.0.0.1:{port}/readyz"), timeout=60, what=name, log=layout.log(name)
    )
    return pid


def stop_operator(layout: Layout, name: str = "operator", sig: int = signal.SIGTERM) -> bool:
    return stop(layout.run_dir / f"{name}.pid", sig=sig)
