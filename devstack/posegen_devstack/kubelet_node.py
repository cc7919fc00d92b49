"""The kubelet node: containerd (own root, state and socket under the state directory) with runc,
and a kubelet registered as a real node with its own client certificate. Pods run in containers
from images in the stack's registry; they use the host's network (a loopback-only CNI config keeps
the node Ready and every connection on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from posegen_devstack import control_plane, images
from posegen_devstack.layout import Layout
from posegen_devstack.pki import ensure_certificate
from posegen_devstack.processes import WaitTimeout, pid_alive, read_pid, wait_for, wait_until

NODE_NAME = "posegen-kubelet"
CNI_BIN_DIR = Path("/usr/lib/cni")
# Paths kubelet uses whatever its root dir: one kubelet per machine (the device-plugin socket).
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")


def directory(layout: Layout) -> Path:
    return layout.state_dir / "kubelet-node"


def containerd_socket(layout: Layout) -> Path:
    return directory(layout) / "containerd" / "containerd.sock"


def missing(layout: Layout) -> list[str]:
    """What stops containers from running here, in words a person can act on; empty: nothing."""
    problems = []
    if os.geteuid() != 0:
        problems.append("kubelet and containerd need root")
    for tool, package in (("containerd", "containerd"), ("runc", "runc"), ("buildah", "buildah"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is not installed (apt-get install {package})")
    if not (CNI_BIN_DIR / "loopback").exists():
        problems.append(f"no CNI loopback plugin in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)")
    for name in ("kubelet", "kube-scheduler", "registry"):
        if not Path(layout.binary(name)).exists():
            problems.append(f"no {name} binary in {layout.config.bin_dir} (make binaries)")
    if not Path("/sys/fs/cgroup/memory").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        problems.append("no memory cgroup controller mounted")
    other = other_kubelet(layout)
    if other is not None:
        problems.append(f"another kubelet runs on this machine (pid {other}); only one can (its device-plugin socket)")
    return problems


def other_kubelet(layout: Layout) -> int | None:
    ours = read_pid(layout.run_dir / "kubelet.pid")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == ours:
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() == "kubelet":
                return int(proc.name)
    return None


def start(layout: Layout) -> None:
    sandbox = images.ensure_pause_image(layout)
    start_containerd(layout, sandbox)
    start_kubelet(layout)


# ---- containerd ----------------------------------------------------------------------------------
def start_containerd(layout: Layout, sandbox_image: str) -> None:
    base = directory(layout) / "containerd"
    cni_conf = directory(layout) / "cni"
    hosts = base / "certs.d" / layout.registry_host
    for path in (base / "root", base / "state", cni_conf, hosts):
        path.mkdir(parents=True, exist_ok=True)
    # Written before containerd starts: containerd 1.6 does not notice a conflist that appears later.
    (cni_conf / "10-loopback.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "posegen-loopback", "plugins": [{"type": "loopback"}]})
    )
    (hosts / "hosts.toml").write_text(
        f'server = "http://{layout.registry_host}"\n\n'
        f'[host."http://{layout.registry_host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    socket = containerd_socket(layout)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[{cri}]
  sandbox_image = "{sandbox_image}"
  # The VM withholds CAP_SYS_RESOURCE: runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
[{cri}.registry]
  config_path = "{base / "certs.d"}"
"""
    (base / "config.toml").write_text(config)
    layout.start("containerd", ["containerd", "--config", str(base / "config.toml")])
    wait_until(socket.exists, timeout=30, what="containerd", log=layout.log("containerd"))


