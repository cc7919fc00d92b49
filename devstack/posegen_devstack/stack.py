"""The local stack: a real control plane, Postgres, Redis and Prometheus, a kubelet node with
containerd where containers can run, the process node beside it (or alone where they cannot), a
registry for the project's images, and the operator, all on loopback, all state under one directory.

``up`` is idempotent (a running component is left alone), ``down`` stops exactly what the pid files
under ``<state>/run`` name. ``<state>/env`` is a sourceable file for people and scripts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from posegen_devstack import chart_install, control_plane, kubelet_node, operator_process, registry, services
from posegen_devstack.layout import REPO_ROOT, Layout, StackConfig
from posegen_devstack.pki import ensure_pki
from posegen_devstack.process_node import NODE_NAME
from posegen_devstack.processes import StackError, running_pid, stop, wait_until

BUILD_SCRIPT = REPO_ROOT / "devstack" / "build-binaries.sh"
# Stop order: dependents first.
COMPONENTS = (
    "operator",
    "operator-b",
    "node",
    "kubelet",
    "containerd",
    "registry",
    "prometheus",
    "redis",
    "postgres",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)


class Stack(Layout):
    """``kubelet``: None starts the kubelet node where containers can run and says loudly why not
    where they cannot; False runs the process node only (the test tiers); True insists."""

    def __init__(
        self, state_dir: Path, operator_env: dict[str, str] | None = None, *, kubelet: bool | None = None
    ) -> None:
        super().__init__(state_dir)
        self.operator_env = dict(operator_env or {})
        self.want_kubelet = kubelet
        self.with_kubelet = False  # whether `up` started the kubelet node

    # ---- up / down / status --------------------------------------------------------------------
    def up(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Postgres runs as its own user when we are root: it must be able to reach its data dir.
        self.state_dir.chmod(0o755)
        self._config = StackConfig.load_or_create(self.config_file, build_binaries())
        ensure_pki(self.state_dir / "pki")
        control_plane.write_admin_kubeconfig(self)
        control_plane.start_etcd(self)
        control_plane.start_apiserver(self)
        control_plane.start_controller_manager(self)
        control_plane.start_scheduler(self)
        services.start_postgres(self)
        services.start_redis(self)
        services.start_prometheus(self)
        self.with_kubelet = self.start_kubelet_node()
        self.start_process_node()
        self.apply_crds()
        self._write_env()
        if not chart_install.marker(self).exists():
            self.start_operator()

    def down(self) -> list[str]:
        stopped = []
        for name in COMPONENTS:
            if name == "containerd":
                stopped += kubelet_node.stop_containers(self)
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
            if stop(self.run_dir / f"{name}.pid", sig=sig):
                stopped.append(name)
        stopped += self._stop_pod_processes()
        stopped += kubelet_node.clean_up(self)
        return stopped

    def status(self) -> dict[str, int | None]:
        return {name: running_pid(self.run_dir / f"{name}.pid") for name in reversed(COMPONENTS)}

    def stop_component(self, name: str) -> bool:
        return stop(self.run_dir / f"{name}.pid", sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)

    def restart(self, name: str, *, down_seconds: float = 0.0) -> None:
        """Stop a component and start it again (fault tests: Postgres, Redis, the API server, the kubelet)."""
        starters = {
            "postgres": services.start_postgres,
            "redis": services.start_redis,
            "kube-apiserver": control_plane.start_apiserver,
            "kubelet": kubelet_node.start_kubelet,
            "node": Stack.start_process_node,
        }
        self.stop_component(name)
        time.sleep(down_seconds)
        starters[name](self)

    # ---- nodes ---------------------------------------------------------------------------------
    def start_kubelet_node(self) -> bool:
        """True when the kubelet node runs; otherwise says loudly why not, or raises if insisted on."""
        if self.want_kubelet is False:
            return False
        missing = kubelet_node.missing(self)
        if missing:
            message = "the kubelet node cannot run here: " + "; ".join(missing)
            if self.want_kubelet:
                raise StackError(message)
            print(
                f"\n*** {message}\n*** pods run on the process node only (no containers, images ignored)\n",
                file=sys.stderr,
                flush=True,
            )
            return False
        registry.start_registry(self)
        kubelet_node.start(self)
        return True

    def start_process_node(self) -> None:
        """The process node; tainted (only what tolerates it runs there) beside a kubelet node."""
        argv = [sys.executable, "-m", "posegen_devstack", "node", "--state-dir", str(self.state_dir)]
        self.start("node", argv + (["--tainted"] if self.with_kubelet else []))
        wait_until(
            lambda: control_plane.node_ready(self, NODE_NAME), timeout=60, what="process node", log=self.log("node")
        )

    def _stop_pod_processes(self) -> list[str]:
        """Pod processes outlive the process node by design; `down` ends them too."""
        stopped = []
        for pid_file in sorted((self.state_dir / "node").glob("*/*.pid")):
            if stop(pid_file, timeout=5):
                stopped.append(f"pod {pid_file.parent.name}/{pid_file.stem}")
        return stopped

    # ---- the operator --------------------------------------------------------------------------
    def apply_crds(self) -> None:
        control_plane.apply_crds(self)

    def operator_environment(self, **overrides: str) -> dict[str, str]:
        return operator_process.operator_environment(self, self.operator_env, **overrides)

    def start_operator(self, name: str = "operator", **overrides: str) -> int:
        """Run the operator as a local process (as `kopf run` would), logs in <state>/logs/<name>.log."""
        return operator_process.start_operator(self, self.operator_env, name, **overrides)

    def stop_operator(self, name: str = "operator", sig: int = signal.SIGTERM) -> bool:
        return operator_process.stop_operator(self, name, sig)

    def _write_env(self) -> None:
        lines = ["# Generated by `make up`; source it: . .local/env"]
        lines += [f"export {key}={_shell_quote(value)}" for key, value in self.environment().items()]
        self.env_file.write_text("\n".join(lines) + "\n")


def build_binaries() -> str:
    """Run the (cached) control-plane build; returns the bin directory."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
