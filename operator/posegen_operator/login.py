"""How kopf reaches the API server: with the configuration our own client uses (kube/config.py).

kopf would otherwise log in through the ``kubernetes`` client, which the operator does not load,
or through its rudimentary fallbacks, which take the service account's server to be
``kubernetes.default.svc`` rather than $KUBERNETES_SERVICE_HOST (the local stack's chart sets
127.0.0.1: there is no cluster DNS). kopf calls this again on a 401, so a rotated token is read anew."""

from __future__ import annotations

from typing import Any

import kopf

from posegen_operator.kube import load_config


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    config = load_config()
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_path,
        ca_data=config.ca_data,
        insecure=config.insecure,
        certificate_path=config.certificate_path,
        certificate_data=config.certificate_data,
        private_key_path=config.key_path,
        private_key_data=config.key_data,
        token=config.bearer_token(),
    )
