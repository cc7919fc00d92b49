"""The seed's HTTP API on the real operator: paths, JSON fields, bearer token, 4xx with reasons."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes
import pytest

from posegen_devstack.processes import free_port
from tests.harness import (
    SEED_API,
    Cluster,
    get_generation,
    seed_api,
    seed_generate,
    sql,
    unique_name,
    wait_for_phase,
)

pytestmark = pytest.mark.integration


def test_health_has_the_seed_shape(cluster: Cluster) -> None:
    response = seed_api(cluster, "GET", "/health", token=None)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"]["database"] == {"status": "connected"}
    assert body["checks"]["redis"] == {"status": "connected"}
    assert body["checks"]["queue"]["status"] == "operational"
    assert set(body["checks"]["queue"]["counts"]) == {"waiting", "active", "failed"}


def test_health_is_cached_and_checked_on_a_pool_of_its_own(cluster: Cluster) -> None:
    """A flood of probes costs at most one check per second or two, on one connection that is not
    the controller's: the probe cannot starve the controller."""
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: seed_api(cluster, "GET", "/health", token=None), range(80)))
    elapsed = time.monotonic() - started
    assert all(answer.status_code == 200 for answer in answers)
    checks = {answer.headers["X-Checked-At"] for answer in answers}
    assert len(checks) <= 2 + elapsed, f"{len(checks)} checks for 80 probes in {elapsed:.1f}s"
    connections = sql(
        cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'posegen-operator-health'"
        " AND datname = current_database()",
    )
    assert connections == [(1,)]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/recovery/status"), ("POST", "/recovery/trigger"), ("POST", "/generate")]
)
@pytest.mark.parametrize("token", [None, "wrong-token", "Bearer"])
def test_admin_endpoints_refuse_without_the_token(cluster: Cluster, method: str, path: str, token: str | None) -> None:
    response = seed_api(cluster, method, path, token=token, json={"projectId": "x"})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert cluster.stack.config.admin_token not in response.text


def test_recovery_status_and_trigger_answer_with_the_seed_fields(cluster: Cluster) -> None:
    status = seed_api(cluster, "GET", "/recovery/status")
    assert status.status_code == 200
    assert set(status.json()) == {"stalledGenerations", "queuedGenerations", "processingGenerations", "lastRecoveryRun"}
    assert all(
        isinstance(status.json()[k], int) for k in ("stalledGenerations", "queuedGenerations", "processingGenerations")
    )
    trigger = seed_api(cluster, "POST", "/recovery/trigger")
    assert trigger.status_code == 200
    assert trigger.json() == {"success": True, "recovered": 0, "failed": 0}
    after = seed_api(cluster, "GET", "/recovery/status").json()
    assert after["lastRecoveryRun"] is not None and after["lastRecoveryRun"].endswith("Z")


def test_generate_creates_a_posegeneration_that_completes(cluster: Cluster, namespace: str) -> None:
    response = seed_generate(cluster, namespace, 5)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["namespace"] == namespace
    resource = get_generation(cluster, namespace, body["name"])
    assert resource["metadata"]["uid"] == body["generationId"]
    assert wait_for_phase(cluster, namespace, body["name"], "Completed")["generationId"] == body["generationId"]


def test_generate_creates_only_in_allowed_namespaces_with_generated_names(cluster: Cluster, namespace: str) -> None:
    body = {"projectId": "p", "generationType": "TEXT_DESCRIPTION", "textPrompt": "x"}
    refused = seed_api(cluster, "POST", "/generate", json={**body, "namespace": "kube-system"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "namespace 'kube-system' is not open to /generate"
    named = seed_api(cluster, "POST", "/generate", json={**body, "namespace": namespace, "name": "chosen"})
    assert named.status_code == 400 and named.json()["error"] == "unknown fields: name"
    created = seed_api(cluster, "POST", "/generate", json={**body, "namespace": namespace})
    assert created.status_code == 201 and created.json()["name"].startswith("gen-")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not json", "the body must be a JSON object"),
        ([1, 2], "the body must be a JSON object"),
        (
            {"projectId": "p", "generationType": "TEXT_DESCRIPTION", "textPrompt": "x", "colour": "red"},
            "unknown fields: colour",
        ),
        ({"generationType": "TEXT_DESCRIPTION", "textPrompt": "x"}, "projectId"),
        ({"projectId": "p", "generationType": "TEXT_DESCRIPTION"}, "textPrompt is required"),
        (
            {"projectId": "p", "generationType": "TEXT_DESCRIPTION", "textPrompt": "x", "variationCount": 0},
            "variationCount",
        ),
    ],
)
def test_generate_refuses_bad_bodies_with_the_reason(
    cluster: Cluster, namespace: str, payload: Any, reason: str
) -> None:
    if isinstance(payload, str):
        response = seed_api(cluster, "POST", "/generate", data=payload)
    else:
        if isinstance(payload, dict):
            payload = {**payload, "namespace": namespace}
        response = seed_api(cluster, "POST", "/generate", json=payload)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request as an active replica would, and remembers its headers."""

    received: list[dict[str, str]]

    def do_POST(self) -> None:
        type(self).received.append(dict(self.headers.items()))
        body = b'{"success": true, "recovered": 0, "failed": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``received``."""


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP listener on loopback: where a forged Lease annotation would send the trigger."""
    received: list[dict[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_a_standby_never_sends_the_token_to_an_address_from_the_lease(
    cluster: Cluster, listener: tuple[str, list[dict[str, str]]]
) -> None:
    """Whoever can write the Lease must not learn the admin token: the standby answers 503 with
    Retry-After and the holder's identity, and sends nothing to the forged address."""
    url, received = listener
    lease_name = unique_name("forged")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubernetes.client.CoordinationV1Api(cluster.api).create_namespaced_lease(
        "default",
        {
            "metadata": {"name": lease_name, "annotations": {"posegen.io/api-url": url}},
            "spec": {"holderIdentity": "forged-holder", "leaseDurationSeconds": 3600, "renewTime": now},
        },
    )
    standby_api = free_port()
    cluster.stack.start_operator(
        "operator-forged",
        POSEGEN_IDENTITY="standby-operator",
        POSEGEN_LEASE_NAME=lease_name,
        POSEGEN_API_PORT=str(standby_api),
        POSEGEN_METRICS_PORT=str(free_port()),
        POSEGEN_PROBE_PORT=str(free_port()),
    )
    try:
        # Several triggers over more than two lease reads (a standby reads the Lease every 2 s).
        for _ in range(12):
            answer = seed_api(cluster, "POST", "/recovery/trigger", base_url=f"http://127.0.0.1:{standby_api}")
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "2"
            assert answer.json()["activeReplica"] == "forged-holder"
            assert answer.json()["success"] is False
            time.sleep(0.5)
        assert received == [], "the standby sent a request to the address in the Lease"
        assert "trigger: manual" not in cluster.stack.log("operator-forged").read_text()
    finally:
        cluster.stack.stop_operator("operator-forged")


