"""The operator as a local process on the stack (as `kopf run` would run it), its workers on the
process node."""

from __future__ import annotations

import json
import signal
import sys

from posegen_devstack.layout import Layout
from posegen_devstack.process_node import NODE_NAME, TAINT
from posegen_devstack.processes import http_get, stop, wait_until


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
