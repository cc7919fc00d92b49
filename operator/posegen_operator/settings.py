"""The operator's settings: one typed object, read once from the environment at start-up; anything
missing or malformed stops the process with a message naming the variable (fail fast)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from posegen_common.secret_files import secret_value


class SettingsError(ValueError):
    pass


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str | None = None) -> str:
        value = self.environ.get(name, default)
        if value is None or value == "":
            raise SettingsError(f"{name} must be set")
        return value

    def optional(self, name: str) -> str | None:
        return self.environ.get(name) or None

    def secret(self, name: str) -> str:
        """A credential: NAME, or the file NAME_FILE names (how the chart passes them)."""
        value = secret_value(self.environ, name)
        if value is None:
            raise SettingsError(f"{name} must be set (or {name}_FILE, naming a file that holds it)")
        return value

    def optional_secret(self, name: str) -> str | None:
        return secret_value(self.environ, name)

    def number(self, name: str, default: float, *, minimum: float = 0, maximum: float = float("inf")) -> float:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError as error:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from error
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {raw}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self.number(name, default, minimum=minimum, maximum=maximum)
        if value != int(value):
            raise SettingsError(f"{name} must be a whole number, got {value}")
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.environ.get(name) or default
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def json(self, name: str, default: Any, kind: type) -> Any:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{name} must be JSON: {error}") from error
        if not isinstance(value, kind):
            raise SettingsError(f"{name} must be a JSON {kind.__name__}")
        return value


@dataclass(frozen=True)
class WorkerTemplate:
    """How worker pods are built (the chart's worker values)."""

    # The published name (the chart's default): `make images` pushes the same name to a local registry.
    image: str = "ghcr.io/posegen/posegen-worker:0.1.0"
    command: tuple[str, ...] = ("python", "-m", "posegen_worker")
    service_account: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    # Seconds a worker stays bound to a node that is NotReady or unreachable before it is evicted
    # (Kubernetes' default is 300): the heartbeat replaces it sooner, this lets the old pod go.
    node_loss_seconds: int = 10
    # The node's network (single-node and development clusters reach 127.0.0.1 services this way).
    host_network: bool = False
    # More environment variables for the worker container (a list of EnvVar).
    extra_env: list[dict[str, Any]] = field(default_factory=list)
    # Where images go: a hostPath or a PVC (claim name) mounted at mount_path, else an emptyDir.
    output_mount_path: str = "/var/lib/posegen/outputs"
    output_host_path: str | None = None
    output_claim: str | None = None
    # Secret (in each generation's namespace) with database-url, redis-url, flux-api-key; without
    # one, the operator passes its own connection URLs as plain values (development only).
    secret_name: str | None = None
    grace_seconds: int = 30
    generator: str = "embedded"
    pose_seconds: float = 0.6
    flux_url: str | None = None
    # Where the FLUX backend may fetch samples from, passed to the worker as is (generators/flux.py
    # DestinationPolicy): the safe defaults refuse http and non-public addresses.
    flux_allow_http: bool = False
    flux_allow_private_addresses: bool = False
    flux_sample_hosts: tuple[str, ...] = ()
    flux_max_pixels: int = 4096 * 4096
    log_format: str = "text"
    # How long a worker waits out an unreachable Postgres before exiting DEPENDENCY_UNAVAILABLE.
    dependency_retry_seconds: float = 600


@dataclass(frozen=True)
class Limits:
    """Ceilings an admin sets on what a resource may ask for (admission refuses more where the
    chart's ValidatingAdmissionPolicy is installed; the operator clamps in any case)."""

    priority: int = 100
    deadline: float = 604800
    max_recoveries: int = 100
    stall_timeout: float = 86400


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    admin_token: str
    namespaces: tuple[str, ...]
    max_concurrent: int
    max_concurrent_per_namespace: int  # 0: no limit per namespace
    limits: Limits
    # fnmatch patterns of the namespaces /generate may create generations in; empty: the default one
    generate_namespaces: tuple[str, ...]
    sweep_interval: float
    status_interval: float
    heartbeat_ttl: float
    heartbeat_interval: float
    worker_startup_grace: float
    worker_start_timeout: float
    stall_timeout: float
    deadline: float
    max_recoveries: int
    backoff_base: float
    backoff_max: float
    api_host: str
    api_port: int
    # The admin API's certificate and key (PEM files, e.g. a mounted kubernetes.io/tls Secret); unset: HTTP.
    api_tls_cert_file: str | None
    api_tls_key_file: str | None
    metrics_port: int
    probe_port: int
    leader_election: bool
    lease_name: str
    lease_namespace: str
    identity: str
    migrate_on_start: bool
    log_format: str
    flux_api_key: str | None
    worker: WorkerTemplate

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        heartbeat_ttl = env.number("POSEGEN_HEARTBEAT_TTL_SECONDS", 15, minimum=2, maximum=3600)
        heartbeat_interval = env.number(
            "POSEGEN_HEARTBEAT_INTERVAL_SECONDS", heartbeat_ttl / 5, minimum=0.1, maximum=heartbeat_ttl / 2
        )
        namespaces = tuple(n.strip() for n in (env.optional("POSEGEN_NAMESPACES") or "").split(",") if n.strip())
        log_format = env.choice("POSEGEN_LOG_FORMAT", "text", ("text", "json"))
        stall_timeout = env.number("POSEGEN_STALL_TIMEOUT_SECONDS", 600, minimum=10, maximum=86400)
        worker = WorkerTemplate(
            image=env.text("POSEGEN_WORKER_IMAGE", WorkerTemplate.image),
            command=tuple(env.json("POSEGEN_WORKER_COMMAND", list(WorkerTemplate.command), list)),
            service_account=env.optional("POSEGEN_WORKER_SERVICE_ACCOUNT"),
            resources=env.json("POSEGEN_WORKER_RESOURCES", {}, dict),
            node_selector=env.json("POSEGEN_WORKER_NODE_SELECTOR", {}, dict),
            tolerations=env.json("POSEGEN_WORKER_TOLERATIONS", [], list),
            node_loss_seconds=env.integer("POSEGEN_WORKER_NODE_LOSS_SECONDS", 10, maximum=86400),
            host_network=env.flag("POSEGEN_WORKER_HOST_NETWORK", False),
            extra_env=env.json("POSEGEN_WORKER_EXTRA_ENV", [], list),
            output_mount_path=env.text("POSEGEN_OUTPUT_MOUNT_PATH", WorkerTemplate.output_mount_path),
            output_host_path=env.optional("POSEGEN_OUTPUT_HOST_PATH"),
            output_claim=env.optional("POSEGEN_OUTPUT_CLAIM"),
            secret_name=env.optional("POSEGEN_WORKER_SECRET"),
            grace_seconds=env.integer("POSEGEN_WORKER_GRACE_SECONDS", 30, minimum=1, maximum=3600),
            generator=env.choice("POSEGEN_GENERATOR", "embedded", ("embedded", "flux")),
            pose_seconds=env.number("POSEGEN_POSE_SECONDS", 0.6, maximum=600),
            flux_url=env.optional("FLUX_API_URL"),
            flux_allow_http=env.flag("POSEGEN_FLUX_ALLOW_HTTP", False),
            flux_allow_private_addresses=env.flag("POSEGEN_FLUX_ALLOW_PRIVATE_ADDRESSES", False),
            flux_sample_hosts=tuple(
                h.strip() for h in (env.optional("POSEGEN_FLUX_SAMPLE_HOSTS") or "").split(",") if h.strip()
            ),
            flux_max_pixels=env.integer("POSEGEN_FLUX_MAX_PIXELS", 4096 * 4096, minimum=65536, maximum=10**8),
            log_format=log_format,
            dependency_retry_seconds=env.number(
                "POSEGEN_WORKER_DEPENDENCY_RETRY_SECONDS", stall_timeout, minimum=1, maximum=86400
            ),
        )
        if worker.generator == "flux" and not worker.flux_url:
            raise SettingsError("FLUX_API_URL must be set when POSEGEN_GENERATOR=flux")
        if worker.output_host_path and worker.output_claim:
            raise SettingsError("set only one of POSEGEN_OUTPUT_HOST_PATH and POSEGEN_OUTPUT_CLAIM")
        if bool(env.optional("POSEGEN_API_TLS_CERT_FILE")) != bool(env.optional("POSEGEN_API_TLS_KEY_FILE")):
            raise SettingsError("set both POSEGEN_API_TLS_CERT_FILE and POSEGEN_API_TLS_KEY_FILE, or neither")
        return cls(
            database_url=env.secret("DATABASE_URL"),
            redis_url=env.secret("REDIS_URL"),
            admin_token=env.secret("POSEGEN_ADMIN_TOKEN"),
            namespaces=namespaces,
            max_concurrent=env.integer("POSEGEN_MAX_CONCURRENT", 10, minimum=1, maximum=100000),
            max_concurrent_per_namespace=env.integer("POSEGEN_MAX_CONCURRENT_PER_NAMESPACE", 0, maximum=100000),
            limits=Limits(
                priority=env.integer("POSEGEN_LIMIT_PRIORITY", Limits.priority, minimum=-100, maximum=100),
                deadline=env.number("POSEGEN_LIMIT_DEADLINE_SECONDS", Limits.deadline, minimum=30, maximum=604800),
                max_recoveries=env.integer("POSEGEN_LIMIT_MAX_RECOVERIES", Limits.max_recoveries, maximum=100),
                stall_timeout=env.number(
                    "POSEGEN_LIMIT_STALL_TIMEOUT_SECONDS", Limits.stall_timeout, minimum=10, maximum=86400
                ),
            ),
            generate_namespaces=tuple(
                n.strip() for n in (env.optional("POSEGEN_GENERATE_NAMESPACES") or "").split(",") if n.strip()
            ),
            sweep_interval=env.number("POSEGEN_SWEEP_INTERVAL_SECONDS", 10, minimum=0.5, maximum=3600),
            status_interval=env.number("POSEGEN_STATUS_INTERVAL_SECONDS", 2, minimum=0.2, maximum=600),
            heartbeat_ttl=heartbeat_ttl,
            heartbeat_interval=heartbeat_interval,
            worker_startup_grace=env.number("POSEGEN_WORKER_STARTUP_GRACE_SECONDS", 30, maximum=3600),
            worker_start_timeout=env.number("POSEGEN_WORKER_START_TIMEOUT_SECONDS", 300, minimum=10, maximum=86400),
            stall_timeout=stall_timeout,
            deadline=env.number("POSEGEN_DEADLINE_SECONDS", 7200, minimum=30, maximum=604800),
            max_recoveries=env.integer("POSEGEN_MAX_RECOVERIES", 5, maximum=100),
            backoff_base=env.number("POSEGEN_RECOVERY_BACKOFF_SECONDS", 2, maximum=3600),
            backoff_max=env.number("POSEGEN_RECOVERY_BACKOFF_MAX_SECONDS", 60, maximum=86400),
            api_host=env.text("POSEGEN_API_HOST", "0.0.0.0"),
            api_port=env.integer("POSEGEN_API_PORT", 8080, minimum=1, maximum=65535),
            api_tls_cert_file=env.optional("POSEGEN_API_TLS_CERT_FILE"),
            api_tls_key_file=env.optional("POSEGEN_API_TLS_KEY_FILE"),
            metrics_port=env.integer("POSEGEN_METRICS_PORT", 9090, minimum=1, maximum=65535),
            probe_port=env.integer("POSEGEN_PROBE_PORT", 8081, minimum=1, maximum=65535),
            leader_election=env.flag("POSEGEN_LEADER_ELECTION", True),
            lease_name=env.text("POSEGEN_LEASE_NAME", "posegen-operator"),
            lease_namespace=env.text("POSEGEN_LEASE_NAMESPACE", env.optional("POD_NAMESPACE") or "default"),
            identity=env.text("POSEGEN_IDENTITY", env.optional("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"),
            migrate_on_start=env.flag("POSEGEN_MIGRATE_ON_START", True),
            log_format=log_format,
            flux_api_key=env.optional_secret("FLUX_API_KEY"),
            worker=worker,
        )
