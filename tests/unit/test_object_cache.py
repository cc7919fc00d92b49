"""The watch-fed cache: newer versions win, pods are indexed by owner, managedFields are dropped."""

from __future__ import annotations

from typing import Any

from posegen_operator.observe import ObjectCache


def obj(uid: str, version: int, owners: tuple[str, ...] = (), **meta: Any) -> dict[str, Any]:
    metadata = {"uid": uid, "resourceVersion": str(version), "managedFields": [{"big": "x" * 100}], **meta}
    if owners:
        metadata["ownerReferences"] = [{"uid": owner} for owner in owners]
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
    cache.replace("pods", [obj("p4", 3, ("g1",))])
    assert cache.has_pods("g1") and not cache.has_pods("g2")
