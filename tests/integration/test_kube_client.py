"""The operator's client in a pod's place, against the real API server: the service account's token
and CA from its directory, the service address from the environment, and the API server's refusal
of what that account may not do, with its own message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from posegen_operator.kube import ApiError, KubeClient, load_config, resource_path
from tests.harness import Cluster

pytestmark = pytest.mark.integration
TIMEOUT = (5.0, 15.0)


def test_in_a_pod_the_api_server_sees_the_service_account(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip())
    shutil.copy(cluster.stack.pki.ca_cert, directory / "ca.crt")
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(cluster.stack.config.ports.apiserver),
        "KUBECONFIG": str(cluster.stack.kubeconfig),  # the admin's: must not be the one used
    }
    api = KubeClient(load_config(environ, directory), connections=1)

    review = api.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        timeout=TIMEOUT,
    )
    with pytest.raises(ApiError) as refused:
        api.request("GET", resource_path("v1", "pods", namespace), timeout=TIMEOUT)

    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"
    assert (refused.value.status, refused.value.reason) == (403, "Forbidden")
    assert refused.value.message is not None and 'cannot list resource "pods"' in refused.value.message