# ---- bad input: 4xx with a reason, never 5xx --------------------------------------------------
def raw_post(
    cluster: Cluster, path: str, body: bytes, headers: dict[str, str | bytes], *, token: bool = True
) -> tuple[int, str]:
    """A request as a hostile client sends it: header values as raw bytes, bodies unchecked."""
    host, port = cluster.stack.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", f"{SEED_API}{path}")
        if token:
            connection.putheader("Authorization", f"Bearer {cluster.stack.config.admin_token}")
        for name, value in headers.items():
            connection.putheader(name, value)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


JSON = {"Content-Type": "application/json"}
VALID = b'{"projectId": "p", "generationType": "TEXT_DESCRIPTION", "textPrompt": "x", "namespace": "nowhere"}'


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"[" * 60_000, JSON, 400, "nested too deeply"),
        (b'{"projectId": ' + b"[" * 900 + b"]" * 900 + b"}", JSON, 400, "projectId must be a string"),
        (b'{"projectId": {"a": 1}}', JSON, 400, "projectId must be a string"),
        (b'{"variationCount": NaN}', JSON, 400, "NaN is not a JSON number"),
        (b'{"variationCount": ' + b"9" * 5000 + b"}", JSON, 400, "must be a JSON object"),
        (b'{"textPrompt": "\\ud800"}', JSON, 400, "textPrompt holds text that is not valid Unicode"),
        (b'{"textPrompt": "\xff\xfe"}', JSON, 400, "not valid UTF-8"),
        (VALID, {"Content-Type": "application/json; charset=klingon"}, 415, "charset 'klingon' is not supported"),
        (VALID, {"Content-Type": "application/json; charset=latin-1"}, 415, "send UTF-8"),
        (VALID, {"Content-Type": "text/plain"}, 415, "must be application/json"),
        (VALID, {"Content-Type": "application/x-www-form-urlencoded"}, 415, "must be application/json"),
        (b'{"textPrompt": "' + b"x" * 100_000 + b'"}', JSON, 413, "larger than 65536 bytes"),
        # A Content-Length far beyond the limit is refused before waiting for the body.
        (b"{}", {**JSON, "Content-Length": "99999999999"}, 413, "larger than 65536 bytes"),
    ],
    ids=[
        "deeply-nested",
        "nested-field",
        "object-field",
        "nan",
        "huge-integer",
        "lone-surrogate",
        "not-utf8",
        "unknown-charset",
        "other-charset",
        "text-plain",
        "form",
        "oversized-body",
        "oversized-content-length",
    ],
)
def test_generate_answers_bad_bodies_with_4xx_and_the_reason(
    cluster: Cluster, body: bytes, headers: dict[str, str | bytes], status: int, reason: str
) -> None:
    code, text = raw_post(cluster, "/generate", body, headers)
    assert code == status, text
    assert reason in json.loads(text)["error"]


def test_a_chunked_oversized_body_is_413(cluster: Cluster) -> None:
    chunks = (b"4000\r\n" + b"x" * 0x4000 + b"\r\n") * 8 + b"0\r\n\r\n"
    code, text = raw_post(cluster, "/generate", chunks, {**JSON, "Transfer-Encoding": "chunked"})
    assert code == 413, text
    assert "larger than 65536 bytes" in json.loads(text)["error"]


@pytest.mark.parametrize("path", ["/generate", "/recovery/trigger"])
def test_a_non_utf8_authorization_header_is_401(cluster: Cluster, path: str) -> None:
    code, text = raw_post(cluster, path, b"{}", {**JSON, "Authorization": b"Bearer \xff\xfe\xfd"}, token=False)
    assert code == 401, text
    assert json.loads(text) == {"error": "unauthorized"}


@pytest.mark.parametrize(
    "headers",
    [{"X-Padding": "a" * 20_000}, {f"X-Padding-{i}": "a" for i in range(500)}],
    ids=["oversized-header", "too-many-headers"],
)
def test_oversized_headers_are_400(cluster: Cluster, headers: dict[str, str | bytes]) -> None:
    code, text = raw_post(cluster, "/generate", b"{}", {**JSON, **headers})
    assert code == 400, text
    assert text  # aiohttp names the limit that was exceeded
