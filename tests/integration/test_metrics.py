"""Observability, proven against the real Prometheus of the local stack: it scrapes the running
operator (job "posegen-operator", every 5 s) and loads deploy/prometheus/*.rules.yml. After a real
crash recovery, every dashboard and rule expression evaluates, and the key ones return data."""

from __future__ import annotations

import json
import os
import signal
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from posegen_devstack.processes import wait_for
from tests.harness import Cluster
from tests.unit.test_dashboard import load_dashboard, panel_queries
from tests.unit.test_prometheus_rules import plain_groups, rules_of

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "posegen.io", "v1", "posegenerations"
# Dashboard panels that must show data once a generation was recovered from a crash.
PANELS_WITH_DATA = (
    "Stalled generations [A]",
    "Queued generations [A]",
    "Processing generations [A]",
    "Oldest processing age [A]",
    "Recovery rate (15m) [A]",
    "Replicas (active / running) [A]",
    "Recoveries by reason (15m window) [A]",
    "Recovery latency (p50 / p90 / p99, 15m window) [C]",
    "Throughput (poses / minute) [A]",
    "Generations by phase [A]",
    "Last sweep and pass age [A]",
)


def prometheus(cluster: Cluster, path: str, data: dict[str, str] | None = None) -> Any:
    url = cluster.stack.prometheus_url + path
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw.strip().startswith(b"{") else raw.decode()


def query(cluster: Cluster, expr: str) -> list[dict[str, Any]]:
    """An instant query through /api/v1/query; raises on any error (HTTP 400/422 for bad PromQL)."""
    answer = prometheus(cluster, "/api/v1/query", {"query": expr})
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def values(cluster: Cluster, expr: str) -> list[float]:
    return [float(sample["value"][1]) for sample in query(cluster, expr)]


def status_when(
    cluster: Cluster, namespace: str, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The generation's status if it passes ``check`` (a probe for ``wait_for``)."""
    body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    status = dict(body.get("status") or {})
    return status if check(status) else None


def test_prometheus_scrapes_the_operator_and_every_panel_and_rule_evaluates(cluster: Cluster, namespace: str) -> None:
    # The rule files are read at Prometheus's start; reload in case this stack predates them.
    prometheus(cluster, "/-/reload", {})

    # ---- a real recovery: SIGKILL the worker of a running generation ---------------------------
    name = "observed"
    cluster.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PoseGeneration",
            "metadata": {"name": name},
            "spec": {
                "projectId": "test-project",
                "generationType": "TEXT_DESCRIPTION",
                "textPrompt": "running",
                "variationCount": 12,
            },
        },
    )
    status = wait_for(
        lambda: status_when(cluster, namespace, name, lambda s: s.get("posesCompleted", 0) >= 3 and "workerPod" in s),
        timeout=60,
        what="3 poses completed",
    )
    os.kill(cluster.pod_pid(namespace, status["workerPod"]), signal.SIGKILL)
    wait_for(
        lambda: status_when(
            cluster, namespace, name, lambda s: s.get("phase") == "Completed" and s.get("recoveries", 0) >= 1
        ),
        timeout=90,
        what="Completed after a recovery",
    )

    # ---- the key series, scraped ---------------------------------------------------------------
    def positive(expr: str) -> bool:
        return any(value > 0 for value in values(cluster, expr))

    wait_for(lambda: values(cluster, 'up{job="posegen-operator"}') == [1.0], timeout=30, what="operator up")
    wait_for(
        lambda: positive('posegen_recoveries_total{job="posegen-operator", reason="Crashed", result="recovered"}'),
        timeout=30,
        what="the crash recovery counted",
    )
    wait_for(
        lambda: positive('sum(posegen_recovery_latency_seconds_count{reason="Crashed"})'),
        timeout=30,
        what="the recovery latency observed",
    )
    wait_for(lambda: positive("posegen_poses_recorded_total"), timeout=30, what="poses recorded")
    wait_for(lambda: values(cluster, "max(posegen_leader)") == [1.0], timeout=30, what="an active replica")
    wait_for(lambda: positive('posegen_generations{phase="Completed"}'), timeout=30, what="generation phases")

    # ---- the rules: loaded, healthy, and recording the recovery --------------------------------
    expected_groups = {group["name"]: group for group in plain_groups()}

    def healthy_groups() -> dict[str, Any] | None:
        groups = {g["name"]: g for g in prometheus(cluster, "/api/v1/rules")["data"]["groups"]}
        ours = {name: groups.get(name) for name in expected_groups}
        if any(g is None or any(r["health"] != "ok" for r in g["rules"]) for g in ours.values()):
            return None
        return ours

    loaded = wait_for(healthy_groups, timeout=30, what="the posegen rule groups loaded with health ok")
    for group_name, group in expected_groups.items():
        assert len(loaded[group_name]["rules"]) == len(group["rules"])
        assert loaded[group_name]["file"].endswith("deploy/prometheus/posegen.rules.yml")

    wait_for(
        lambda: positive('posegen:recoveries:increase15m{reason="Crashed", result="recovered"}'),
        timeout=30,
        what="the recording rule counting the recovery",
    )
    rate = wait_for(lambda: values(cluster, "posegen:recovery_rate:ratio_rate15m"), timeout=30, what="the rate")
    assert all(0 <= value <= 1 for value in rate)

    # ---- every expression evaluates without error ----------------------------------------------
    for rule in rules_of(plain_groups()):
        query(cluster, rule["expr"])
    panels = panel_queries(load_dashboard())  # Grafana's $__rate_interval as 1m, $job as .*
    for expr in panels.values():
        query(cluster, expr)

    # ---- and the key panels show data (rates need a few scrapes) -------------------------------
    def key_panels_have_data() -> bool:
        empty = [title for title in PANELS_WITH_DATA if not query(cluster, panels[title])]
        assert not empty, f"panels without data: {empty}"
        return True

    wait_for(key_panels_have_data, timeout=30, what="data in the key panels")
