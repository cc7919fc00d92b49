"""The process node's records of its pods: each container's process and history, kept on disk so
a restarted runner adopts running pods, and the pod status rendered from them as a kubelet would."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posegen_devstack.processes import pid_alive, read_pid

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


def pod_status(pod: Pod, local: LocalPod) -> dict[str, Any]:
    policy = pod["spec"].get("restartPolicy", "Always")
    statuses = [
        container_status(run, container)
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


def container_status(run: ContainerRun, container: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {"running": None, "waiting": None, "terminated": None}
    if run.exit_code is not None:
        state["terminated"] = terminated_state(run)
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


def terminated_state(run: ContainerRun) -> dict[str, Any]:
    return {
        "exitCode": run.exit_code,
        "reason": "Completed" if run.exit_code == 0 else "Error",
        "startedAt": run.started_at,
        "finishedAt": run.finished_at,
        "containerID": f"posegen-shim://{run.pid}" if run.pid else None,
    }
