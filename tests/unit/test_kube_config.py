"""Where the operator's client finds the API server: a pod's service account, else the kubeconfig's
current context (embedded data or files relative to the kubeconfig, a token or a token file), and a
clear refusal of credentials it does not take."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from posegen_operator.kube import KubeConfigError, load_config
from posegen_operator.kube.config import from_kubeconfig, in_cluster

CA = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nclient\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubeconfig(
    path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None, current: str | None = "here"
) -> Path:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster or {"server": "https://127.0.0.1:6443/"}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [
            {"name": "elsewhere", "context": {"cluster": "nowhere", "user": "nobody"}},
            {"name": "here", "context": {"cluster": "local", "user": "me", "namespace": "team"}},
        ],
    }
    if current:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


def test_embedded_certificates_are_decoded(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)},
        {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64(CA)},
    )

    config = from_kubeconfig([path])

    assert config.server == "https://127.0.0.1:6443"
    assert (config.ca_data, config.certificate_data, config.key_data) == (CA, CERT, KEY)
    assert (config.ca_path, config.certificate_path, config.key_path) == (None, None, None)
    assert config.bearer_token() is None


def test_files_are_relative_to_the_kubeconfig_and_embedded_data_wins(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = kubeconfig(
        tmp_path / "conf" / "config",
        {"client-certificate": "pki/client.crt", "client-key": "/etc/absolute.key"},
        {
            "server": "https://127.0.0.1:6443",
            "certificate-authority": "pki/ca.crt",
            "certificate-authority-data": b64(CA),
        },
    )

    config = from_kubeconfig([path])

    assert config.certificate_path == str(tmp_path / "conf" / "pki" / "client.crt")
    assert config.key_path == "/etc/absolute.key"
    assert (config.ca_path, config.ca_data) == (None, CA)


def test_a_token_wins_over_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")

    assert from_kubeconfig([kubeconfig(tmp_path / "a", {"token": "fixed", "tokenFile": "token"})]).bearer_token() == (
        "fixed"
    )
    assert from_kubeconfig([kubeconfig(tmp_path / "b", {"tokenFile": "token"})]).bearer_token() == "from-file"


def test_a_token_file_is_reread_once_its_reading_is_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    config = from_kubeconfig([kubeconfig(tmp_path / "config", {"tokenFile": str(token)})])
    assert config.bearer_token() == "first"

    token.write_text("rotated")
    assert config.bearer_token() == "first", "read once a minute, not for every request"
    monkeypatch.setattr("posegen_operator.kube.config.TOKEN_REFRESH_SECONDS", 0.0)
    assert config.bearer_token() == "rotated"


def test_files_in_kubeconfig_are_merged_the_first_to_name_a_thing_wins(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_text(yaml.safe_dump({"current-context": "here", "users": [{"name": "me", "user": {"token": "a"}}]}))
    second = kubeconfig(tmp_path / "second", {"token": "b"}, current="elsewhere")

    config = load_config({"KUBECONFIG": f"{tmp_path / 'absent'}:{first}:{second}"}, tmp_path / "no-service-account")

    assert config.server == "https://127.0.0.1:6443"
    assert config.bearer_token() == "a"


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}, "exec"),
        ({"auth-provider": {"name": "oidc", "config": {}}}, "auth-provider"),
        ({"username": "admin", "password": "secret"}, "username, password"),
    ],
)
def test_plugin_and_password_users_are_refused_by_name(tmp_path: Path, user: dict[str, Any], named: str) -> None:
    with pytest.raises(KubeConfigError, match=f"context 'here': {named} not supported"):
        from_kubeconfig([kubeconfig(tmp_path / "config", user)])


def test_a_missing_kubeconfig_or_context_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"not in a pod .* no kubeconfig at"):
        load_config({"KUBECONFIG": str(tmp_path / "absent")}, tmp_path)
    with pytest.raises(KubeConfigError, match="no current-context"):
        from_kubeconfig([kubeconfig(tmp_path / "a", {"token": "t"}, current=None)])
    with pytest.raises(KubeConfigError, match="no cluster named 'nowhere'"):
        from_kubeconfig([kubeconfig(tmp_path / "b", {"token": "t"}, current="elsewhere")])


def service_account(directory: Path, token: str = "sa-token") -> Path:
    directory.mkdir()
    (directory / "token").write_text(token + "\n")
    (directory / "ca.crt").write_text(CA)
    return directory


def test_in_a_pod_the_service_account_and_service_address_are_used(tmp_path: Path) -> None:
    directory = service_account(tmp_path / "sa")
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443", "KUBECONFIG": "/absent"}

    config = load_config(environ, directory)

    assert config.server == "https://127.0.0.1:6443"
    assert config.ca_path == str(directory / "ca.crt")
    assert config.bearer_token() == "sa-token"
    ipv6 = in_cluster({**environ, "KUBERNETES_SERVICE_HOST": "fd00::1"}, directory)
    assert ipv6 is not None and ipv6.server == "https://[fd00::1]:6443"


def test_without_a_service_account_token_the_kubeconfig_is_used(tmp_path: Path) -> None:
    directory = service_account(tmp_path / "sa")
    (directory / "token").unlink()
    path = kubeconfig(tmp_path / "config", {"token": "from-kubeconfig"})
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443", "KUBECONFIG": str(path)}

    assert load_config(environ, directory).bearer_token() == "from-kubeconfig"
    assert in_cluster({"KUBERNETES_SERVICE_PORT": "6443"}, service_account(tmp_path / "sa2")) is None
