"""Packaging, proven against the real local API server: the Helm chart lints clean and every CI
values file renders to objects the API server accepts; bad values are refused by the schema; a
`helm install` runs the operator as a pod under its own least-privilege ServiceAccount (the node
runner hands it a token of that account), which completes a generation and recovers a `kill -9`ed
worker; `helm uninstall` leaves nothing behind but the CRD; `kubectl auth can-i` shows what the
account may and may not do; the kustomize manifests render and pass a server-side dry run."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from posegen_devstack.processes import free_port, wait_for
from posegen_operator.settings import Settings
from tests.harness import Cluster, unique_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "posegen-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
GROUP, PLURAL = "posegen.io", "posegenerations"
INSTANCE_LABEL = "app.kubernetes.io/instance"
SETTINGS_SOURCE = ROOT / "operator" / "posegen_operator" / "settings.py"


# ---- helpers ------------------------------------------------------------------------------------
def helm(cluster: Cluster, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["helm", *args], capture_output=True, text=True, env=cluster.env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}{result.stdout}")
    return result


def server_version(cluster: Cluster) -> str:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    return str(version["serverVersion"]["gitVersion"]).lstrip("v")


def render(cluster: Cluster, release: str, namespace: str, *args: str) -> str:
    return helm(
        cluster, "template", release, str(CHART), "-n", namespace, "--kube-version", server_version(cluster), *args
    ).stdout


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def containers_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    pod_spec = (spec.get("template") or {}).get("spec") if doc["kind"] in ("Deployment", "Job") else None
    if doc["kind"] == "Pod":
        pod_spec = spec
    return list((pod_spec or {}).get("containers") or [])


def assert_every_container_has_a_command(docs: list[dict[str, Any]]) -> None:
    """The node runner has no images (and neither should anyone depend on an image's entrypoint)."""
    for doc in docs:
        for container in containers_of(doc):
            assert container.get("command"), (
                f"{doc['kind']}/{doc['metadata']['name']}: {container['name']} has no command"
            )


def assert_pods_meet_the_restricted_pod_security_standard(
    cluster: Cluster, docs: list[dict[str, Any]], namespace: str
) -> None:
    """Each workload's pod, as it would be created in a namespace enforcing Pod Security "restricted"
    (the admission plugin judges dry-run creations too)."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = copy.deepcopy(doc["spec"]["template"]["spec"])
        spec.pop("serviceAccountName", None)  # not created by a dry run; irrelevant to the standard
        name = f"pss-{doc['metadata']['name']}"[:63].rstrip("-")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
        assert result.returncode == 0, f"{doc['kind']}/{doc['metadata']['name']}: {result.stderr}"


def operator_setting_names() -> set[str]:
    """Every environment variable the operator reads (settings.py is the list)."""
    return set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE.read_text()))


def operator_environment(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The operator container's environment as the kubelet would resolve it (Secret values stubbed)."""
    deployment = next(d for d in docs if d["kind"] == "Deployment" and "posegen-operator" in d["metadata"]["name"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        config = find(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    for var in container.get("env") or []:
        if var["name"].endswith("_FILE") and os.path.dirname(var["value"]) in mounts:
            # A credential as a file of the mounted Secret: the setting it stands for is set.
            env[var["name"].removesuffix("_FILE")] = f"secret-{os.path.basename(var['value'])}"
        elif "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = f"secret-{var['valueFrom']['secretKeyRef']['key']}"
        else:
            env[var["name"]] = f"field-{var['valueFrom']['fieldRef']['fieldPath']}"
    return env


def secret_volume(doc: dict[str, Any]) -> dict[str, Any]:
    volumes = doc["spec"]["template"]["spec"]["volumes"]
    return dict(next(v["secret"] for v in volumes if v["name"] == "credentials"))


def ensure_namespace(cluster: Cluster, name: str) -> bool:
    """Create a namespace unless it exists; True when this call made it."""
    if cluster.kubectl("get", "namespace", name, check=False).returncode == 0:
        return False
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"the default service account of {name}",
    )
    return True


def stub_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A schemaless stand-in for a CRD the local stack does not have (the Prometheus Operator's), so
    that the monitoring objects go through the same server-side dry run as the rest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def generation(name: str, poses: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "PoseGeneration",
        "metadata": {"name": name},
        "spec": {
            "projectId": "chart-test",
            "generationType": "TEXT_DESCRIPTION",
            "textPrompt": "a dancer running and waving at the camera",
            "variationCount": poses,
        },
    }


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.custom.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, name)
    return dict(body.get("status") or {})


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as response:
        return int(response.status)


def can_i(cluster: Cluster, account: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", f"--as={account}", *args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {result.stderr}{result.stdout}"
    return answer == "yes"


def print_release_logs(cluster: Cluster, namespace: str) -> None:
    for args in (["get", "all,jobs,secrets,leases,roles,rolebindings", "-o", "wide"], ["get", "events"]):
        result = cluster.kubectl("-n", namespace, *args, check=False)
        print(f"$ kubectl -n {namespace} {' '.join(args)}\n{result.stdout}{result.stderr}")
    for log in sorted((cluster.stack.state_dir / "node" / namespace).glob("*.log")):
        print(f"----- {log.name} (last 80 lines) -----")
        print("\n".join(log.read_text(errors="replace").splitlines()[-80:]))


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run_prerequisites(cluster: Cluster) -> Iterator[None]:
    """What the CI values files expect to exist: the namespaced file's watched namespaces, the
    monitoring file's CRDs (stand-ins), the kustomize manifests' namespace."""
    created_namespaces = [
        name for name in ("posegen-team-a", "posegen-team-b", "posegen") if ensure_namespace(cluster, name)
    ]
    created_crds = []
    for group, kind, plural in (
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ):
        name = f"{plural}.{group}"
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            cluster.kubectl("apply", "-f", "-", stdin=json.dumps(stub_crd(group, kind, plural)))
            created_crds.append(name)
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    yield
    for name in created_crds:
        cluster.kubectl("delete", "crd", name, "--wait=false", check=False)
    for name in created_namespaces:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---- 1. lint and server-side dry run of every CI values file ------------------------------------
def test_there_are_ci_values_files_for_each_scenario() -> None:
    names = {path.stem for path in CI_VALUES}
    assert {
        "default-values",
        "namespaced-values",
        "ha-values",
        "flux-existing-secret-values",
        "monitoring-values",
    } <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.stem)
def test_helm_lint_is_clean(cluster: Cluster, values: Path) -> None:
    result = helm(cluster, "lint", str(CHART), "--strict", "-f", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.stem)
def test_rendered_chart_passes_a_server_side_dry_run(
    cluster: Cluster, namespace: str, dry_run_prerequisites: None, values: Path
) -> None:
    manifest = render(cluster, "ci", namespace, "-f", str(values), "--include-crds")
    docs = documents(manifest)
    kinds = {doc["kind"] for doc in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service", "ConfigMap", "Job"} <= kinds
    if values.stem == "monitoring-values":
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    assert_every_container_has_a_command(docs)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.count("(server dry run)") == len(docs)
    assert_pods_meet_the_restricted_pod_security_standard(cluster, docs, namespace)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.stem)
def test_every_operator_setting_is_exposed_and_accepted_by_the_operator(cluster: Cluster, values: Path) -> None:
    docs = documents(
        render(
            cluster,
            "ci",
            "posegen",
            "-f",
            str(values),
            "--set-json",
            "operator.heartbeatIntervalSeconds=2",
            "--set-json",
            "worker.dependencyRetrySeconds=60",  # null by default: the operator's own default applies
        )
    )
    env = operator_environment(docs)
    # POSEGEN_IDENTITY defaults to POD_NAME, which the downward API provides.
    missing = operator_setting_names() - set(env) - {"POSEGEN_IDENTITY"}
    assert not missing, f"settings the chart does not set: {sorted(missing)}"
    settings = Settings.from_env(env)  # the operator's own parser: types, bounds, choices
    assert settings.lease_namespace == "posegen"
    assert settings.heartbeat_interval == 2
    assert settings.migrate_on_start is False  # the migration hook Job does it


def test_namespaced_values_grant_nothing_cluster_wide_but_discovery(cluster: Cluster, namespace: str) -> None:
    docs = documents(render(cluster, "ci", namespace, "-f", str(CHART / "ci" / "namespaced-values.yaml")))
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"}
    assert {("posegen-team-a", "ci-posegen-operator"), ("posegen-team-b", "ci-posegen-operator")} <= roles
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(cluster_roles) == 1 and cluster_roles[0]["metadata"]["name"].endswith("-discovery")
    assert all(rule["verbs"] == ["list", "watch"] for rule in cluster_roles[0]["rules"])
    config = find(docs, "ConfigMap", "ci-posegen-operator")
    assert config["data"]["POSEGEN_NAMESPACES"] == "posegen-team-a,posegen-team-b"


def test_ha_values_run_two_replicas_with_a_disruption_budget(cluster: Cluster, namespace: str) -> None:
    docs = documents(render(cluster, "ci", namespace, "-f", str(CHART / "ci" / "ha-values.yaml")))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "posegen_operator"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    config = find(docs, "ConfigMap", "ci-posegen-operator")
    assert config["data"]["POSEGEN_LEASE_NAME"] == "posegen-ha"
    assert config["data"]["POSEGEN_MIGRATE_ON_START"] == "false"


def test_existing_secret_values_make_no_credentials_secret(cluster: Cluster, namespace: str) -> None:
    docs = documents(render(cluster, "ci", namespace, "-f", str(CHART / "ci" / "flux-existing-secret-values.yaml")))
    assert not [d for d in docs if d["kind"] == "Secret"], "with existingSecret the chart holds no credentials"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert secret_volume(deployment) == {"secretName": "posegen-credentials", "defaultMode": 0o440}
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL_FILE"]["value"] == "/etc/posegen/credentials/database-url"
    assert env["FLUX_API_KEY_FILE"]["value"] == "/etc/posegen/credentials/flux-api-key"  # absent: no key
    job = next(d for d in docs if d["kind"] == "Job")
    assert secret_volume(job)["secretName"] == "posegen-credentials"
    assert secret_volume(job)["items"] == [{"key": "database-url", "path": "database-url"}]
    config = find(docs, "ConfigMap", "ci-posegen-operator")["data"]
    assert config["POSEGEN_GENERATOR"] == "flux"
    assert config["FLUX_API_URL"] == "https://flux.example.com/v1"
    assert config["POSEGEN_WORKER_SECRET"] == "posegen-worker-credentials"
    assert config["POSEGEN_WORKER_IMAGE"].endswith("@sha256:" + "0123456789abcdef" * 4)


# ---- platform checkers: checkov finds nothing but the documented exceptions ----------------------
def checkov_failures(manifest: str, directory: Path) -> set[str]:
    """The ids of the checks checkov fails on the rendered manifest."""
    (directory / "chart.yaml").write_text(manifest)
    checkov = Path(sys.executable).with_name("checkov")
    result = subprocess.run(
        [str(checkov), "-d", str(directory), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: some check failed
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(report["summary"]["parsing_errors"] == 0 for report in reports)
    assert sum(report["summary"]["resource_count"] for report in reports) > 0
    return {check["check_id"] for report in reports for check in report["results"]["failed_checks"]}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.stem)
def test_checkov_finds_only_the_documented_exceptions(cluster: Cluster, values: Path, tmp_path: Path) -> None:
    accepted = yaml.safe_load((CHART / "values.yaml").read_text())["checkov"]["acceptedFindings"]
    reasons = {finding["id"]: finding["reason"] for finding in accepted}
    assert all(len(reason) > 40 for reason in reasons.values()), "each exception says why"
    failures = checkov_failures(render(cluster, "ci", "posegen", "-f", str(values)), tmp_path)
    assert failures - set(reasons) == set(), "fix these, or document them in values.yaml checkov.acceptedFindings"
    if values.stem == "default-values":
        assert set(reasons) - failures == set(), "exceptions that no longer occur: remove them from values.yaml"


def test_network_policies_open_only_the_admin_api_metrics_and_the_workers_dependencies(
    cluster: Cluster, namespace: str
) -> None:
    docs = documents(render(cluster, "ci", namespace, "-f", str(CHART / "ci" / "flux-existing-secret-values.yaml")))
    policies = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in docs if d["kind"] == "NetworkPolicy"
    }
    operator = policies[(namespace, "ci-posegen-operator")]
    assert operator["policyTypes"] == ["Ingress"]
    assert [rule["ports"] for rule in operator["ingress"]] == [
        [{"port": "api", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    assert policies[(namespace, "ci-posegen-operator-migrate")] == {
        "podSelector": {
            "matchLabels": {
                **find(docs, "Job", "ci-posegen-operator-migrate")["spec"]["template"]["metadata"]["labels"]
            }
        },
        "policyTypes": ["Ingress"],
    }
    workers = [spec for (_, name), spec in policies.items() if name == "ci-posegen-operator-worker"]
    assert workers, "a worker policy in every namespace workers run in"
    for worker in workers:
        assert worker["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in worker
        assert worker["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "posegen-worker",
            "app.kubernetes.io/component": "worker",
        }
        ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in worker["egress"]]
        assert ports == [[(53, "TCP"), (53, "UDP")], [(5432, "TCP")], [(6379, "TCP")], [(443, "TCP")]]
        assert worker["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"
        }
    embedded = documents(render(cluster, "ci", namespace, "-f", str(CHART / "ci" / "default-values.yaml")))
    worker = next(d for d in embedded if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-worker"))
    assert len(worker["spec"]["egress"]) == 3, "no FLUX egress without the FLUX generator"


def test_tls_sslmode_and_no_credential_hash_in_the_pod(cluster: Cluster, namespace: str) -> None:
    docs = documents(
        render(
            cluster,
            "ci",
            namespace,
            "-f",
            str(CHART / "ci" / "default-values.yaml"),
            "--set",
            "operator.tls.secretName=posegen-api-tls",
            "--set",
            "database.sslMode=verify-full",
        )
    )
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    assert list(pod["metadata"]["annotations"]) == ["checksum/config"], "no hash of the credentials"
    tls = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "posegen-api-tls"
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "mountPath": "/etc/posegen/tls", "readOnly": True} in container["volumeMounts"]
    env = operator_environment(docs)
    settings = Settings.from_env(env)
    assert (settings.api_tls_cert_file, settings.api_tls_key_file) == (
        "/etc/posegen/tls/tls.crt",
        "/etc/posegen/tls/tls.key",
    )
    assert env["PGSSLMODE"] == "verify-full"
    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PGSSLMODE", "value": "verify-full"} in job["env"]


# ---- tenants' ceilings, enforced by the API server -----------------------------------------------
@pytest.fixture
def admission_policy(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart's ValidatingAdmissionPolicy, its binding (limited to this test's namespace, so no
    other test meets it) and parameter ConfigMap, installed; yields the ConfigMap's name."""
    manifest = render(
        cluster,
        "ci",
        namespace,
        "-f",
        str(CHART / "ci" / "default-values.yaml"),
        "--set-json",
        f'watchNamespaces=["{namespace}"]',
        "--show-only",
        "templates/admission-policy.yaml",
    )
    cluster.kubectl("apply", "-f", "-", stdin=manifest)
    yield next(d["metadata"]["name"] for d in documents(manifest) if d["kind"] == "ConfigMap")
    cluster.kubectl("delete", "-f", "-", "--wait=false", stdin=manifest, check=False)


def apply_generation(cluster: Cluster, namespace: str, name: str, **spec: object) -> subprocess.CompletedProcess[str]:
    body: dict[str, object] = {
        "projectId": "p",
        "generationType": "TEXT_DESCRIPTION",
        "textPrompt": "x",
        "suspend": True,
        **spec,
    }
    manifest = {"apiVersion": f"{GROUP}/v1", "kind": "PoseGeneration", "metadata": {"name": name}, "spec": body}
    return cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest), check=False)


CEILINGS: list[tuple[dict[str, object], str]] = [
    ({"priority": 11}, "spec.priority 11 is above the ceiling of 10 set by the cluster admin"),
    ({"recovery": {"deadlineSeconds": 86401}}, "spec.recovery.deadlineSeconds 86401 is above the ceiling of 86400"),
    ({"recovery": {"maxRecoveries": 11}}, "spec.recovery.maxRecoveries 11 is above the ceiling of 10"),
    (
        {"recovery": {"stallTimeoutSeconds": 3601}},
        "spec.recovery.stallTimeoutSeconds 3601 is above the ceiling of 3600",
    ),
]


def test_the_admission_policy_holds_tenants_to_the_admins_ceilings(
    cluster: Cluster, namespace: str, admission_policy: str
) -> None:
    # The API server takes a moment to load a new policy: wait until the first refusal (fresh names:
    # re-applying an admitted object unchanged is no spec write, which the policy lets through).
    wait_for(
        lambda: apply_generation(cluster, namespace, unique_name("probe"), priority=100).returncode != 0,
        timeout=30,
        interval=0.5,
        what="the policy to take effect",
    )
    for spec, message in CEILINGS:
        result = apply_generation(cluster, namespace, "over", **spec)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    at_the_ceilings = {"deadlineSeconds": 86400, "maxRecoveries": 10, "stallTimeoutSeconds": 3600}
    assert apply_generation(cluster, namespace, "within", priority=10, recovery=at_the_ceilings).returncode == 0

    # The admin lowers a ceiling by editing the parameter: it applies to new specs at once, while
    # an object admitted before still takes metadata changes (the operator's finalizers, labels).
    cluster.kubectl("-n", namespace, "patch", "configmap", admission_policy, "-p", '{"data": {"priority": "5"}}')
    wait_for(
        lambda: apply_generation(cluster, namespace, unique_name("lowered"), priority=6).returncode != 0,
        timeout=30,
        interval=0.5,
        what="the lowered ceiling",
    )
    cluster.kubectl("-n", namespace, "label", "posegeneration", "within", "team=a")
    refused = apply_generation(cluster, namespace, "within", priority=9, recovery=at_the_ceilings)
    assert "spec.priority 9 is above the ceiling of 5" in refused.stderr


def test_without_its_parameter_the_policy_refuses(cluster: Cluster, namespace: str, admission_policy: str) -> None:
    cluster.kubectl("-n", namespace, "delete", "configmap", admission_policy)
    wait_for(
        lambda: apply_generation(cluster, namespace, unique_name("unparameterised")).returncode != 0,
        timeout=30,
        interval=0.5,
        what="a refusal without the parameter",
    )


# ---- 2. the schema refuses bad values -----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set-json", 'replicaCount="two"'], "/replicaCount"),
        (["--set", "operator.maxConcurrent=-1"], "/operator/maxConcurrent"),
        (["--set", "worker.generator=dalle"], "/worker/generator"),
        (["--set", "operator.logFormat=xml"], "/operator/logFormat"),
        (["--set", "operator.ports.api=70000"], "/operator/ports/api"),
        (["--set-json", "operator.sweepIntervalSeconds=0.1"], "/operator/sweepIntervalSeconds"),
        (["--set", "worker.graceSeconds=0"], "/worker/graceSeconds"),
        (["--set", "replicacount=3"], "replicacount"),
        (["--set", "database.url=mysql://db/posegen"], "/database/url"),
        (["--set", "admin.token=short"], "/admin/token"),
        (["--set", "worker.generator=flux"], "apiUrl"),
        (["--set", "worker.output.hostPath=/srv/out", "--set", "worker.output.claimName=outputs"], "/worker/output"),
        (["--set", "monitoring.prometheusRule.thresholds.recoveryRate=2"], "recoveryRate"),
        (["--set", "database.url="], "database.url is required"),
        (["--set-json", "operator.heartbeatIntervalSeconds=10"], "at most half"),
        (["--set", "database.sslMode=sometimes"], "/database/sslMode"),
        (["--set", "operator.tls.secretName=Not_A_Name"], "/operator/tls/secretName"),
        (["--set-json", 'networkPolicy.workerEgress.postgres={"ports": [], "to": []}'], "/networkPolicy"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_bad_values_are_refused(cluster: Cluster, args: list[str], message: str) -> None:
    defaults = str(CHART / "ci" / "default-values.yaml")
    result = helm(
        cluster, "template", "bad", str(CHART), "--kube-version", "1.37.0", "-f", defaults, *args, check=False
    )
    assert result.returncode != 0, f"accepted: {' '.join(args)}"
    assert message in result.stderr, result.stderr


# ---- 3. helm install runs the operator under its own account; helm uninstall cleans up ---------
def test_helm_install_runs_the_operator_which_completes_and_recovers_generations(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    release, release_ns = "pg", unique_name("rel")
    outputs = cluster.stack.state_dir / "chart-outputs"
    outputs.mkdir(exist_ok=True)
    ports = {"api": free_port(), "metrics": free_port(), "probe": free_port()}
    values = {
        "replicaCount": 1,  # every pod here shares one host's ports; HA is proven by the rendering tests
        "watchNamespaces": [namespace],
        "database": {"url": cluster.stack.database_url},
        "redis": {"url": cluster.stack.redis_url},
        "secretsAsFiles": False,  # the local node runner mounts no volumes: credentials as secretKeyRef
        "operator": {
            "apiHost": "127.0.0.1",
            "ports": ports,
            "sweepIntervalSeconds": 1,
            "statusIntervalSeconds": 0.5,
            "recoveryBackoffSeconds": 0.2,
        },
        "worker": {
            "poseSeconds": 0.05,
            "graceSeconds": 2,
            "output": {"hostPath": str(outputs), "mountPath": str(outputs)},
        },
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    ensure_namespace(cluster, release_ns)
    # The operator and migration pods must pass Pod Security "restricted" for real.
    cluster.kubectl("label", "namespace", release_ns, "pod-security.kubernetes.io/enforce=restricted")
    cluster.stack.stop_operator()  # one operator at a time: the stack's own would act too
    installed = False
    try:
        helm(
            cluster,
            "install",
            release,
            str(CHART),
            "-n",
            release_ns,
            "-f",
            str(values_file),
            "--wait",
            "--timeout=180s",
        )
        installed = True
        api = f"http://127.0.0.1:{ports['api']}"
        wait_for(lambda: http_status(f"{api}/readyz") == 200, timeout=90, interval=0.5, what="the operator ready")
        pods = cluster.core.list_namespaced_pod(release_ns, label_selector="app.kubernetes.io/component=operator")
        assert [pod.spec.service_account_name for pod in pods.items] == [f"{release}-posegen-operator"]

        # A small generation runs to completion ...
        cluster.custom.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, generation("small", 5))
        done = wait_for(
            lambda: (s := status_of(cluster, namespace, "small")).get("phase") == "Completed" and s,
            timeout=120,
            interval=0.5,
            what="the small generation to complete",
        )
        assert done["posesCompleted"] == 5

        # ... and a worker killed with SIGKILL mid-way is recovered from its checkpoint.
        cluster.custom.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, generation("crash", 60))
        worker = wait_for(
            lambda: status_of(cluster, namespace, "crash").get("workerPod"), timeout=60, what="the first worker"
        )
        pid = cluster.pod_pid(namespace, worker, timeout=60)
        log = cluster.node_file(namespace, worker, "log")
        wait_for(lambda: "recorded" in log.read_text(errors="replace"), timeout=60, interval=0.02, what="a pose")
        os.kill(pid, signal.SIGKILL)
        recovered = wait_for(
            lambda: (s := status_of(cluster, namespace, "crash")).get("phase") == "Completed" and s,
            timeout=150,
            interval=0.5,
            what="the crashed generation to be recovered and complete",
        )
        assert recovered["recoveries"] >= 1
        assert recovered["posesCompleted"] == recovered["totalExpectedPoses"] == 60
        assert recovered["workerPod"] != worker

        # The seed's admin API answers with the token from the chart's Secret, and only with it.
        secret = cluster.core.read_namespaced_secret(f"{release}-posegen-operator", release_ns)
        token = base64.b64decode(secret.data["admin-token"]).decode()
        request = urllib.request.Request(
            f"{api}/api/apps/pose-generator/recovery/status", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert "stalledGenerations" in json.loads(response.read())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{api}/api/apps/pose-generator/recovery/status", timeout=5)
        assert refused.value.code in (401, 403)

        # Cancel both (the operator removes its finalizers), then uninstall.
        for name in ("small", "crash"):
            cluster.custom.delete_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, name)
        wait_for(
            lambda: not cluster.custom.list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL)["items"],
            timeout=60,
            what="the generations to be deleted",
        )
        helm(cluster, "uninstall", release, "-n", release_ns, "--wait", "--timeout=120s")
        installed = False
        assert_release_gone(cluster, release, release_ns, namespace)
    except BaseException:
        print_release_logs(cluster, release_ns)
        raise
    finally:
        if installed:
            helm(cluster, "uninstall", release, "-n", release_ns, "--wait", "--timeout=120s", check=False)
        cluster.stack.start_operator()
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def assert_release_gone(cluster: Cluster, release: str, release_ns: str, watched: str) -> None:
    selector = f"{INSTANCE_LABEL}={release}"

    def leftovers() -> list[str]:
        found = []
        for ns in (release_ns, watched):
            result = cluster.kubectl(
                "-n", ns, "get", "pods,deployments,jobs,services,configmaps,secrets,serviceaccounts,"
                "roles,rolebindings,leases,poddisruptionbudgets", "-l", selector, "-o", "name",
            )  # fmt: skip
            found += result.stdout.split()
            found += [f"{ns}/pod/{p.metadata.name}" for p in cluster.core.list_namespaced_pod(ns).items]
        result = cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l", selector, "-o", "name")
        found += [name for name in result.stdout.split() if release_ns in name]
        return found

    wait_for(lambda: not leftovers(), timeout=90, interval=0.5, what="everything the release made to go")
    secrets = {s.metadata.name for s in cluster.core.list_namespaced_secret(release_ns).items}
    assert not secrets, f"secrets left behind: {secrets}"
    # Helm's crds/ convention: CRDs are installed, never deleted (that would delete every generation).
    cluster.kubectl("get", "crd", f"{PLURAL}.{GROUP}")


# ---- 4. what the operator's ServiceAccount may and may not do -----------------------------------
@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_service_account_has_least_privilege(cluster: Cluster, namespace: str, mode: str) -> None:
    release = unique_name("rb")
    watched = unique_name("watched")
    ensure_namespace(cluster, watched)
    args = ["--set", "database.url=postgresql://db/posegen", "--set", "redis.url=redis://redis/0"]
    if mode == "namespaced":
        args += ["--set", f"watchNamespaces={{{watched}}}"]
    manifest = render(
        cluster, release, namespace, *args,
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
    )  # fmt: skip
    account = f"system:serviceaccount:{namespace}:{release}-posegen-operator"
    lease = f"{release}-posegen-operator"
    cluster.kubectl("apply", "-f", "-", stdin=manifest)
    try:
        allowed = [
            ("create", "pods", "-n", watched),
            ("delete", "pods", "-n", watched),
            ("watch", "pods", "-n", watched),
            ("watch", f"{PLURAL}.{GROUP}", "-n", watched),
            ("create", f"{PLURAL}.{GROUP}", "-n", watched),
            ("patch", f"{PLURAL}.{GROUP}", "-n", watched),
            ("patch", f"{PLURAL}.{GROUP}", "--subresource=status", "-n", watched),
            ("create", "events", "-n", watched),
            ("create", "leases.coordination.k8s.io", "-n", namespace),
            ("update", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("list", "namespaces"),
        ]
        refused = [
            ("get", "secrets", "-n", watched),
            ("list", "secrets", "-n", watched),
            ("get", "secrets", "-n", namespace),
            ("list", "secrets", "--all-namespaces"),
            ("delete", "namespaces"),
            ("create", "deployments.apps", "-n", watched),
            ("patch", "deployments.apps", "-n", namespace),
            ("delete", f"{PLURAL}.{GROUP}", "-n", watched),
            ("update", f"{PLURAL}.{GROUP}", "-n", watched),
            ("update", "leases.coordination.k8s.io/someone-else", "-n", namespace),
            ("create", "leases.coordination.k8s.io", "-n", watched),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("create", "pods", "--subresource=exec", "-n", watched),
            ("patch", "pods", "-n", watched),
        ]
        if mode == "namespaced":
            refused += [
                ("create", "pods", "-n", namespace),  # its own namespace is not watched
                ("create", "pods", "-n", "default"),
                ("list", f"{PLURAL}.{GROUP}", "--all-namespaces"),
                ("patch", f"{PLURAL}.{GROUP}", "--subresource=status", "-n", "default"),
            ]
        else:
            allowed += [("create", "pods", "-n", "default"), ("list", f"{PLURAL}.{GROUP}", "--all-namespaces")]
        wrong = [" ".join(check) for check in allowed if not can_i(cluster, account, *check)]
        wrong += [f"NOT {' '.join(check)}" for check in refused if can_i(cluster, account, *check)]
        assert not wrong, f"{mode}: unexpected answers for {wrong}"
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found", stdin=manifest, check=False)
        cluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


# ---- 5. the kustomize manifests -----------------------------------------------------------------
@pytest.mark.parametrize("target", ["deploy/base", "deploy/overlays/dev"])
def test_kustomize_manifests_pass_a_server_side_dry_run(
    cluster: Cluster, namespace: str, dry_run_prerequisites: None, target: str
) -> None:
    manifest = cluster.kubectl("kustomize", str(ROOT / target)).stdout
    docs = documents(manifest)
    kinds = {doc["kind"] for doc in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "Role", "Service"} <= kinds
    assert_every_container_has_a_command(docs)
    assert not [
        rule
        for doc in docs
        if doc["kind"] in ("Role", "ClusterRole")
        for rule in doc["rules"]
        if "secrets" in rule.get("resources", [])
    ], "the operator reads no Secrets"
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.count("(server dry run)") == len(docs)
    assert_pods_meet_the_restricted_pod_security_standard(cluster, docs, namespace)
    env = operator_environment(docs)
    missing = operator_setting_names() - set(env) - {"POSEGEN_IDENTITY", "POSEGEN_HEARTBEAT_INTERVAL_SECONDS"}
    assert not missing, f"settings the manifests do not set: {sorted(missing)}"
    assert Settings.from_env(env).lease_namespace == "posegen"
    if target.endswith("dev"):
        assert {"posegen-postgres", "posegen-redis"} <= {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
