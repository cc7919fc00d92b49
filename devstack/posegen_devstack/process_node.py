"""The process node: the local stand-in for a kubelet where no containers can run, and the node for
benchmarks at hundreds of pods.

It registers one Node and runs the containers of the pods kube-scheduler binds to it as local
processes (the image is ignored; ``python`` means this virtualenv's interpreter) with the pod's
environment resolved from values, Secrets, ConfigMaps and the downward API. It reports pod phase
and container states with real exit codes, applies ``restartPolicy``, and honours deletion:
SIGTERM, the grace period, then SIGKILL, then the final delete. Like a kubelet it rides out an
API server that goes away: every call is retried on the next tick or heartbeat.

Every container runs under ``shim.sh``, which records the PID and, later, the exit code on disk.
So when the runner itself restarts, running pod processes are *adopted*, not killed: the new
runner reads the records and carries on reporting, exit codes included.

Files, under ``<state>/node/<namespace>/``: ``<pod>.pid`` (container PIDs, one a line, first
container first) and ``<pod>.log`` (all output), so a person can ``kill -9 $(cat …/<pod>.pid)``;
runner records in ``.<pod>.<uid>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from posegen_devstack.pod_env import PodEnvironment, expand
from posegen_devstack.process_pods import (
    ConfigError,
    ContainerRun,
    LocalPod,
    Pod,
    now_iso,
    pod_status,
    terminated_state,
)

log = logging.getLogger("node")

NODE_NAME = "posegen-local"
# With a kubelet node beside it, only pods that tolerate this taint land here (the local operator's
# workers, which need no image).
TAINT = {"key": "posegen.io/process-node", "value": "true", "effect": "NoSchedule"}
SHIM = Path(__file__).with_name("shim.sh")
REQUEST_TIMEOUT = 10
TICK = 0.1
# As often as a kubelet's node status updates: well inside the node-lifecycle grace period.
NODE_HEARTBEAT = 5.0
MAX_BACKOFF = 10.0
PY_COMMANDS = {"python", "python3"}


class NodeRunner:
    def __init__(self, state_dir: Path, kubeconfig: Path, node_name: str = NODE_NAME, *, tainted: bool = False) -> None:
        self.state_dir = state_dir
        self.node_dir = state_dir / "node"
        self.node_name = node_name
        self.tainted = tainted
        self.api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        configuration = self.api_client.configuration
        self.environment = PodEnvironment(self.core, configuration.host, configuration.ssl_ca_cert)
        self.pods: dict[str, Pod] = {}
        self.local: dict[str, LocalPod] = {}
        self.events: queue.Queue[tuple[str, Pod]] = queue.Queue()
        self.stopping = threading.Event()

    # ---- main loop -----------------------------------------------------------------------------
    def run(self) -> None:
        while not self.heartbeat() and not self.stopping.wait(1):
            pass
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
                self.heartbeat()
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

    @property
    def field_selector(self) -> str:
        """Like a kubelet, the runner sees only the pods kube-scheduler bound to its node."""
        return f"spec.nodeName={self.node_name}"

    def watch_pods(self) -> None:
        resource_version: str | None = None
        while not self.stopping.is_set():
            try:
                if resource_version is None:
                    listing = json.loads(
                        self.core.list_pod_for_all_namespaces(
                            field_selector=self.field_selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                        ).data
                    )
                    resource_version = listing["metadata"]["resourceVersion"]
                    self.events.put(("RELIST", listing))
                watcher = kubernetes.watch.Watch()
                for event in watcher.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=self.field_selector,
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
    def heartbeat(self) -> bool:
        """Register the node (once) and report it Ready; an API server that is away is no reason to
        stop: False, and the next heartbeat tries again."""
        try:
            self.register_node()
        except Exception as error:
            log.warning("node heartbeat failed (%s); retrying", error)
            return False
        return True

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
        # Processes are not confined by requests: room enough that kube-scheduler never holds back a
        # worker for resources this machine does not actually reserve.
        room = {"cpu": "1000", "memory": "1Ti", "ephemeral-storage": "1Ti", "pods": "5000"}
        status = {
            "conditions": conditions,
            # No Hostname address: the API server would resolve it by DNS.
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "capacity": room,
            "allocatable": room,
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
        taints = [TAINT] if self.tainted else []
        try:
            self.core.create_node(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": self.node_name,
                        "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"},
                    },
                    "spec": {"taints": taints},
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
        if spec.get("nodeName") != self.node_name:
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
                run.last_terminated = terminated_state(run)
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
        env = self.environment.resolve(pod, container, local)
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

    def report(self, pod: Pod, local: LocalPod) -> None:
        status = pod_status(pod, local)
        if status == local.last_status:
            return
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _request_timeout=REQUEST_TIMEOUT
        )
        local.last_status = status


def signal_pid(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the local node")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--tainted", action="store_true", help="only pods that tolerate the process-node taint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = NodeRunner(args.state_dir, args.kubeconfig or args.state_dir / "kubeconfig", tainted=args.tainted)
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    runner.run()
