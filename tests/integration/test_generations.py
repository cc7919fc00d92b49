"""The core slice against the real stack: a PoseGeneration runs to Completed with its poses
recorded once and its images on disk; queueing, cancellation, suspend/resume, validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from posegen_devstack.processes import wait_for
from posegen_worker.run import output_directory
from tests.harness import (
    SEED_DUPLICATE_QUERY,
    Cluster,
    create_generation,
    generation_manifest,
    get_generation,
    patch_spec,
    sql,
    status_of,
    wait_for_phase,
    wait_for_status,
    worker_log,
)

pytestmark = pytest.mark.integration


def test_fifty_poses_complete_once_each_with_images_on_disk(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "fifty", variationCount=50, textPrompt="a dancer jumping")
    status = wait_for_phase(cluster, namespace, "fifty", "Completed", timeout=120)
    generation_id = status["generationId"]
    assert status["posesCompleted"] == 50
    assert status["progress"] == "50/50"
    assert status["recoveries"] == 0
    rows = sql(
        cluster,
        "SELECT id, status, poses_completed, total_expected_poses, started_at FROM pose_generation WHERE id = %s",
        generation_id,
    )
    assert rows[0][1:4] == ("completed", 50, 50)
    assert sql(cluster, "SELECT count(*) FROM generated_pose WHERE generation_id = %s", generation_id) == [(50,)]
    assert sql(cluster, SEED_DUPLICATE_QUERY) == []
    images = output_directory(cluster.stack.output_dir, namespace, "fifty", generation_id)
    pngs = sorted(images.glob("pose-*.png"))
    assert len(pngs) == 50
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    keypoints = json.loads((images / "pose-0000.json").read_text())
    assert len(keypoints["keypoints"]) == 17

    table = cluster.kubectl("-n", namespace, "get", "posegenerations").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "RECOVERIES", "WORKER", "AGE"]
    assert row.split()[:5] == ["fifty", "Completed", "50/50", "0", status["workerPod"]]
    short = cluster.kubectl("-n", namespace, "get", "pgen", "-o", "name").stdout
    assert "posegeneration.posegen.io/fifty" in short
    events = cluster.kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fifty",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert "Started" in events and "Completed" in events


def changed_manifest(name: str, change: dict[str, object]) -> dict[str, object]:
    """The test manifest with fields set, or removed where the change says None."""
    manifest = generation_manifest(name)
    for key, value in change.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    return manifest


INVALID = [
    ({"projectId": ""}, "spec.projectId"),
    ({"projectId": "has spaces"}, "spec.projectId"),
    ({"generationType": "SKETCH"}, "Unsupported value"),
    ({"textPrompt": None}, "textPrompt is required when generationType is TEXT_DESCRIPTION"),
    ({"textPrompt": "   "}, "textPrompt must not be blank"),
    ({"textPrompt": "x" * 2001}, "spec.textPrompt"),
    ({"generationType": "GALLERY_REFERENCE"}, "poseLibraryIds is required when generationType is GALLERY_REFERENCE"),
    ({"generationType": "GALLERY_REFERENCE", "poseLibraryIds": []}, "spec.poseLibraryIds"),
    ({"variationCount": 0}, "spec.variationCount"),
    ({"variationCount": 501}, "spec.variationCount"),
    ({"variationCount": "fifty"}, "spec.variationCount"),
    ({"seed": -1}, "spec.seed"),
    ({"priority": 1000}, "spec.priority"),
    ({"suspend": "yes"}, "spec.suspend"),
    ({"recovery": {"maxRecoveries": -1}}, "spec.recovery.maxRecoveries"),
    ({"recovery": {"stallTimeoutSeconds": 1}}, "spec.recovery.stallTimeoutSeconds"),
    ({"textPrompt": "a person\x00running"}, "textPrompt must not contain control characters"),
    ({"textPrompt": "a person\x1b[2Jrunning"}, "textPrompt must not contain control characters"),
    ({"textPrompt": "a person\x85running"}, "textPrompt must not contain control characters"),
    ({"textPrompt": "\u200b\u200c\u200d\u2060\ufeff"}, "textPrompt must not be blank"),
    ({"textPrompt": " \t\n\u00a0\u3000\u2028\u3164"}, "textPrompt must not be blank"),
    ({"poseLibraryIds": ["lib-1"]}, "poseLibraryIds is not allowed when generationType is TEXT_DESCRIPTION"),
    (
        {"generationType": "GALLERY_REFERENCE", "poseLibraryIds": ["lib-1"]},
        "textPrompt is not allowed when generationType is GALLERY_REFERENCE",
    ),
    (
        {"recovery": {"stallTimeoutSeconds": 600, "deadlineSeconds": 300}},
        "recovery.deadlineSeconds must not be shorter than recovery.stallTimeoutSeconds",
    ),
]


@pytest.mark.parametrize(("change", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_manifests_are_refused_at_apply(
    cluster: Cluster, namespace: str, change: dict[str, object], message: str
) -> None:
    manifest = changed_manifest("bad", change)
    result = cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "change",
    [
        {"textPrompt": "a dancer\tjumping,\nthen waving"},
        {"textPrompt": "舞者が跳ぶ \u200b"},
        {"generationType": "GALLERY_REFERENCE", "textPrompt": None, "poseLibraryIds": ["lib-1"]},
        {"recovery": {"stallTimeoutSeconds": 600, "deadlineSeconds": 600}},
    ],
    ids=["tab-and-newline", "any-script", "gallery", "deadline-equal-to-stall"],
)
def test_valid_manifests_pass_the_same_rules(cluster: Cluster, namespace: str, change: dict[str, object]) -> None:
    """The rules above refuse only what they name: line breaks, any script and the edge values pass."""
    manifest = changed_manifest("good", change)
    result = cluster.kubectl(
        "-n", namespace, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(manifest), check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("projectId", "other", "projectId is immutable"),
        ("variationCount", 11, "variationCount is immutable"),
        ("textPrompt", "a person sitting", "textPrompt is immutable"),
        ("seed", 7, "seed cannot be added or removed after creation"),
    ],
)
def test_the_work_cannot_be_changed_after_creation(
    cluster: Cluster, namespace: str, field: str, value: object, message: str
) -> None:
    manifest = generation_manifest("fixed", suspend=True)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest))
    manifest["spec"][field] = value
    result = cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_generations_beyond_the_limit_wait_queued_and_all_complete(cluster: Cluster, namespace: str) -> None:
    limit = 2
    cluster.stack.stop_operator()
    cluster.stack.start_operator(POSEGEN_MAX_CONCURRENT=str(limit), POSEGEN_POSE_SECONDS="0.1")
    try:
        names = [f"q{i}" for i in range(limit + 5)]
        for name in names:
            create_generation(cluster, namespace, name, variationCount=12)

        def five_queued() -> list[str] | None:
            phases = [status_of(cluster, namespace, n).get("phase", "") for n in names]
            return phases if phases.count("Queued") == 5 and phases.count("Processing") == limit else None

        wait_for(five_queued, timeout=30, what=f"{limit} generations Processing and 5 Queued")
        for name in names:
            wait_for_phase(cluster, namespace, name, "Completed", timeout=120)
    finally:
        cluster.stack.stop_operator()
        cluster.stack.start_operator()


def test_deleting_a_running_generation_cancels_it_and_keeps_its_poses(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "doomed", variationCount=400)
    status = wait_for_status(cluster, namespace, "doomed", lambda s: s.get("posesCompleted", 0) >= 3, what="3 poses")
    pid = cluster.pod_pid(namespace, status["workerPod"])
    cluster.kubectl("-n", namespace, "delete", "posegeneration", "doomed", "--wait=false")
    # Within the worker's grace period (10 s in tests), plus slack for a loaded machine.
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=20, what="the worker to stop")
    wait_for(
        lambda: (
            not cluster.custom.list_namespaced_custom_object("posegen.io", "v1", namespace, "posegenerations")["items"]
        ),
        timeout=30,
        what="the resource to go",
    )
    row = sql(cluster, "SELECT status, poses_completed FROM pose_generation WHERE id = %s", status["generationId"])
    assert row[0][0] == "cancelled"
    kept = sql(cluster, "SELECT count(*) FROM generated_pose WHERE generation_id = %s", status["generationId"])
    assert kept[0][0] == row[0][1] >= 3
    assert "SIGTERM" in worker_log(cluster, namespace, status["workerPod"])


def test_a_generation_that_never_ran_is_deleted_at_once_and_its_row_cancelled(cluster: Cluster, namespace: str) -> None:
    # Nothing to clean up but its row: no finalizer holds the deletion, and the row is found among
    # the deletions the watch saw (the re-list, which would also find it, comes every 5 minutes).
    create_generation(cluster, namespace, "never-ran", variationCount=10, suspend=True)
    status = wait_for_phase(cluster, namespace, "never-ran", "Suspended")
    assert not get_generation(cluster, namespace, "never-ran")["metadata"].get("finalizers")
    cluster.kubectl("-n", namespace, "delete", "posegeneration", "never-ran", "--wait=true", "--timeout=10s")

    wait_for(
        lambda: (
            sql(cluster, "SELECT status FROM pose_generation WHERE id = %s", status["generationId"]) == [("cancelled",)]
        ),
        timeout=20,
        what="the row to be cancelled",
    )


def test_suspend_then_resume_completes_without_redoing_poses(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "pausable", variationCount=40)
    first = wait_for_status(cluster, namespace, "pausable", lambda s: s.get("posesCompleted", 0) >= 5, what="5 poses")[
        "workerPod"
    ]
    patch_spec(cluster, namespace, "pausable", suspend=True)
    suspended = wait_for_phase(cluster, namespace, "pausable", "Suspended")
    wait_for_status(
        cluster, namespace, "pausable", lambda s: "suspended at" in s.get("message", ""), what="the worker to stop"
    )
    kept = status_of(cluster, namespace, "pausable")["posesCompleted"]
    assert kept < 40
    patch_spec(cluster, namespace, "pausable", suspend=False)
    final = wait_for_phase(cluster, namespace, "pausable", "Completed", timeout=90)
    assert final["posesCompleted"] == 40
    assert final["workerPod"] != first and final["recoveries"] == 0
    recorded = sum(
        len(re.findall(r"pose \d+/40 recorded", worker_log(cluster, namespace, pod)))
        for pod in (first, final["workerPod"])
    )
    assert recorded == 40, "every pose was computed and recorded exactly once"
    assert "RECOVERY MODE" in worker_log(cluster, namespace, final["workerPod"])
    assert suspended["generationId"] == final["generationId"]


def test_kubectl_wait_for_the_complete_condition(cluster: Cluster, namespace: str) -> None:
    create_generation(cluster, namespace, "waited", variationCount=20)

    result = cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Complete", "pgen/waited", "--timeout=90s", timeout=120
    )

    assert "condition met" in result.stdout
    status = status_of(cluster, namespace, "waited")
    assert status["phase"] == "Completed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert sorted(conditions) == ["Complete", "Degraded", "Failed", "Progressing", "Suspended"]
    assert all(c["observedGeneration"] == 1 for c in conditions.values())
    assert (conditions["Failed"]["status"], conditions["Progressing"]["status"]) == ("False", "False")
