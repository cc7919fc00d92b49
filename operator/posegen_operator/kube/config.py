"""Where the API server is and how the operator proves who it is: in a pod, its service account;
elsewhere, the current context of $KUBECONFIG (or ~/.kube/config).

The same sources, in the same order, as the ``kubernetes`` client's ``load_incluster_config`` and
``load_kube_config`` for the credentials a cluster hands an operator (a token, a token file, a client
certificate). Plug-in credentials (``exec``, ``auth-provider``) and the rest are refused by name
rather than half-supported."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH_SECONDS = 60.0  # as client-go: a projected token rotates well before it expires
UNSUPPORTED_USER_FIELDS = ("exec", "auth-provider", "username", "password", "as", "as-groups", "as-uid")
UNSUPPORTED_CLUSTER_FIELDS = ("proxy-url", "tls-server-name")


class KubeConfigError(Exception):
    """No usable configuration: what is missing or unsupported, and where."""


@dataclass(frozen=True)
class KubeConfig:
    """How to reach the API server. PEM data, when a kubeconfig embeds it, is kept decoded."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: str | None = None
    key_path: str | None = None
    key_data: str | None = None
    token: str | None = None
    token_file: str | None = None  # re-read as it rotates
    _token_file: TokenFile | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token and self.token_file:
            raise KubeConfigError("a token or a token file, not both")
        if self.token_file:
            object.__setattr__(self, "_token_file", TokenFile(self.token_file))

    def bearer_token(self) -> str | None:
        """The token to send now: a token file's current content, or the fixed token."""
        return self._token_file.read() if self._token_file else self.token


class TokenFile:
    """A token file, re-read once its last reading is older than ``TOKEN_REFRESH_SECONDS``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._token = ""
        self._read_at: float | None = None

    def read(self) -> str:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= TOKEN_REFRESH_SECONDS:
                self._token = Path(self.path).read_text().strip()
                self._read_at = now
            return self._token


def load_config(environ: Mapping[str, str] = os.environ, service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """In a pod: its service account; elsewhere: $KUBECONFIG (the local stack gives one to each pod)."""
    return in_cluster(environ, service_account_dir) or from_kubeconfig(kubeconfig_paths(environ))


def in_cluster(environ: Mapping[str, str], service_account_dir: Path) -> KubeConfig | None:
    """The pod's service account, or None outside a pod (no service host, port, token or CA)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token, ca = service_account_dir / "token", service_account_dir / "ca.crt"
    if not (host and port and token.is_file() and ca.is_file()):
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return KubeConfig(server=f"https://{host}:{port}", ca_path=str(ca), token_file=str(token))


def kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    listed = environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(path).expanduser() for path in listed.split(os.pathsep) if path]


@dataclass
class _Entry:
    """A named cluster, user or context, and the directory its relative paths are relative to."""

    fields: dict[str, Any]
    base: Path


def from_kubeconfig(paths: list[Path]) -> KubeConfig:
    """The current context of the kubeconfig files, merged as kubectl does: the first file to set a
    value (the current context, a named cluster, user or context) wins; absent files are skipped."""
    current: str | None = None
    sections: dict[str, dict[str, _Entry]] = {"clusters": {}, "users": {}, "contexts": {}}
    found = [path for path in paths if path.is_file()]
    if not found:
        raise KubeConfigError(
            "not in a pod (no KUBERNETES_SERVICE_HOST and service-account token) and no kubeconfig at "
            + os.pathsep.join(map(str, paths))
        )
    for path in found:
        document = yaml.safe_load(path.read_text()) or {}
        current = current or document.get("current-context")
        for section, entries in sections.items():
            singular = section[:-1]
            for item in document.get(section) or []:
                entries.setdefault(item["name"], _Entry(item.get(singular) or {}, path.parent))
    where = os.pathsep.join(map(str, found))
    if not current:
        raise KubeConfigError(f"{where}: no current-context")
    context = _named(sections["contexts"], current, "context", where).fields
    cluster = _named(sections["clusters"], context.get("cluster"), "cluster", where)
    user = _named(sections["users"], context.get("user"), "user", where) if context.get("user") else _Entry({}, Path())
    refused = [name for name in UNSUPPORTED_USER_FIELDS if user.fields.get(name)]
    refused += [name for name in UNSUPPORTED_CLUSTER_FIELDS if cluster.fields.get(name)]
    if refused:
        raise KubeConfigError(
            f"{where}, context {current!r}: {', '.join(refused)} not supported by the operator's client "
            "(it takes a server, its CA, a client certificate and key, a token or a tokenFile)"
        )
    if not cluster.fields.get("server"):
        raise KubeConfigError(f"{where}, context {current!r}: the cluster has no server")
    return KubeConfig(
        server=str(cluster.fields["server"]).rstrip("/"),
        ca_path=_path(cluster, "certificate-authority"),
        ca_data=_pem(cluster, "certificate-authority-data"),
        insecure=bool(cluster.fields.get("insecure-skip-tls-verify")),
        certificate_path=_path(user, "client-certificate"),
        certificate_data=_pem(user, "client-certificate-data"),
        key_path=_path(user, "client-key"),
        key_data=_pem(user, "client-key-data"),
        token=user.fields.get("token") or None,
        token_file=None if user.fields.get("token") else _path(user, "tokenFile"),  # a token wins, as in kubectl
    )


def _named(entries: dict[str, _Entry], name: object, what: str, where: str) -> _Entry:
    if not isinstance(name, str) or name not in entries:
        raise KubeConfigError(f"{where}: no {what} named {name!r}")
    return entries[name]


def _path(entry: _Entry, key: str) -> str | None:
    """A file the entry names, relative to its kubeconfig's directory; None when the entry embeds
    the data instead (``<key>-data`` wins, as in kubectl)."""
    value = entry.fields.get(key)
    if not value or entry.fields.get(f"{key}-data"):
        return None
    return str(entry.base / Path(value).expanduser())


def _pem(entry: _Entry, key: str) -> str | None:
    value = entry.fields.get(key)
    return base64.b64decode(value).decode() if value else None
