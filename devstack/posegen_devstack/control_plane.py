"""The local control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
loopback, the kubeconfigs that reach it, and the CRDs applied to it."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

from posegen_devstack.layout import REPO_ROOT, Layout
from posegen_devstack.processes import http_get, https_get, wait_until

SERVICE_CIDR = "10.0.0.0/24"
# Controllers the stack needs: garbage collection, namespace deletion, service accounts, quotas
# (ResourceQuota admission enforces nothing without the controller), the workload controllers a Helm
# release of the operator uses, and node lifecycle (a lost node goes NotReady, is tainted, and its
# pods are evicted).
CONTROLLERS = (
    "garbage-collector-controller,namespace-controller,serviceaccount-controller,"
    "serviceaccount-token-controller,deployment-controller,replicaset-controller,job-controller,"
    "root-ca-certificate-publisher-controller,endpointslice-controller,ttl-after-finished-controller,"
    "node-lifecycle-controller,taint-eviction-controller,resourcequota-controller"
)
# Seconds without a heartbeat before a node is NotReady (kubelets heartbeat every 10 s).
NODE_MONITOR_GRACE = 20


def write_kubeconfig(layout: Layout, path: Path, user: str, cert: Path, key: Path) -> None:
    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "posegen-local",
                "cluster": {"server": layout.apiserver_url, "certificate-authority-data": b64(layout.pki.ca_cert)},
            }
        ],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [
            {"name": "posegen-local", "context": {"cluster": "posegen-local", "user": user, "namespace": "default"}}
        ],
        "current-context": "posegen-local",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)


def write_admin_kubeconfig(layout: Layout) -> None:
    pki = layout.pki
    write_kubeconfig(layout, layout.kubeconfig, "posegen-admin", pki.admin_cert, pki.admin_key)


def start_etcd(layout: Layout) -> None:
    ports = layout.config.ports
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    layout.start(
        "etcd",
        [
            layout.binary("etcd"),
            "--name=posegen",
            f"--data-dir={layout.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=posegen={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    wait_until(lambda: b'"true"' in http_get(f"{client}/health"), timeout=60, what="etcd", log=layout.log("etcd"))


def start_apiserver(layout: Layout) -> None:
    pki, ports = layout.pki, layout.config.ports
    layout.start(
        "kube-apiserver",
        [
            layout.binary("kube-apiserver"),
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
            f"--cert-dir={layout.state_dir / 'pki' / 'generated'}",
            "--event-ttl=1h",
            # Logs and exec reach the kubelet on 127.0.0.1 with this identity (system:masters).
            f"--kubelet-client-certificate={pki.admin_cert}",
            f"--kubelet-client-key={pki.admin_key}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--v=0",
        ],
    )
    wait_until(lambda: apiserver_ready(layout), timeout=120, what="kube-apiserver", log=layout.log("kube-apiserver"))


def apiserver_ready(layout: Layout) -> bool:
    return https_get(f"{layout.apiserver_url}/readyz", layout.pki) == b"ok"


def start_controller_manager(layout: Layout) -> None:
    pki = layout.pki
    layout.start(
        "kube-controller-manager",
        [
            layout.binary("kube-controller-manager"),
            f"--kubeconfig={layout.kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            f"--controllers={CONTROLLERS}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--concurrent-gc-syncs=5",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE}s",
            "--node-monitor-period=2s",
            "--v=0",
        ],
    )


def start_scheduler(layout: Layout) -> None:
    layout.start(
        "kube-scheduler",
        [
            layout.binary("kube-scheduler"),
            f"--kubeconfig={layout.kubeconfig}",
            f"--authentication-kubeconfig={layout.kubeconfig}",
            f"--authorization-kubeconfig={layout.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=0",
        ],
    )


def kubectl(layout: Layout, *args: str, timeout: float = 60, stdin: str | None = None) -> str:
    result = subprocess.run(
        [layout.binary("kubectl"), f"--kubeconfig={layout.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["kubectl", *args], result.stdout, result.stderr)
    return result.stdout


def apply_crds(layout: Layout) -> None:
    kubectl(layout, "apply", "-f", str(REPO_ROOT / "crds"))
    kubectl(
        layout, "wait", "--for=condition=Established", "crd/posegenerations.posegen.io", "--timeout=60s", timeout=70
    )


def node_ready(layout: Layout, name: str) -> bool:
    jsonpath = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    return kubectl(layout, "get", "node", name, "-o", jsonpath, timeout=10).strip() == "True"
