"""Pure builders of the objects the operator creates: worker pods and Events, as plain dicts."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast

import kopf

from posegen_common.worker_credentials import WorkerCredentials
from posegen_operator.model import worker_pod_name
from posegen_operator.settings import Settings

GROUP = "posegen.io"
VERSION = "v1"
PLURAL = "posegenerations"
KIND = "PoseGeneration"
FINALIZER = "posegen.io/cancel-worker"
RECOVER_ANNOTATION = "posegen.io/recover"
MANAGED_BY = "posegen-operator"
LABEL_GENERATION = "posegen.io/generation"
LABEL_ATTEMPT = "posegen.io/attempt"
WORKER_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component=worker"
WORKER_UID = 10001
NODE_LOSS_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def owner_of(namespace: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
    }


def _secret_env(secret: str, var: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def build_worker_pod(
    namespace: str,
    name: str,
    uid: str,
    generation_id: str,
    attempt: int,
    settings: Settings,
    credentials: WorkerCredentials | None = None,
) -> dict[str, Any]:
    """The worker pod of one attempt: owned by its PoseGeneration, restarted only by the operator
    (restartPolicy Never: a new attempt, never a silent in-place restart), least privilege. With
    ``credentials`` (minted for this attempt) the worker connects with those and nothing else."""
    worker = settings.worker
    pod_name = worker_pod_name(name, attempt)
    env: list[dict[str, Any]] = [
        {"name": "POSEGEN_GENERATION_ID", "value": generation_id},
        {"name": "POSEGEN_ATTEMPT", "value": str(attempt)},
        {"name": "POSEGEN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POSEGEN_OUTPUT_DIR", "value": worker.output_mount_path},
        {"name": "POSEGEN_GENERATOR", "value": worker.generator},
        {"name": "POSEGEN_POSE_SECONDS", "value": str(worker.pose_seconds)},
        {"name": "POSEGEN_HEARTBEAT_TTL_SECONDS", "value": str(settings.heartbeat_ttl)},
        {"name": "POSEGEN_HEARTBEAT_INTERVAL_SECONDS", "value": str(settings.heartbeat_interval)},
        {"name": "POSEGEN_DEPENDENCY_RETRY_SECONDS", "value": str(worker.dependency_retry_seconds)},
        {"name": "POSEGEN_LOG_FORMAT", "value": worker.log_format},
    ]
    if worker.flux_url:
        env += [
            {"name": "FLUX_API_URL", "value": worker.flux_url},
            {"name": "POSEGEN_FLUX_ALLOW_HTTP", "value": str(worker.flux_allow_http).lower()},
            {"name": "POSEGEN_FLUX_ALLOW_PRIVATE_ADDRESSES", "value": str(worker.flux_allow_private_addresses).lower()},
            {"name": "POSEGEN_FLUX_SAMPLE_HOSTS", "value": ",".join(worker.flux_sample_hosts)},
            {"name": "POSEGEN_FLUX_MAX_PIXELS", "value": str(worker.flux_max_pixels)},
        ]

    secret = worker.secret_name
    if credentials is not None:
        # They open this attempt's own checkpoint only: no wider than what the pod's namespace may see.
        env += [
            {"name": "DATABASE_URL", "value": credentials.database_url},
            {"name": "REDIS_URL", "value": credentials.redis_url},
        ]
    elif secret:
        env += [_secret_env(secret, "DATABASE_URL", "database-url"), _secret_env(secret, "REDIS_URL", "redis-url")]
    else:
        env += [
            {"name": "DATABASE_URL", "value": settings.database_url},
            {"name": "REDIS_URL", "value": settings.redis_url},
        ]
    if secret:
        env.append(_secret_env(secret, "FLUX_API_KEY", "flux-api-key", optional=True))
    elif settings.flux_api_key:
        env.append({"name": "FLUX_API_KEY", "value": settings.flux_api_key})
    env += worker.extra_env
    if worker.output_claim:
        volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": worker.output_claim}}
    elif worker.output_host_path:
        volume = {"hostPath": {"path": worker.output_host_path, "type": "DirectoryOrCreate"}}
    else:
        volume = {"emptyDir": {}}
    container: dict[str, Any] = {
        "name": "worker",
        "image": worker.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(worker.command),
        "env": env,
        "volumeMounts": [{"name": "outputs", "mountPath": worker.output_mount_path}],
        # The worker writes why it stopped there (disk full, output not writable, ...); the pod's
        # status then carries it, or the log's tail when the worker died without a word.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if worker.resources:
        container["resources"] = worker.resources
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": worker.grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "outputs", **volume}],
    }
    if worker.service_account:
        spec["serviceAccountName"] = worker.service_account
    if worker.node_selector:
        spec["nodeSelector"] = worker.node_selector
    spec["tolerations"] = [*worker.tolerations, *node_loss_tolerations(worker.node_loss_seconds)]
    if worker.host_network:
        spec["hostNetwork"] = True
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "labels": {
                "app.kubernetes.io/name": "posegen-worker",
                "app.kubernetes.io/component": "worker",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/instance": name,
                LABEL_GENERATION: name,
                LABEL_ATTEMPT: str(attempt),
            },
            "annotations": {"posegen.io/generation-id": generation_id},
        },
        "spec": spec,
    }
    kopf.adopt(pod, owner=kopf.Body(cast(kopf.RawBody, owner_of(namespace, name, uid))))
    return pod


def node_loss_tolerations(seconds: int) -> list[dict[str, Any]]:
    return [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        for key in NODE_LOSS_TAINTS
    ]


def build_event(
    namespace: str, name: str, uid: str, event_type: str, reason: str, message: str, *, instance: str, now: dt.datetime
) -> dict[str, Any]:
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGED_BY},
        "reportingComponent": f"{GROUP}/{MANAGED_BY}",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
