"""The operator installed with its Helm chart on the kubelet node (`make demo`): the operator
Deployment and the migration Job run in containers from the stack's registry, and the stack's own
operator process steps aside (one operator acts at a time)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from posegen_devstack.layout import REPO_ROOT, Layout

CHART = REPO_ROOT / "charts" / "posegen-operator"
LOCAL_VALUES = REPO_ROOT / "deploy" / "local" / "values.yaml"
RELEASE = "posegen"
RELEASE_NAMESPACE = "posegen-system"
DEPLOYMENT = "posegen-operator"  # fullnameOverride in deploy/local/values.yaml
WORKER_MOUNT = "/var/lib/posegen/outputs"


def stack_values(layout: Layout, built: dict[str, str]) -> dict[str, Any]:
    """What only the running stack knows: its ports, URLs, image names and output directory."""
    ports = layout.config.ports

    def image(target: str) -> dict[str, str]:
        repository, tag = built[target].rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    # In-cluster clients reach the API server on loopback (there is no kube-proxy for 10.0.0.1).
    api_env = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(ports.apiserver)},
    ]
    return {
        "image": image("operator"),
        "database": {"url": layout.database_url},
        "redis": {"url": layout.redis_url},
        "admin": {"token": layout.config.admin_token},
        "operator": {
            "ports": {"api": ports.operator_api, "metrics": ports.operator_metrics, "probe": ports.operator_probe},
            "extraEnv": api_env,
        },
        "worker": {
            "image": image("worker"),
            "extraEnv": api_env,
            "output": {"hostPath": str(layout.output_dir), "mountPath": WORKER_MOUNT},
        },
    }


def marker(layout: Layout) -> Path:
    """While this file exists the chart's operator is the one: `up` starts no operator process."""
    return layout.run_dir / "operator.chart"


def install(
    layout: Layout,
    built: dict[str, str],
    *,
    stop_local_operator: Callable[[], object],
    overrides: dict[str, Any] | None = None,
) -> None:
    """`helm upgrade --install` with deploy/local/values.yaml, then the stack's values, then ``overrides``."""
    layout.ensure_output_dir()
    values = layout.state_dir / "chart-values.yaml"
    values.write_text(yaml.safe_dump(stack_values(layout, built)))
    more = layout.state_dir / "chart-overrides.yaml"
    more.write_text(yaml.safe_dump(overrides or {}))
    layout.run_dir.mkdir(exist_ok=True)
    marker(layout).write_text(json.dumps(built) + "\n")
    stop_local_operator()
    subprocess.run(
        [
            layout.binary("helm"),
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            f"--kubeconfig={layout.kubeconfig}",
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "-f",
            str(LOCAL_VALUES),
            "-f",
            str(values),
            "-f",
            str(more),
            "--wait",
            "--timeout=300s",
        ],
        check=True,
        env=layout.environment(),
    )


def helm(layout: Layout, *args: str) -> str:
    result = subprocess.run(
        [layout.binary("helm"), f"--kubeconfig={layout.kubeconfig}", "--namespace", RELEASE_NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=True,
        env=layout.environment(),
    )
    return result.stdout


def uninstall(layout: Layout) -> None:
    helm(layout, "uninstall", RELEASE, "--ignore-not-found", "--wait", "--timeout=120s")
    marker(layout).unlink(missing_ok=True)
