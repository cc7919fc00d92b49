"""Where the local stack keeps everything and what `up` decided once: the state directory's
layout, the ports, the admin token, the binaries, and how a component is started."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from posegen_devstack.pki import Pki
from posegen_devstack.processes import StackError, free_port, start_detached

REPO_ROOT = Path(__file__).resolve().parents[2]
DATABASE = "posegen"
DB_USER = "posegen"
WORKER_UID = 10001  # the Dockerfile's USER


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
    registry: int = field(default_factory=free_port)
    kubelet: int = field(default_factory=free_port)
    kubelet_healthz: int = field(default_factory=free_port)


@dataclass
class StackConfig:
    """What `up` decided once and every later command reuses (ports, token, binaries)."""

    ports: Ports
    admin_token: str
    bin_dir: str

    @classmethod
    def load(cls, path: Path, bin_dir: str | None = None) -> StackConfig:
        raw = json.loads(path.read_text())
        # Ports added since the file was written get fresh free ports.
        return cls(
            Ports(**{k: v for k, v in raw["ports"].items() if k in Ports.__dataclass_fields__}),
            raw["admin_token"],
            bin_dir or raw["bin_dir"],
        )

    @classmethod
    def load_or_create(cls, path: Path, bin_dir: str) -> StackConfig:
        config = cls.load(path, bin_dir) if path.exists() else cls(Ports(), secrets.token_urlsafe(24), bin_dir)
        path.write_text(json.dumps(asdict(config), indent=2))
        return config


class Layout:
    """The state directory of one stack and the settings every component reads."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.env_file = self.state_dir / "env"
        self.config_file = self.state_dir / "stack.json"
        self.output_dir = self.state_dir / "outputs"
        self._config: StackConfig | None = None

    @property
    def config(self) -> StackConfig:
        if self._config is None:
            if not self.config_file.exists():
                raise StackError(f"no stack in {self.state_dir}: run `make up` first")
            self._config = StackConfig.load(self.config_file)
        return self._config

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    def binary(self, name: str) -> str:
        return str(Path(self.config.bin_dir) / name)

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

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

    @property
    def registry_host(self) -> str:
        return f"127.0.0.1:{self.config.ports.registry}"

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
            "PATH": os.pathsep.join([self.config.bin_dir, venv_bin, prometheus_bin_dir(), os.environ.get("PATH", "")]),
        }

    def ensure_output_dir(self) -> Path:
        """Where workers write images, owned by the worker image's uid: containers run as 10001 and
        fsGroup does not apply to a hostPath volume."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.output_dir, WORKER_UID, WORKER_UID)
        return self.output_dir

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


def prometheus_bin_dir() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    return str(Path(found).parent)
