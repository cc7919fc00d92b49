"""The alert and recording rules: promtool accepts them and their unit tests pass, every alert is
documented, and the plain file and the chart's PrometheusRule are the same rules.

One source: charts/posegen-operator/rules/posegen.rules.yml (a Helm `tpl` template). The chart's
PrometheusRule renders it; deploy/prometheus/posegen.rules.yml is it rendered with the chart's
defaults by deploy/prometheus/render_rules.py (the test below fails when that file is stale)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.unit.test_dashboard import exported_series_names, find_helm, find_promtool, render_chart, series_names

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "posegen.rules.yml"
RULE_TESTS = RULES_DIR / "posegen.rules.test.yml"
RUNBOOK = "https://github.com/posegen/posegen-operator/blob/main/docs/RUNBOOK.md"
ALERTS = {
    "PoseGenStalledGenerationsHigh",
    "PoseGenProcessingTooLong",
    "PoseGenRecoveryRateLow",
    "PoseGenQueueBacklogHigh",
    "PoseGenOperatorDown",
    "PoseGenSweepNotRunning",
    "PoseGenNoActiveReplica",
}
RECOVERY_RATE = "posegen:recovery_rate:ratio_rate15m"


def promtool() -> str:
    found = find_promtool()
    if found is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; `make system-deps`)")
    return found


def rules_of(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def plain_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules_of(plain_groups()) if "alert" in rule}


def render_rules_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_rules", RULES_DIR / "render_rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- promtool ----------------------------------------------------------------------------------
def test_promtool_checks_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules_of(plain_groups()))} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True, check=False, cwd=RULES_DIR
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# ---- what the rules are ------------------------------------------------------------------------
def test_the_alerts_and_the_recording_rule_exist() -> None:
    assert set(alerts()) == ALERTS
    records = {rule["record"] for rule in rules_of(plain_groups()) if "record" in rule}
    assert RECOVERY_RATE in records


def test_the_seeds_thresholds() -> None:
    expr = {name: " ".join(rule["expr"].split()) for name, rule in alerts().items()}
    assert expr["PoseGenStalledGenerationsHigh"].endswith("> 10")
    assert "posegen_stalled_generations" in expr["PoseGenStalledGenerationsHigh"]
    assert expr["PoseGenProcessingTooLong"].endswith("> 60 * 60")
    assert "posegen_oldest_processing_age_seconds" in expr["PoseGenProcessingTooLong"]
    assert expr["PoseGenRecoveryRateLow"] == f"{RECOVERY_RATE} < 0.9"
    assert expr["PoseGenQueueBacklogHigh"].endswith("> 100")
    assert "posegen_queued_generations" in expr["PoseGenQueueBacklogHigh"]
    assert 'absent(up{job=~".*posegen.*"})' in expr["PoseGenOperatorDown"]
    assert "posegen_leader == 1" in expr["PoseGenSweepNotRunning"]
    assert "sum by (namespace, job) (posegen_leader) == 0" in expr["PoseGenNoActiveReplica"]


def test_every_alert_is_documented() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "{{ $value" in annotations["description"] or "$labels" in annotations["description"], (
            f"{name}: the description should tell the value"
        )
        assert annotations["runbook_url"] == f"{RUNBOOK}#{name.lower()}", name


def test_rules_name_only_exported_series_or_recorded_ones() -> None:
    known = exported_series_names() | {"up"}
    known |= {rule["record"] for rule in rules_of(plain_groups()) if "record" in rule}
    for rule in rules_of(plain_groups()):
        unknown = series_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)} are not exported"


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS
    tested_exprs = {check["expr"] for case in cases for check in case.get("promql_expr_test", [])}
    assert RECOVERY_RATE in tested_exprs


# ---- one source: the chart's PrometheusRule ----------------------------------------------------
def helm() -> str:
    found = find_helm()
    if found is None:
        pytest.skip("helm is not built yet (`make binaries` puts it in ~/.cache/posegen/bin)")
    return found


def test_plain_file_is_the_chart_rules_rendered_with_defaults() -> None:
    script = render_rules_script()
    groups = script.render_groups(helm())
    assert groups == plain_groups(), "run deploy/prometheus/render_rules.py"
    assert RULES.read_text() == script.plain_text(groups), "run deploy/prometheus/render_rules.py"


def test_chart_thresholds_runbook_and_labels_come_from_values(tmp_path: Path) -> None:
    rule = render_rules_script().render_prometheus_rule(
        helm(),
        "--set",
        "monitoring.prometheusRule.thresholds.stalledGenerations=3,"
        "monitoring.prometheusRule.thresholds.processingMinutes=30,"
        "monitoring.prometheusRule.thresholds.queueBacklog=7,"
        "monitoring.prometheusRule.runbookBaseUrl=https://wiki.example.test/posegen,"
        "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
        "--set-json",  # --set would make 0.95 a string
        "monitoring.prometheusRule.thresholds.recoveryRate=0.95",
        "--set",
        "operator.sweepIntervalSeconds=600",
    )
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "posegen-operator"
    by_name = {r["alert"]: r for r in rules_of(rule["spec"]["groups"]) if "alert" in r}
    expr = {name: " ".join(r["expr"].split()) for name, r in by_name.items()}
    assert expr["PoseGenStalledGenerationsHigh"].endswith("> 3")
    assert expr["PoseGenProcessingTooLong"].endswith("> 30 * 60")
    assert expr["PoseGenRecoveryRateLow"].endswith("< 0.95")
    assert expr["PoseGenQueueBacklogHigh"].endswith("> 7")
    assert expr["PoseGenSweepNotRunning"].endswith("> 1800"), "3 sweep intervals when that exceeds 15 minutes"
    assert by_name["PoseGenRecoveryRateLow"]["annotations"]["summary"] == "PoseGen recovery rate is below 95%"
    for name, r in by_name.items():
        assert r["annotations"]["runbook_url"] == f"https://wiki.example.test/posegen#{name.lower()}"
    # Still rules promtool accepts.
    path = tmp_path / "custom.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_chart_renders_monitoring_objects_only_when_enabled() -> None:
    kinds = {doc["kind"] for doc in render_chart()}
    assert not kinds & {"PrometheusRule", "ServiceMonitor"}
    docs = render_chart("monitoring.prometheusRule.enabled=true", "monitoring.serviceMonitor.enabled=true")
    assert {"PrometheusRule", "ServiceMonitor"} <= {doc["kind"] for doc in docs}


def test_service_monitor_scrapes_the_services_metrics_port() -> None:
    docs = render_chart(
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.serviceMonitor.interval=15s",
        "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
    )
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["namespace"] == "posegen"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["posegen"]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        d for d in docs if d["kind"] == "Service" and selector.items() <= (d["metadata"].get("labels") or {}).items()
    ]
    assert len(selected) == 1, "the ServiceMonitor must select exactly the chart's Service"
    assert "metrics" in {port["name"] for port in selected[0]["spec"]["ports"]}
