"""The seed's HTTP API on the real operator: paths, JSON fields, bearer token, 4xx with reasons."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Cluster, get_generation, seed_api, seed_generate, wait_for_phase

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
