"""A pod's environment as a kubelet resolves it: values, Secrets, ConfigMaps, the downward API and
the service account's token (as a kubeconfig), for containers the process node runs."""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from posegen_devstack.process_pods import ConfigError, LocalPod, Pod

REQUEST_TIMEOUT = 10


class PodEnvironment:
    def __init__(self, core: kubernetes.client.CoreV1Api, server: str, ca_file: str) -> None:
        self.core = core
        self.server = server
        self.ca_file = ca_file

    def resolve(self, pod: Pod, container: dict[str, Any], local: LocalPod) -> dict[str, str]:
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
