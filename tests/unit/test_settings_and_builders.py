"""Settings fail fast with the variable named; worker pods are plain dicts, checked as such."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from posegen_common.worker_credentials import WorkerCredentials
from posegen_devstack.pki import ensure_pki
from posegen_operator.api import generate_allowed, ssl_context
from posegen_operator.builders import FINALIZER, build_event, build_worker_pod
from posegen_operator.settings import Settings, SettingsError
from posegen_worker.generators.flux import DestinationPolicy
from posegen_worker.settings import SettingsError as WorkerSettingsError
from posegen_worker.settings import WorkerSettings

BASE_ENV = {"DATABASE_URL": "postgresql://db/posegen", "REDIS_URL": "redis://r/0", "POSEGEN_ADMIN_TOKEN": "t0ken"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE_ENV, **env})


def test_defaults_follow_the_seed_and_the_issue() -> None:
    s = settings()
    assert (s.deadline, s.max_recoveries, s.sweep_interval, s.heartbeat_ttl) == (7200, 5, 10, 15)
    assert s.namespaces == () and s.leader_election and s.worker.generator == "embedded"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL must be set"),
        ({"POSEGEN_MAX_CONCURRENT": "0"}, "POSEGEN_MAX_CONCURRENT must be between 1"),
        ({"POSEGEN_MAX_CONCURRENT": "many"}, "POSEGEN_MAX_CONCURRENT must be a number"),
        ({"POSEGEN_MAX_RECOVERIES": "2.5"}, "must be a whole number"),
        ({"POSEGEN_LEADER_ELECTION": "maybe"}, "POSEGEN_LEADER_ELECTION must be true or false"),
        ({"POSEGEN_GENERATOR": "dalle"}, "POSEGEN_GENERATOR must be one of embedded, flux"),
        ({"POSEGEN_GENERATOR": "flux"}, "FLUX_API_URL must be set"),
        ({"POSEGEN_WORKER_RESOURCES": "[1]"}, "POSEGEN_WORKER_RESOURCES must be a JSON dict"),
        ({"POSEGEN_WORKER_TOLERATIONS": "{oops"}, "POSEGEN_WORKER_TOLERATIONS must be JSON"),
        ({"POSEGEN_WORKER_EXTRA_ENV": "{}"}, "POSEGEN_WORKER_EXTRA_ENV must be a JSON list"),
        ({"POSEGEN_WORKER_HOST_NETWORK": "yes please"}, "POSEGEN_WORKER_HOST_NETWORK must be true or false"),
        ({"POSEGEN_OUTPUT_HOST_PATH": "/a", "POSEGEN_OUTPUT_CLAIM": "b"}, "set only one of"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**env)


def test_credentials_are_read_from_the_files_named_by_the_file_variables(tmp_path: Path) -> None:
    """How the chart passes them: a mounted Secret, nothing in the environment or the pod spec."""
    for key, value in {
        "database-url": "postgresql://f/db\n",
        "redis-url": "redis://f/0",
        "admin-token": "file",
    }.items():
        (tmp_path / key).write_text(value)
    files = {
        "DATABASE_URL_FILE": str(tmp_path / "database-url"),
        "REDIS_URL_FILE": str(tmp_path / "redis-url"),
        "POSEGEN_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
        "FLUX_API_KEY_FILE": str(tmp_path / "flux-api-key"),  # an optional key the Secret lacks
    }
    s = Settings.from_env(files)
    assert (s.database_url, s.redis_url, s.admin_token, s.flux_api_key) == (
        "postgresql://f/db",
        "redis://f/0",
        "file",
        None,
    )
    with pytest.raises(SettingsError, match="REDIS_URL must be set"):
        Settings.from_env({**files, "REDIS_URL_FILE": str(tmp_path / "missing")})


def test_worker_settings_fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**BASE_ENV, "POSEGEN_GENERATION_ID": "g", "POSEGEN_OUTPUT_DIR": "/o"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POSEGEN_ATTEMPT", "two")
    with pytest.raises(WorkerSettingsError, match="POSEGEN_ATTEMPT must be a positive integer"):
        WorkerSettings.from_env()
    monkeypatch.setenv("POSEGEN_ATTEMPT", "2")
    for name, value, message in (
        ("DATABASE_URL", "mysql://u:secret@db/x", "DATABASE_URL must be a postgresql:// URL"),
        ("DATABASE_URL", "not a url at all", "DATABASE_URL must be a postgresql:// URL"),
        ("DATABASE_URL", "host=db password=secret", "DATABASE_URL must be a postgresql:// URL"),
        ("DATABASE_URL", "postgresql://u:secret@db/x?no_such_option=1", "DATABASE_URL must be a postgresql:// URL"),
        ("REDIS_URL", "http://r:6379", "REDIS_URL is not a Redis URL"),
        ("REDIS_URL", "redis://:secret@r:63x9/0", "REDIS_URL is not a Redis URL"),
        ("POSEGEN_GENERATOR", "flux", "FLUX_API_URL and FLUX_API_KEY must be set"),
    ):
        with monkeypatch.context() as bad:
            bad.setenv(name, value)
            bad.setenv("FLUX_API_URL", "http://flux")
            bad.delenv("FLUX_API_KEY", raising=False)
            with pytest.raises(WorkerSettingsError, match=message) as raised:
                WorkerSettings.from_env()
            assert "secret" not in str(raised.value), "a password never reaches a log line"
    monkeypatch.setenv("POSEGEN_HEARTBEAT_TTL_SECONDS", "2")
    monkeypatch.setenv("POSEGEN_HEARTBEAT_INTERVAL_SECONDS", "3")
    with pytest.raises(WorkerSettingsError, match="below the heartbeat TTL"):
        WorkerSettings.from_env()


def test_worker_pod_is_owned_fenced_and_least_privileged() -> None:
    pod = build_worker_pod("ns", "demo", "uid-1", "gen-1", 3, settings(POSEGEN_OUTPUT_CLAIM="outputs"))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "demo-w3" and meta["namespace"] == "ns"
    assert meta["labels"]["posegen.io/attempt"] == "3" and meta["labels"]["posegen.io/generation"] == "demo"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "PoseGeneration",
        "demo",
        "uid-1",
        True,
    )
    assert spec["restartPolicy"] == "Never", "restarts are new attempts, decided by the operator"
    assert spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["POSEGEN_GENERATION_ID"], env["POSEGEN_ATTEMPT"]) == ("gen-1", "3")
    assert env["DATABASE_URL"] == BASE_ENV["DATABASE_URL"], "no worker Secret configured: dev mode values"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert (container["terminationMessagePath"], container["terminationMessagePolicy"]) == (
        "/dev/termination-log",
        "FallbackToLogsOnError",
    ), "the worker's stated cause reaches the pod's status"
    assert spec["volumes"] == [{"name": "outputs", "persistentVolumeClaim": {"claimName": "outputs"}}]


def test_workers_wait_out_an_unreachable_database_for_the_stall_timeout_unless_told_otherwise() -> None:
    def retry(**env: str) -> float:
        pod = build_worker_pod("ns", "demo", "uid-1", "gen-1", 1, settings(**env))
        values = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        return float(values["POSEGEN_DEPENDENCY_RETRY_SECONDS"])

    assert retry() == 600
    assert retry(POSEGEN_STALL_TIMEOUT_SECONDS="120") == 120
    assert retry(POSEGEN_STALL_TIMEOUT_SECONDS="120", POSEGEN_WORKER_DEPENDENCY_RETRY_SECONDS="45") == 45


def test_the_flux_destination_policy_reaches_the_worker_as_the_admin_set_it() -> None:
    def policy(**env: str) -> DestinationPolicy:
        flux = {"POSEGEN_GENERATOR": "flux", "FLUX_API_URL": "https://flux.example", **env}
        pod = build_worker_pod("ns", "demo", "uid-1", "gen-1", 1, settings(**flux))
        return DestinationPolicy.from_env(
            {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
        )

    assert policy() == DestinationPolicy()  # the safe defaults
    relaxed = policy(
        POSEGEN_FLUX_ALLOW_HTTP="true",
        POSEGEN_FLUX_ALLOW_PRIVATE_ADDRESSES="true",
        POSEGEN_FLUX_SAMPLE_HOSTS="cdn.example, images.example",
        POSEGEN_FLUX_MAX_PIXELS="1048576",
    )
    assert relaxed == DestinationPolicy(True, True, frozenset({"cdn.example", "images.example"}), 1048576)


def test_worker_pod_takes_connection_urls_from_a_secret_when_configured() -> None:
    pod = build_worker_pod("ns", "demo", "uid-1", "gen-1", 1, settings(POSEGEN_WORKER_SECRET="posegen-worker"))
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in pod["spec"]["containers"][0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs["DATABASE_URL"] == {"name": "posegen-worker", "key": "database-url", "optional": False}
    assert refs["FLUX_API_KEY"]["optional"] is True
    assert all(e.get("value") != BASE_ENV["DATABASE_URL"] for e in pod["spec"]["containers"][0]["env"])


def test_worker_pod_connects_with_its_minted_credentials_only() -> None:
    minted = WorkerCredentials("postgresql://pgw_1:pw@db/posegen", "redis://pgw_1:pw@r/0")
    pod = build_worker_pod(
        "ns", "demo", "uid-1", "gen-1", 1, settings(POSEGEN_WORKER_SECRET="posegen-worker"), credentials=minted
    )
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "value": minted.database_url}
    assert env["REDIS_URL"] == {"name": "REDIS_URL", "value": minted.redis_url}
    assert env["FLUX_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "posegen-worker"
    assert [e["name"] for e in pod["spec"]["containers"][0]["env"]].count("DATABASE_URL") == 1


def test_worker_pod_defaults_need_no_host_network_and_leave_a_lost_node_soon() -> None:
    spec = build_worker_pod("ns", "demo", "uid-1", "gen-1", 1, settings())["spec"]
    assert "hostNetwork" not in spec and "initContainers" not in spec
    assert spec["volumes"] == [{"name": "outputs", "emptyDir": {}}], "fsGroup makes an emptyDir the worker's"
    assert spec["securityContext"]["fsGroup"] == 10001
    assert spec["tolerations"] == [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    ]
    assert spec["containers"][0]["image"] == "ghcr.io/posegen/posegen-worker:0.1.0"


def test_worker_pod_on_a_development_node() -> None:
    extra = '[{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}]'
    tolerations = '[{"key": "dedicated", "operator": "Exists"}]'
    env = {
        "POSEGEN_WORKER_HOST_NETWORK": "true",
        "POSEGEN_WORKER_EXTRA_ENV": extra,
        "POSEGEN_WORKER_NODE_LOSS_SECONDS": "5",
        "POSEGEN_WORKER_TOLERATIONS": tolerations,
        "POSEGEN_OUTPUT_HOST_PATH": "/srv/outputs",
        "POSEGEN_WORKER_IMAGE": "127.0.0.1:5000/posegen/posegen-worker:abc",
    }
    spec = build_worker_pod("ns", "demo", "uid-1", "gen-1", 1, settings(**env))["spec"]
    assert spec["hostNetwork"] is True
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in spec["containers"][0]["env"]
    assert spec["tolerations"][0] == {"key": "dedicated", "operator": "Exists"}
    assert [t["tolerationSeconds"] for t in spec["tolerations"][1:]] == [5, 5]
    assert spec["volumes"] == [{"name": "outputs", "hostPath": {"path": "/srv/outputs", "type": "DirectoryOrCreate"}}]
    assert "initContainers" not in spec, "one container: its status is the worker's (a pull error is named)"


def test_events_point_at_their_generation() -> None:
    event = build_event(
        "ns",
        "demo",
        "uid-1",
        "Warning",
        "Crashed",
        "x" * 2000,
        instance="op-1",
        now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    assert event["involvedObject"] == {
        "apiVersion": "posegen.io/v1",
        "kind": "PoseGeneration",
        "name": "demo",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert len(event["message"]) == 1024 and event["firstTimestamp"] == "2026-01-02T03:04:05Z"
    assert FINALIZER.startswith("posegen.io/")


def test_the_admin_api_serves_tls_with_the_configured_certificate(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    files = {"POSEGEN_API_TLS_CERT_FILE": str(pki.serving_cert), "POSEGEN_API_TLS_KEY_FILE": str(pki.serving_key)}
    context = ssl_context(settings(**files))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ssl_context(settings()) is None
    with pytest.raises(SettingsError, match="set both POSEGEN_API_TLS_CERT_FILE and POSEGEN_API_TLS_KEY_FILE"):
        settings(POSEGEN_API_TLS_CERT_FILE=str(pki.serving_cert))


@pytest.mark.parametrize(
    ("patterns", "namespace", "allowed"),
    [
        ((), "default", True),
        ((), "team-a", False),
        (("team-*", "ops"), "team-a", True),
        (("team-*", "ops"), "ops", True),
        (("team-*", "ops"), "default", False),
        (("team-*",), "kube-system", False),
    ],
)
def test_generate_creates_only_in_the_allowlist(patterns: tuple[str, ...], namespace: str, allowed: bool) -> None:
    assert (
        generate_allowed(
            settings(POSEGEN_GENERATE_NAMESPACES=",".join(patterns)).generate_namespaces, "default", namespace
        )
        is allowed
    )
