"""The Grafana dashboard shipped in the chart: valid JSON, a Prometheus datasource variable, every
panel expression valid PromQL (parsed by promtool) over series the operator really exports.

The expressions are also evaluated against a real Prometheus scraping the operator in
tests/integration/test_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from posegen_operator.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "posegen-operator"
DASHBOARD = CHART / "dashboards" / "posegen-operator.json"

# Grafana's variables, as a query against Prometheus sees them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "${job}": ".*",
    "$job": ".*",
}
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
)
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def find_promtool() -> str | None:
    return shutil.which("promtool") or next((p for p in ["/usr/bin/promtool"] if Path(p).exists()), None)


def exported_series_names() -> set[str]:
    """Every series name the operator's Metrics can expose (counters as _total, histograms' parts)."""
    metrics = Metrics(CollectorRegistry())
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def substitute_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects (its identifiers that are not functions or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LISTS.sub(" ", text)  # by (...), on (...): gone, so "sum by (le) (" reads "sum  ("
    text = re.sub(r"\boffset\s+\S+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    return names


def check_promql(exprs: dict[str, str], tmp_path: Path) -> None:
    """Parse expressions with promtool: each becomes a recording rule of a throwaway rules file."""
    promtool = find_promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; `make system-deps`)")
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        # Name the culprits: check them one by one.
        bad = []
        for what, expr in exprs.items():
            path.write_text(yaml.safe_dump({"groups": [{"name": "c", "rules": [{"record": "c:x", "expr": expr}]}]}))
            one = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
            if one.returncode != 0:
                bad.append(f"{what}: {expr}\n{one.stdout}{one.stderr}")
        pytest.fail("invalid PromQL:\n" + "\n".join(bad or [out.stdout + out.stderr]))


# ---- reading the dashboard -----------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's panels


def panel_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """'<panel title> [<refId>]' -> the expression as Prometheus receives it."""
    queries = {}
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            queries[f"{panel['title']} [{target['refId']}]"] = substitute_variables(target["expr"])
    return queries


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Query variables' label_values(<metric>, <label>) as the series selector they read."""
    queries = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        queries[f"variable {variable['name']}"] = substitute_variables(match.group(1))
    return queries


# ---- the tests ---------------------------------------------------------------------------------
def test_dashboard_is_valid_json_with_a_stable_uid() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "posegen-operator"
    assert dashboard["title"] == "PoseGen Operator"
    assert dashboard.get("id") is None, "an exported id would clash in another Grafana"
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_has_a_prometheus_datasource_variable_used_by_every_panel() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert variables["job"]["datasource"]["uid"] == "${datasource}"


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    dashboard = load_dashboard()
    check_promql({**panel_queries(dashboard), **variable_queries(dashboard)}, tmp_path)


def test_every_expression_names_only_metrics_the_operator_exports() -> None:
    exported = exported_series_names()
    dashboard = load_dashboard()
    for what, expr in {**panel_queries(dashboard), **variable_queries(dashboard)}.items():
        names = series_names(expr)
        assert names, f"{what}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{what}: {sorted(unknown)} not exported by posegen_operator.metrics"


def test_series_names_parser() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{job=~"x|y", le!="+Inf"}[5m] offset 1h)))'
        " / on (job) group_left (version) max without (instance) (b:rule) and c > bool 2 * time()"
    )
    assert series_names(expr) == {"a_bucket", "b:rule", "c"}


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("stalled", r"\bposegen_stalled_generations\b"),
        ("queued", r"\bposegen_queued_generations\b"),
        ("processing", r"\bposegen_processing_generations\b"),
        ("oldest processing age", r"\bposegen_oldest_processing_age_seconds\b"),
        ("recovery rate", r'posegen_recoveries_total\{[^}]*result="recovered"'),
        ("recovery latency p50", r"histogram_quantile\(0\.5, .*posegen_recovery_latency_seconds_bucket"),
        ("recovery latency p90", r"histogram_quantile\(0\.9, .*posegen_recovery_latency_seconds_bucket"),
        ("recovery latency p99", r"histogram_quantile\(0\.99, .*posegen_recovery_latency_seconds_bucket"),
        ("recoveries by reason", r"by \(reason\b.*posegen_recoveries_total"),
        ("throughput", r"rate\(posegen_poses_recorded_total"),
        ("generations by phase", r"by \(phase\) \(posegen_generations\b"),
        ("sweep duration", r"posegen_reconcile_pass_duration_seconds_bucket"),
        ("last sweep age", r"time\(\) - max\(posegen_last_sweep_timestamp_seconds"),
        ("admin requests by code", r"by \(code\) \(rate\(posegen_admin_requests_total"),
    ],
)
def test_dashboard_shows(what: str, pattern: str) -> None:
    exprs = panel_queries(load_dashboard()).values()
    assert any(re.search(pattern, expr, re.DOTALL) for expr in exprs), f"no panel for {what} ({pattern})"


# ---- the chart's ConfigMap ---------------------------------------------------------------------
def find_helm() -> str | None:
    found = shutil.which("helm")
    if found:
        return found
    cached = sorted((Path.home() / ".cache" / "posegen" / "bin").glob("*/helm"), reverse=True)
    return str(cached[0]) if cached else None


def render_chart(*values: str) -> list[dict[str, Any]]:
    helm = find_helm()
    if helm is None:
        pytest.skip("helm is not built yet (`make binaries` puts it in ~/.cache/posegen/bin)")
    args = [helm, "template", "posegen", str(CHART), "--namespace", "posegen", "--kube-version", "1.37.2"]
    args += ["--set", "database.url=postgresql://u@db/posegen,redis.url=redis://redis:6379/0"]
    for pair in values:
        args += ["--set", pair]
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_chart_ships_the_dashboard_only_when_enabled() -> None:
    assert not [d for d in render_chart() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    docs = render_chart("monitoring.dashboard.enabled=true")
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "posegen"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == "posegen"
    assert json.loads(configmap["data"]["posegen-operator.json"]) == load_dashboard()


def test_dashboard_configmap_labels_come_from_values() -> None:
    docs = render_chart("monitoring.dashboard.enabled=true", "monitoring.dashboard.labels.grafana_folder=posegen")
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_folder"] == "posegen"
