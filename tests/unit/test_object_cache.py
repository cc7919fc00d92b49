"""The watch-fed cache: newer versions win, pods are indexed by owner, only what the operator reads is kept,
and a re-list never undoes what the watch saw while the list was in flight."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from posegen_operator.cache import Condition, ObjectCache
from posegen_operator.status import CONDITION_TYPES, updated_conditions


def obj(uid: str, version: int, owners: tuple[str, ...] = (), **meta: Any) -> dict[str, Any]:
    metadata = {"uid": uid, "resourceVersion": str(version), "managedFields": [{"big": "x" * 100}], **meta}
    if owners:
        metadata["ownerReferences"] = [
            {"apiVersion": "posegen.io/v1", "kind": "PoseGeneration", "uid": owner, "controller": True}
            for owner in owners
        ]
    return {"metadata": metadata}


def test_an_older_version_never_overwrites_a_newer_one() -> None:
    cache = ObjectCache()
    cache.upsert("generations", obj("g", 5, name="new"))
    cache.upsert("generations", obj("g", 4, name="old"))
    (only,) = cache.generations()
    assert only["metadata"]["name"] == "new"
    assert "managedFields" not in only["metadata"]


def test_pods_are_found_by_owner_through_upserts_removals_and_relists() -> None:
    cache = ObjectCache()
    cache.upsert("pods", obj("p1", 1, ("g1",)))
    cache.upsert("pods", obj("p2", 1, ("g1",)))
    cache.upsert("pods", obj("p3", 1, ("g2",)))
    assert sorted(p["metadata"]["uid"] for p in cache.pods_of("g1")) == ["p1", "p2"]
    cache.remove("pods", obj("p1", 2, ("g1",)))
    cache.remove("pods", obj("p2", 2, ("g1",)))
    assert not cache.has_pods("g1") and cache.pods_of("g1") == []
    assert cache.has_pods("g2")
    cache.replace("pods", [obj("p4", 3, ("g1",))], listed_at=3)
    assert cache.has_pods("g1") and not cache.has_pods("g2")


def uids(cache: ObjectCache) -> list[str]:
    return sorted(body["metadata"]["uid"] for body in cache.generations())


def test_a_relist_keeps_what_was_created_after_the_list_was_taken() -> None:
    cache = ObjectCache()
    cache.upsert("generations", obj("early", 10))
    cache.upsert("generations", obj("created-meanwhile", 12))  # the watch, while the list was in flight
    cache.replace("generations", [obj("early", 10)], listed_at=11)
    assert uids(cache) == ["created-meanwhile", "early"]


def test_a_relist_drops_what_it_no_longer_holds() -> None:
    cache = ObjectCache()
    cache.upsert("generations", obj("gone-unseen", 5))  # its DELETED event was missed
    cache.replace("generations", [obj("kept", 6)], listed_at=11)
    assert uids(cache) == ["kept"]


def test_a_relist_does_not_resurrect_what_was_deleted_after_the_list_was_taken() -> None:
    cache = ObjectCache()
    cache.upsert("generations", obj("doomed", 10))
    cache.remove("generations", obj("doomed", 13))
    cache.replace("generations", [obj("doomed", 10)], listed_at=11)
    assert uids(cache) == []
    cache.upsert("generations", obj("doomed", 12))  # a late, reordered event for it
    assert uids(cache) == []


def test_a_relist_never_overwrites_a_newer_cached_version() -> None:
    cache = ObjectCache()
    cache.upsert("generations", obj("g", 14, name="newer"))
    cache.replace("generations", [obj("g", 10, name="listed")], listed_at=11)
    (only,) = cache.generations()
    assert only["metadata"]["name"] == "newer"
    cache.replace("generations", [obj("g", 20, name="relisted")], listed_at=21)
    (only,) = cache.generations()
    assert only["metadata"]["name"] == "relisted"


def test_only_what_the_operator_reads_is_cached() -> None:
    cache = ObjectCache()
    generation = obj(
        "g",
        1,
        name="g",
        namespace="ns",
        annotations={"posegen.io/recover": "r1", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
    )
    generation |= {"apiVersion": "posegen.io/v1", "spec": {"suspend": True}, "status": {"phase": "Suspended"}}
    cache.upsert("generations", generation)
    pod = obj("p", 1, ("g",), name="p", labels={"posegen.io/attempt": "1"})
    pod |= {"spec": {"containers": [{"name": "worker"}]}, "status": {"phase": "Running"}}
    cache.upsert("pods", pod)
    (cached,) = cache.generations()
    assert cached == {
        "metadata": {
            "name": "g",
            "namespace": "ns",
            "uid": "g",
            "resourceVersion": "1",
            "annotations": {"posegen.io/recover": "r1"},
        },
        "spec": {"suspend": True},
        "status": {"phase": "Suspended"},
    }
    (cached_pod,) = cache.pods_of("g")
    assert "spec" not in cached_pod  # a pod's spec is never read
    assert cached_pod["metadata"]["labels"] == {"posegen.io/attempt": "1"}
    assert cached_pod["status"] == {"phase": "Running"}


def test_a_pod_belongs_only_to_its_controlling_posegeneration() -> None:
    cache = ObjectCache()
    foreign = obj("p1", 1)
    foreign["metadata"]["ownerReferences"] = [
        {"apiVersion": "posegen.io/v1", "kind": "PoseGeneration", "uid": "g1", "controller": False},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": "g1", "controller": True},
    ]
    cache.upsert("pods", foreign)
    cache.upsert("pods", obj("p2", 1, ("g1",)))

    assert [p["metadata"]["uid"] for p in cache.pods_of("g1")] == ["p2"]


def test_a_relist_of_one_namespace_leaves_the_others_alone() -> None:
    cache = ObjectCache()
    cache.upsert("pods", obj("a-gone", 5, namespace="a"))
    cache.upsert("pods", obj("b-kept", 5, namespace="b"))
    cache.remove("pods", obj("b-deleted", 6, namespace="b"))  # a tombstone another list may need
    cache.replace("pods", [obj("a-new", 7, namespace="a")], listed_at=11, namespace="a")
    assert sorted(p["metadata"]["uid"] for p in cache.pods()) == ["a-new", "b-kept"]
    cache.replace("pods", [obj("b-deleted", 4, namespace="b"), obj("b-kept", 5, namespace="b")], listed_at=5)
    assert "b-deleted" not in [p["metadata"]["uid"] for p in cache.pods()], "still known as deleted"


def test_a_list_taken_earlier_never_resurrects_a_pod_a_later_list_saw_deleted() -> None:
    # Two listers (the re-list and the pod informer) interleave: the informer's list at 200 lands
    # first, then the re-list's, taken at 150 while the pod still existed.
    cache = ObjectCache()
    cache.upsert("pods", obj("p1", 120, ("g1",)))
    cache.remove("pods", obj("p1", 180, ("g1",)))
    cache.replace("pods", [], listed_at=200)

    cache.replace("pods", [obj("p1", 120, ("g1",))], listed_at=150)

    assert cache.pods_of("g1") == []


def test_cached_conditions_are_compact_and_read_and_compare_as_the_dicts_they_were() -> None:
    conditions: list[dict[str, Any]] = [
        {
            "type": kind,
            "status": "False",
            "reason": "AsExpected",
            "message": "",
            "lastTransitionTime": "2026-12-01T06:34:45Z",
            "observedGeneration": 1,
        }
        for kind in CONDITION_TYPES
    ]
    foreign = {"type": "Reviewed", "status": "True", "reviewer": "someone"}  # not ours: kept as it is
    generation = obj("g", 1, name="g", namespace="ns") | {"status": {"conditions": [*conditions, foreign]}}
    cache = ObjectCache()
    cache.upsert("generations", generation)

    (cached,) = cache.generations()
    compact = cached["status"]["conditions"]
    assert all(isinstance(c, Condition) for c in compact[:5]) and compact[5] == foreign
    assert compact == [*conditions, foreign]
    assert ([*conditions, foreign] != compact) is False  # how a pass compares what it renders
    assert compact[1]["type"] == "Degraded" and compact[1].get("reason") == "AsExpected"
    assert compact[1].get("missing") is None and dict(compact[1]) == conditions[1]
    assert sys.getsizeof(compact[0]) < sys.getsizeof(conditions[0]) / 2
    # The status a pass renders from them is unchanged, so nothing is patched.
    desired = {c["type"]: (c["status"], c["reason"], c["message"]) for c in conditions}
    now = dt.datetime(2026, 12, 1, 7, tzinfo=dt.UTC)
    assert updated_conditions(compact[:5], desired, 1, now) == compact[:5]
