"""The node runner: the local stand-in for a kubelet (and scheduler) where no containers exist.

It registers one Node, binds every unscheduled pod to it, and runs each container's command as a
local process (the image is ignored; ``python`` means this virtualenv's interpreter) with the
pod's environment resolved from values, Secrets, ConfigMaps and the downward API. It reports pod
phase and container states with real exit codes, applies ``restartPolicy``, and honours deletion:
SIGTERM, the grace period, then SIGKILL, then the final delete.

Every container runs under ``shim.sh``, which records the PID and, later, the exit code on disk.
So when the runner itself restarts, running pod processes are *adopted*, not killed: the new
runner reads the records and carries on reporting, exit codes included.

Files, under ``<state>/node/<namespace>/``: ``<pod>.pid`` (container PIDs, one a line, first
container first) and ``<pod>.log`` (all output), so a person can ``kill -9 $(cat …/<pod>.pid)``;
runner records in ``.<pod>.<uid>/``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from posegen_devstack.processes import pid_alive, read_pid

log = logging.getLogger("node")

NODE_NAME = "posegen-local"
SHIM = Path(__file__).with_name("shim.sh")
REQUEST_TIMEOUT = 10
TICK = 0.1
NODE_HEARTBEAT = 20.0
MAX_BACKOFF = 10.0
PY_COMMANDS = {"python", "python3"}
Pod = dict[str, Any]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """The pod cannot start yet (a missing Secret, say): reported as CreateContainerConfigError."""


@dataclass
class ContainerRun:
    """One container of one pod: its current process (if any) and its history."""

    name: str
    prefix: Path
    restart_count: int = 0
    started_at: str | None = None
    shim_pid: int | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    last_terminated: dict[str, Any] | None = None
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    next_start: float = 0.0

    @property
    def pid(self) -> int | None:
        return read_pid(self.prefix.with_suffix(".pid"))

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.exit_code is None

    def poll(self) -> bool:
        """Pick up the exit code the shim recorded; True when the container just ended."""
        if not self.running:
            return False
        exit_file = self.prefix.with_suffix(".exit")
        if exit_file.exists():
            code, _, finished = exit_file.read_text().strip().partition(" ")
            self.exit_code, self.finished_at = int(code), finished or now_iso()
            return True
        if self.shim_pid is not None and not pid_alive(self.shim_pid):
            # The shim died without a record (killed with its process group): the container is gone.
            self.exit_code, self.finished_at = 137, now_iso()
            return True
        return False

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "restart_count": self.restart_count,
            "started_at": self.started_at,
            "shim_pid": self.shim_pid,
            "exit_code": self.exit_code,
            "finished_at": self.finished_at,
            "last_terminated": self.last_terminated,
        }


@dataclass
class LocalPod:
    uid: str
    namespace: str
    name: str
    record_dir: Path
    containers: list[ContainerRun] = field(default_factory=list)
    start_time: str = field(default_factory=now_iso)
    kill_deadline: float | None = None
    last_status: dict[str, Any] | None = None

    def save(self) -> None:
        record = {
            "uid": self.uid,
            "start_time": self.start_time,
            "containers": [c.to_record() for c in self.containers],
        }
        tmp = self.record_dir / "state.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.record_dir / "state.json")


class NodeRunner:
    def __init__(self, state_dir: Path, kubeconfig: Path, node_name: str = NODE_NAME) -> None:
        self.state_dir = state_dir
        self.node_dir = state_dir / "node"
        self.node_name = node_name
        self.api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.server = self.api_client.configuration.host
        self.ca_file = self.api_client.configuration.ssl_ca_cert
        self.pods: dict[str, Pod] = {}
        self.local: dict[str, LocalPod] = {}
        self.events: queue.Queue[tuple[str, Pod]] = queue.Queue()
        self.stopping = threading.Event()

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self.register_node()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        next_heartbeat = time.monotonic() + NODE_HEARTBEAT
        while not self.stopping.is_set():
            self.drain_events()
            for uid in list(self.pods):
                try:
                    self.sync_pod(self.pods[uid])
                except ApiException as error:
                    if error.status != 404:
                        log.warning("syncing pod %s: %s %s", uid, error.status, error.reason)
                except Exception:
                    log.exception("syncing pod %s", uid)
            self.forget_vanished_pods()
            if time.monotonic() > next_heartbeat:
                self.register_node()
                next_heartbeat = time.monotonic() + NODE_HEARTBEAT
            time.sleep(TICK)

    def drain_events(self) -> None:
        while True:
            try:
                kind, pod = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "RELIST":
                self.pods = {p["metadata"]["uid"]: p for p in pod["items"]}
                continue
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod

    def watch_pods(self) -> None:
        resource_version: str | None = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listing = json.loads(
                        self.core.list_pod_for_all_namespaces(
                            _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                        ).data
                    )
                    resource_version = listing["metadata"]["resourceVersion"]
                    self.events.put(("RELIST", listing))
                watcher = kubernetes.watch.Watch()
                for event in watcher.stream(
                    self.core.list_pod_for_all_namespaces,
                    deserialize=False,
                    resource_version=resource_version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        resource_version = None
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.events.put((event["type"], obj))
            except Exception as error:
                log.warning("pod watch interrupted (%s); relisting", error)
                resource_version = None
                time.sleep(1)

    # ---- node ----------------------------------------------------------------------------------
    def register_node(self) -> None:
        now = now_iso()
        conditions = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "PosegenNodeRunnerReady",
                "message": "local node runner is running",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ]
        status = {
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "capacity": {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "1000"},
            "allocatable": {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "1000"},
            "nodeInfo": {
                "kubeletVersion": "posegen-node-runner",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "posegen-shim://1",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        try:
            self.core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": self.node_name,
                        "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"},
                    },
                },
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != 409:
                raise
        self.core.patch_node_status(self.node_name, {"status": status}, _request_timeout=REQUEST_TIMEOUT)

    # ---- pods ----------------------------------------------------------------------------------
    def sync_pod(self, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                self.bind(pod)
            return
        if node != self.node_name:
            return
        if meta.get("deletionTimestamp"):
            local = self.local.get(meta["uid"]) or self.adopt(pod)
            if local is None:
                self.remove(pod)  # no process of ours is left to stop
            else:
                self.terminate(pod, local)
            return
        local = self.local.get(meta["uid"]) or self.adopt(pod) or self.create_local(pod)
        if local is None:
            return
        self.advance(pod, local)
        self.report(pod, local)

    def bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.core.create_namespaced_pod_binding(
                meta["name"],
                meta["namespace"],
                body,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise
        # Act on the binding now rather than when the watch echoes it.
        pod["spec"]["nodeName"] = self.node_name

    def record_dir(self, pod: Pod) -> Path:
        meta = pod["metadata"]
        return self.node_dir / str(meta["namespace"]) / f".{meta['name']}.{meta['uid']}"

    def adopt(self, pod: Pod) -> LocalPod | None:
        """Take over a pod an earlier runner started, from its records on disk."""
        meta = pod["metadata"]
        record_dir = self.record_dir(pod)
        state_file = record_dir / "state.json"
        if not state_file.exists():
            return None
        record = json.loads(state_file.read_text())
        local = LocalPod(meta["uid"], meta["namespace"], meta["name"], record_dir, start_time=record["start_time"])
        local.containers = [
            ContainerRun(prefix=record_dir / c["name"], waiting_reason=None, **c) for c in record["containers"]
        ]
        log.info("adopted pod %s/%s from an earlier runner", local.namespace, local.name)
        self.local[local.uid] = local
        return local

    def create_local(self, pod: Pod) -> LocalPod | None:
        meta = pod["metadata"]
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return None  # finished before this runner started; nothing left to run
        if phase == "Running":
            # Ran under a runner whose records are gone: report it lost, never rerun it.
            self.core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {
                    "status": {
                        "phase": "Failed",
                        "reason": "NodeLost",
                        "message": "the node runner has no record of this pod's processes",
                    }
                },
                _request_timeout=REQUEST_TIMEOUT,
            )
            return None
        record_dir = self.record_dir(pod)
        record_dir.mkdir(parents=True, exist_ok=True)
        local = LocalPod(meta["uid"], meta["namespace"], meta["name"], record_dir)
        local.containers = [ContainerRun(c["name"], record_dir / c["name"]) for c in pod["spec"]["containers"]]
        local.save()
        self.local[local.uid] = local
        return local

    def advance(self, pod: Pod, local: LocalPod) -> None:
        """Start what should run, collect exits, restart per restartPolicy."""
        policy = pod["spec"].get("restartPolicy", "Always")
        changed = False
        for run, container in zip(local.containers, pod["spec"]["containers"], strict=True):
            if run.poll():
                changed = True
                log.info("pod %s/%s container %s exited %s", local.namespace, local.name, run.name, run.exit_code)
            restart = policy == "Always" or (policy == "OnFailure" and run.exit_code not in (0, None))
            if run.exit_code is not None and restart:
                run.last_terminated = self.terminated_state(run)
                run.restart_count += 1
                run.next_start = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** (run.restart_count - 1))
                run.started_at, run.exit_code, run.finished_at = None, None, None
                run.waiting_reason, changed = "CrashLoopBackOff", True
            if run.started_at is None and time.monotonic() >= run.next_start:
                try:
                    self.start_container(pod, container, local, run)
                except ConfigError as error:
                    run.waiting_reason, run.waiting_message = "CreateContainerConfigError", str(error)
                changed = True
        if changed:
            local.save()
            self.write_pid_file(local)

    def start_container(self, pod: Pod, container: dict[str, Any], local: LocalPod, run: ContainerRun) -> None:
        env = self.container_env(pod, container, local)
        argv = [expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]
        if not container.get("command"):
            raise ConfigError("the node runner has no images: the container needs an explicit command")
        if argv[0] in PY_COMMANDS:
            argv[0] = sys.executable
        for stale in (run.prefix.with_suffix(".pid"), run.prefix.with_suffix(".exit")):
            stale.unlink(missing_ok=True)
        log_file = self.node_dir / local.namespace / f"{local.name}.log"
        workdir = container.get("workingDir")
        shim = subprocess.Popen(
            ["bash", str(SHIM), str(run.prefix), str(log_file), "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=workdir if workdir and Path(workdir).is_dir() else local.record_dir,
            start_new_session=True,
        )
        run.shim_pid, run.started_at = shim.pid, now_iso()
        run.waiting_reason = run.waiting_message = None
        deadline = time.monotonic() + 5
        while run.pid is None and time.monotonic() < deadline:
            time.sleep(0.005)
        log.info("pod %s/%s container %s started, pid %s", local.namespace, local.name, run.name, run.pid)

    def write_pid_file(self, local: LocalPod) -> None:
        pids = [str(run.pid) for run in local.containers if run.running and run.pid]
        pid_file = self.node_dir / local.namespace / f"{local.name}.pid"
        if pids:
            tmp = pid_file.with_suffix(".pid.tmp")
            tmp.write_text("\n".join(pids) + "\n")
            tmp.replace(pid_file)
        else:
            pid_file.unlink(missing_ok=True)

    def terminate(self, pod: Pod, local: LocalPod) -> None:
        """Deletion: SIGTERM, wait out the grace period, SIGKILL, then remove the pod for good."""
        meta = pod["metadata"]
        for run in local.containers:
            run.poll()
        running = [run for run in local.containers if run.running]
        if running and local.kill_deadline is None:
            grace = meta.get("deletionGracePeriodSeconds")
            grace = 30 if grace is None else int(grace)
            local.kill_deadline = time.monotonic() + grace
            log.info("pod %s/%s deleted: SIGTERM, grace %ss", local.namespace, local.name, grace)
            for run in running:
                signal_pid(run.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        elif running and local.kill_deadline is not None and time.monotonic() >= local.kill_deadline:
            log.info("pod %s/%s grace period over: SIGKILL", local.namespace, local.name)
            for run in running:
                signal_pid(run.pid, signal.SIGKILL)
            local.kill_deadline = time.monotonic() + 5
        if running:
            return
        self.remove(pod)
        self.cleanup(local)

    def remove(self, pod: Pod) -> None:
        """The kubelet's last word on a deleted pod: its processes are gone, delete it for good."""
        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def forget_vanished_pods(self) -> None:
        """A pod object gone from the API (force-deleted, say) leaves no process behind."""
        for uid in [uid for uid in self.local if uid not in self.pods]:
            local = self.local[uid]
            for run in local.containers:
                if run.running and not run.poll():
                    signal_pid(run.pid, signal.SIGKILL)
            self.cleanup(local)

    def cleanup(self, local: LocalPod) -> None:
        self.local.pop(local.uid, None)
        (self.node_dir / local.namespace / f"{local.name}.pid").unlink(missing_ok=True)
        shutil.rmtree(local.record_dir, ignore_errors=True)

    # ---- status --------------------------------------------------------------------------------
    def report(self, pod: Pod, local: LocalPod) -> None:
        status = self.pod_status(pod, local)
        if status == local.last_status:
            return
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _request_timeout=REQUEST_TIMEOUT
        )
        local.last_status = status

    def pod_status(self, pod: Pod, local: LocalPod) -> dict[str, Any]:
        policy = pod["spec"].get("restartPolicy", "Always")
        statuses = [
            self.container_status(run, container)
            for run, container in zip(local.containers, pod["spec"]["containers"], strict=True)
        ]
        done = [run.exit_code for run in local.containers if run.exit_code is not None]
        all_done = len(done) == len(local.containers)
        if all_done and policy == "Never":
            phase = "Succeeded" if all(code == 0 for code in done) else "Failed"
        elif all_done and policy == "OnFailure" and all(code == 0 for code in done):
            phase = "Succeeded"
        elif any(run.started_at for run in local.containers) or any(run.restart_count for run in local.containers):
            phase = "Running"
        else:
            phase = "Pending"
        ready = phase == "Running" and all(run.running for run in local.containers)
        now = now_iso()
        previous = {c["type"]: c for c in (local.last_status or {}).get("conditions", [])}

        def condition(kind: str, value: bool) -> dict[str, Any]:
            text = "True" if value else "False"
            old = previous.get(kind)
            since = old["lastTransitionTime"] if old and old["status"] == text else now
            return {"type": kind, "status": text, "lastTransitionTime": since, "lastProbeTime": None}

        return {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": local.start_time,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", True),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": statuses,
        }

    def container_status(self, run: ContainerRun, container: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {"running": None, "waiting": None, "terminated": None}
        if run.exit_code is not None:
            state["terminated"] = self.terminated_state(run)
        elif run.started_at is not None:
            state["running"] = {"startedAt": run.started_at}
        else:
            state["waiting"] = {
                "reason": run.waiting_reason or "ContainerCreating",
                "message": run.waiting_message,
            }
        return {
            "name": run.name,
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"posegen-shim://{run.pid}" if run.pid else None,
            "ready": run.running,
            "started": run.running,
            "restartCount": run.restart_count,
            "state": state,
            "lastState": {"terminated": run.last_terminated} if run.last_terminated else {},
        }

    @staticmethod
    def terminated_state(run: ContainerRun) -> dict[str, Any]:
        return {
            "exitCode": run.exit_code,
            "reason": "Completed" if run.exit_code == 0 else "Error",
            "startedAt": run.started_at,
            "finishedAt": run.finished_at,
            "containerID": f"posegen-shim://{run.pid}" if run.pid else None,
        }

    # ---- environment ---------------------------------------------------------------------------
    def container_env(self, pod: Pod, container: dict[str, Any], local: LocalPod) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        env: dict[str, str] = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(local.record_dir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": meta["name"],
        }
        if spec.get("automountServiceAccountToken", True):
            env["KUBECONFIG"] = str(self.service_account_kubeconfig(pod, local))
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self.lookup("configmap", namespace, ref["name"], ref.get("optional", False))
            else:
                ref = source["secretRef"]
                data = self.lookup("secret", namespace, ref["name"], ref.get("optional", False))
            env.update({prefix + key: value for key, value in data.items()})
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            value = self.env_value(pod, var["valueFrom"])
            if value is not None:
                env[var["name"]] = value
        return env

    def env_value(self, pod: Pod, source: dict[str, Any]) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                data = self.lookup(kind, namespace, ref["name"], ref.get("optional", False))
                if ref["key"] not in data and not ref.get("optional", False):
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
                return data.get(ref["key"])
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"])
        return None

    def lookup(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        try:
            if kind == "secret":
                secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
                return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            configmap = self.core.read_namespaced_config_map(name, namespace, _request_timeout=REQUEST_TIMEOUT)
            return dict(configmap.data or {})
        except ApiException as error:
            if error.status == 404:
                if optional:
                    return {}
                raise ConfigError(f"{kind} {namespace}/{name} not found") from error
            raise

    def service_account_kubeconfig(self, pod: Pod, local: LocalPod) -> Path:
        """What the kubelet's projected token volume gives a pod, as a kubeconfig: the pod acts
        with its own ServiceAccount's identity, so RBAC is really enforced."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        token = self.core.create_namespaced_service_account_token(
            account, meta["namespace"], request, _request_timeout=REQUEST_TIMEOUT
        ).status.token
        path = local.record_dir / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "pod",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {"server": self.server, "certificate-authority": self.ca_file},
                        }
                    ],
                    "users": [{"name": account, "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "pod",
                            "context": {"cluster": "local", "user": account, "namespace": meta["namespace"]},
                        }
                    ],
                }
            )
        )
        path.chmod(0o600)
        return path


def field_value(pod: Pod, path: str) -> str:
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path}")
    return str(simple[path])


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; $$(VAR) escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def signal_pid(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the local node")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = NodeRunner(args.state_dir, args.kubeconfig or args.state_dir / "kubeconfig")
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    runner.run()
