"""The local stack: a real control plane (etcd, kube-apiserver, kube-controller-manager), the node
runner, Postgres, Redis and Prometheus, all on loopback, all state under one directory.

``up`` is idempotent (a running component is left alone), ``down`` stops exactly what the pid files
under ``<state>/run`` name. ``<state>/env`` is a sourceable file for people and scripts."""

from __future__ import annotations

import base64
import glob
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg2
import redis
import yaml

from posegen_devstack.pki import Pki, ensure_pki
from posegen_devstack.processes import (
    StackError,
    free_port,
    running_pid,
    start_detached,
    stop,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "devstack" / "build-binaries.sh"
DATABASE = "posegen"
DB_USER = "posegen"
SERVICE_CIDR = "10.0.0.0/24"
# Controllers the stack needs: garbage collection, namespace deletion, service accounts, quotas, and the
# workload controllers a Helm release of the operator uses. No node lifecycle: the node runner is
# the only node and reports its own health.
CONTROLLERS = (
    "garbage-collector-controller,namespace-controller,serviceaccount-controller,"
    "serviceaccount-token-controller,deployment-controller,replicaset-controller,job-controller,"
    "root-ca-certificate-publisher-controller,endpointslice-controller,ttl-after-finished-controller,"
    "resourcequota-controller"
)
# Stop order: dependents first.
COMPONENTS = (
    "operator",
    "operator-b",
    "node",
    "prometheus",
    "redis",
    "postgres",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


@dataclass
class Ports:
    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    postgres: int = field(default_factory=free_port)
    redis: int = field(default_factory=free_port)
    prometheus: int = field(default_factory=free_port)
    operator_api: int = field(default_factory=free_port)
    operator_metrics: int = field(default_factory=free_port)
    operator_probe: int = field(default_factory=free_port)


@dataclass
class StackConfig:
    """What `up` decided once and every later command reuses (ports, token, binaries)."""

    ports: Ports
    admin_token: str
    bin_dir: str

    @classmethod
    def load_or_create(cls, path: Path, bin_dir: str) -> StackConfig:
        if path.exists():
            raw = json.loads(path.read_text())
            config = cls(Ports(**raw["ports"]), raw["admin_token"], bin_dir)
        else:
            config = cls(Ports(), secrets.token_urlsafe(24), bin_dir)
        path.write_text(json.dumps(asdict(config), indent=2))
        return config


class Stack:
    def __init__(self, state_dir: Path, operator_env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.operator_env = dict(operator_env or {})
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.env_file = self.state_dir / "env"
        self.config_file = self.state_dir / "stack.json"
        self.output_dir = self.state_dir / "outputs"
        self._config: StackConfig | None = None

    # ---- configuration -------------------------------------------------------------------------
    @property
    def config(self) -> StackConfig:
        if self._config is None:
            if not self.config_file.exists():
                raise StackError(f"no stack in {self.state_dir}: run `make up` first")
            raw = json.loads(self.config_file.read_text())
            self._config = StackConfig(Ports(**raw["ports"]), raw["admin_token"], raw["bin_dir"])
        return self._config

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    def binary(self, name: str) -> str:
        return str(Path(self.config.bin_dir) / name)

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.config.ports.apiserver}"

    @property
    def database_url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.config.ports.postgres}/{DATABASE}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.config.ports.redis}/0"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.prometheus}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports.operator_api}"

    def environment(self) -> dict[str, str]:
        """What `.local/env` exports; also the environment of processes the stack starts."""
        venv_bin = str(Path(sys.executable).parent)
        return {
            "POSEGEN_STATE_DIR": str(self.state_dir),
            "KUBECONFIG": str(self.kubeconfig),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "PROMETHEUS_URL": self.prometheus_url,
            "POSEGEN_API_URL": self.api_url,
            "POSEGEN_ADMIN_TOKEN": self.config.admin_token,
            "POSEGEN_OUTPUT_DIR": str(self.output_dir),
            "PATH": os.pathsep.join([self.config.bin_dir, venv_bin, _prometheus_bin_dir(), os.environ.get("PATH", "")]),
        }

    # ---- up / down / status --------------------------------------------------------------------
    def up(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Postgres runs as its own user when we are root: it must be able to reach its data dir.
        self.state_dir.chmod(0o755)
        self._config = StackConfig.load_or_create(self.config_file, build_binaries())
        ensure_pki(self.state_dir / "pki")
        self._write_kubeconfig()
        self._start_etcd()
        self._start_apiserver()
        self._start_controller_manager()
        self._start_postgres()
        self._start_redis()
        self._start_prometheus()
        self._start_node()
        self.apply_crds()
        self._write_env()
        self.start_operator()

    def down(self) -> list[str]:
        stopped = []
        for name in COMPONENTS:
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            if stop(self.run_dir / f"{name}.pid", sig=sig):
                stopped.append(name)
        stopped += self._stop_pod_processes()
        return stopped

    def status(self) -> dict[str, int | None]:
        return {name: running_pid(self.run_dir / f"{name}.pid") for name in reversed(COMPONENTS)}

    def start(
        self, name: str, argv: Sequence[str], *, user: str | None = None, env: dict[str, str] | None = None
    ) -> int:
        return start_detached(
            name,
            argv,
            run_dir=self.run_dir,
            log_dir=self.log_dir,
            env={**self.environment(), **(env or {})},
            user=user,
            cwd=REPO_ROOT,
        )

    def restart(self, name: str, *, down_seconds: float = 0.0) -> None:
        """Stop a service and start it again (fault tests: Postgres or Redis going away)."""
        starters = {"postgres": self._start_postgres, "redis": self._start_redis}
        stop(self.run_dir / f"{name}.pid", sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)
        time.sleep(down_seconds)
        starters[name]()

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # ---- components ----------------------------------------------------------------------------
    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        pki = self.pki
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "posegen-local",
                    "cluster": {"server": self.apiserver_url, "certificate-authority-data": b64(pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "posegen-admin",
                    "user": {
                        "client-certificate-data": b64(pki.admin_cert),
                        "client-key-data": b64(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "posegen-local",
                    "context": {"cluster": "posegen-local", "user": "posegen-admin", "namespace": "default"},
                }
            ],
            "current-context": "posegen-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self.kubeconfig.chmod(0o600)

    def _start_etcd(self) -> None:
        ports = self.config.ports
        client = f"http://127.0.0.1:{ports.etcd_client}"
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        self.start(
            "etcd",
            [
                self.binary("etcd"),
                "--name=posegen",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=posegen={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until(lambda: b'"true"' in _http_get(f"{client}/health"), timeout=60, what="etcd", log=self.log("etcd"))

    def _start_apiserver(self) -> None:
        pki, ports = self.pki, self.config.ports
        self.start(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.state_dir / 'pki' / 'generated'}",
                "--event-ttl=1h",
                "--v=0",
            ],
        )
        wait_until(self._apiserver_ready, timeout=120, what="kube-apiserver", log=self.log("kube-apiserver"))

    def _apiserver_ready(self) -> bool:
        return _https_get(f"{self.apiserver_url}/readyz", self.pki) == b"ok"

    def _start_controller_manager(self) -> None:
        pki = self.pki
        self.start(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--controllers={CONTROLLERS}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-gc-syncs=5",
                "--v=0",
            ],
        )

    def _start_postgres(self) -> None:
        data = self.state_dir / "postgres"
        bin_dir = _postgres_bin_dir()
        user = "postgres" if os.geteuid() == 0 else None
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(data, user, user)
            subprocess.run(
                [
                    f"{bin_dir}/initdb",
                    "-D",
                    str(data),
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                user=user,
                group=user,
            )
        port = self.config.ports.postgres
        self.start(
            "postgres",
            [
                f"{bin_dir}/postgres",
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                "",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
            ],
            user=user,
        )
        wait_until(lambda: _pg_ready(port), timeout=60, what="postgres", log=self.log("postgres"))
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            conn.close()

    def _start_redis(self) -> None:
        data = self.state_dir / "redis"
        data.mkdir(exist_ok=True)
        port = self.config.ports.redis
        self.start(
            "redis",
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
        )
        client = redis.Redis(port=port, socket_timeout=2)
        wait_until(lambda: bool(client.ping()), timeout=30, what="redis", log=self.log("redis"))

    def _start_prometheus(self) -> None:
        data = self.state_dir / "prometheus"
        data.mkdir(exist_ok=True)
        ports = self.config.ports
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(REPO_ROOT / "deploy" / "prometheus" / "*.rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{ports.prometheus}"]}],
                },
                {
                    "job_name": "posegen-operator",
                    "static_configs": [{"targets": [f"127.0.0.1:{ports.operator_metrics}"]}],
                },
            ],
        }
        (data / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.start(
            "prometheus",
            [
                f"{_prometheus_bin_dir()}/prometheus",
                f"--config.file={data / 'prometheus.yml'}",
                f"--storage.tsdb.path={data / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ],
        )
        wait_until(
            lambda: b"Ready" in _http_get(f"{self.prometheus_url}/-/ready"),
            timeout=60,
            what="prometheus",
            log=self.log("prometheus"),
        )

    def _start_node(self) -> None:
        self.start("node", [sys.executable, "-m", "posegen_devstack", "node", "--state-dir", str(self.state_dir)])
        wait_until(self._node_ready, timeout=60, what="node runner", log=self.log("node"))

    def _node_ready(self) -> bool:
        out = subprocess.run(
            [
                self.binary("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "get",
                "node",
                "posegen-local",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() == "True"

    def apply_crds(self) -> None:
        crds = REPO_ROOT / "crds"
        subprocess.run(
            [self.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", "apply", "-f", str(crds)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [
                self.binary("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                "wait",
                "--for=condition=Established",
                "crd/posegenerations.posegen.io",
                "--timeout=60s",
            ],
            check=True,
            capture_output=True,
            timeout=70,
        )

    def operator_environment(self, **overrides: str) -> dict[str, str]:
        """The operator's settings on the local stack: images go to <state>/outputs on this machine."""
        ports = self.config.ports
        env = {
            "POSEGEN_API_HOST": "127.0.0.1",
            "POSEGEN_API_PORT": str(ports.operator_api),
            "POSEGEN_METRICS_PORT": str(ports.operator_metrics),
            "POSEGEN_PROBE_PORT": str(ports.operator_probe),
            "POSEGEN_OUTPUT_HOST_PATH": str(self.output_dir),
            "POSEGEN_OUTPUT_MOUNT_PATH": str(self.output_dir),
            "POSEGEN_LEASE_NAMESPACE": "default",
            "POSEGEN_IDENTITY": "local-operator",
            "POSEGEN_POSE_SECONDS": "0.6",
            "POSEGEN_STATUS_INTERVAL_SECONDS": "1",
        }
        env.update(self.operator_env)
        env.update(overrides)
        return env

    def start_operator(self, name: str = "operator", **overrides: str) -> int:
        """Run the operator as a local process (as `kopf run` would), logs in <state>/logs/<name>.log."""
        self.output_dir.mkdir(exist_ok=True)
        pid = self.start(name, [sys.executable, "-m", "posegen_operator"], env=self.operator_environment(**overrides))
        port = int(overrides.get("POSEGEN_API_PORT", self.config.ports.operator_api))
        wait_until(
            lambda: b"ready" in _http_get(f"http://127.0.0.1:{port}/readyz"), timeout=60, what=name, log=self.log(name)
        )
        return pid

    def stop_operator(self, name: str = "operator", sig: int = signal.SIGTERM) -> bool:
        return stop(self.run_dir / f"{name}.pid", sig=sig)

    def _stop_pod_processes(self) -> list[str]:
        """Pod processes outlive the node runner by design; `down` ends them too."""
        stopped = []
        for pid_file in sorted((self.state_dir / "node").glob("*/*.pid")):
            if stop(pid_file, timeout=5):
                stopped.append(f"pod {pid_file.parent.name}/{pid_file.stem}")
        return stopped

    def _write_env(self) -> None:
        lines = ["# Generated by `make up`; source it: . .local/env"]
        lines += [f"export {key}={_shell_quote(value)}" for key, value in self.environment().items()]
        self.env_file.write_text("\n".join(lines) + "\n")


def build_binaries() -> str:
    """Run the (cached) control-plane build; returns the bin directory."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def _postgres_bin_dir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version_key)
    if not candidates:
        raise StackError("Postgres is not installed: run `make system-deps`")
    return str(Path(candidates[-1]).parent)


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[4])
    except (ValueError, IndexError):
        return 0


def _prometheus_bin_dir() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    return str(Path(found).parent)


def _pg_ready(port: int) -> bool:
    psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", connect_timeout=2).close()
    return True


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bytes(response.read())


def _https_get(url: str, pki: Pki) -> bytes:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bytes(response.read())


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