def ctr(layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(containerd_socket(layout)), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def main_pid(layout: Layout, core: Any, namespace: str, pod: str) -> int | None:
    """The host PID of a running pod's first container's main process (None: not running yet)."""
    statuses = core.read_namespaced_pod(pod, namespace).status.container_statuses or []
    if not statuses or not statuses[0].container_id or statuses[0].state.running is None:
        return None
    return task_pid(layout, statuses[0].container_id.split("://", 1)[1])


def task_pid(layout: Layout, container_id: str) -> int | None:
    """The host PID of a container's main process (None: not running)."""
    for line in ctr(layout, "tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == container_id and fields[2] == "RUNNING":
            return int(fields[1])
    return None


# ---- kubelet -------------------------------------------------------------------------------------
def start_kubelet(layout: Layout) -> None:
    pki, ports = layout.pki, layout.config.ports
    base = directory(layout)
    root = base / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    # Its own identity, so RBAC sees a node: system:node:<name> in group system:nodes.
    client = ensure_certificate(pki, "kubelet-client", f"system:node:{NODE_NAME}", "system:nodes", server=False)
    serving = ensure_certificate(pki, "kubelet-serving", NODE_NAME, None, server=True)
    kubeconfig = base / "kubeconfig"
    control_plane.write_kubeconfig(layout, kubeconfig, f"system:node:{NODE_NAME}", client, client.with_suffix(".key"))
    control_plane.kubectl(
        layout,
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "posegen:nodes"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
            }
        ),
    )
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This kind of machine has cgroup v1: kubelet >= 1.35 refuses it unless told otherwise.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "address": "127.0.0.1",
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "containerRuntimeEndpoint": f"unix://{containerd_socket(layout)}",
        "tlsCertFile": str(serving),
        "tlsPrivateKeyFile": str(serving.with_suffix(".key")),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": str(base / "pod-logs"),
        "serializeImagePulls": False,
        "maxPods": 110,
        # A development machine's disk is often fuller than production thresholds allow.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 95,
        "nodeStatusReportFrequency": "10s",
    }
    (base / "kubelet.yaml").write_text(yaml.safe_dump(config))
    layout.start(
        "kubelet",
        [
            layout.binary("kubelet"),
            f"--config={base / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={root}",
            f"--cert-dir={base / 'certs'}",
            f"--hostname-override={NODE_NAME}",
            # Refused as loopback ("nodeIP can't be loopback"), and then kubelet publishes no address
            # at all instead of the machine's external one; set_loopback_address gives it 127.0.0.1.
            "--node-ip=127.0.0.1",
            "--v=1",
        ],
    )
    wait_until(lambda: _node_registered(layout), timeout=60, what="kubelet node", log=layout.log("kubelet"))
    set_loopback_address(layout)
    wait_until(
        lambda: control_plane.node_ready(layout, NODE_NAME),
        timeout=60,
        what="kubelet node Ready",
        log=layout.log("kubelet"),
    )


def _node_registered(layout: Layout) -> bool:
    control_plane.kubectl(layout, "get", "node", NODE_NAME, "-o", "name", timeout=10)
    return True


def set_loopback_address(layout: Layout) -> None:
    """kubelet refuses a loopback --node-ip and then publishes no address, but never overwrites one:
    one InternalIP 127.0.0.1 (no Hostname address: the API server would resolve it by DNS)."""
    control_plane.kubectl(
        layout,
        "patch",
        "node",
        NODE_NAME,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
    )


# ---- down ----------------------------------------------------------------------------------------
def stop_containers(layout: Layout) -> list[str]:
    """Kill every container of this stack's containerd before containerd stops (containers outlive
    kubelet and containerd: their shims keep running)."""
    if read_pid(layout.run_dir / "containerd.pid") is None or not containerd_socket(layout).exists():
        return []
    tasks = [line.split()[0] for line in ctr(layout, "tasks", "ls").stdout.splitlines()[1:] if line.strip()]
    for task in tasks:
        ctr(layout, "tasks", "kill", "--all", "--signal", "SIGKILL", task)
    for task in tasks:
        with contextlib.suppress(WaitTimeout):
            wait_for(
                lambda task=task: ctr(layout, "tasks", "delete", task).returncode == 0,  # type: ignore[misc]
                timeout=10,
                what=f"container {task} to stop",
            )
    return [f"{len(tasks)} containers"] if tasks else []


def shims(layout: Layout) -> list[int]:
    """containerd shims serving this stack's containerd (they outlive it)."""
    socket = str(containerd_socket(layout)).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"containerd-shim-runc-v2") and socket in b" ".join(argv):
                    found.append(int(proc.name))
    return found


def mounts(layout: Layout) -> list[str]:
    """Mount points under the kubelet node's directory, deepest first."""
    prefix = str(directory(layout)) + "/"
    points = {
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if (line.split()[1] + "/").startswith(prefix)
    }
    return sorted(points, key=len, reverse=True)


def clean_up(layout: Layout) -> list[str]:
    """After kubelet and containerd stopped: end shims still serving this stack's socket, and
    unmount what kubelet and containerd mounted under the state directory (deepest first)."""
    done = []
    for pid in shims(layout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            done.append(f"shim {pid}")
    unmounted = [
        point
        for point in mounts(layout)
        if subprocess.run(["umount", "-l", point], capture_output=True, check=False).returncode == 0
    ]
    return done + ([f"{len(unmounted)} kubelet mounts"] if unmounted else [])


def kubelet_running(layout: Layout) -> bool:
    pid = read_pid(layout.run_dir / "kubelet.pid")
    return pid is not None and pid_alive(pid)
