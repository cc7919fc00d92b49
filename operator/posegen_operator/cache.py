"""The watch-fed cache of PoseGenerations and worker pods: a pass reads it and makes no API calls."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from posegen_operator.builders import GROUP, KIND

Body = dict[str, Any]
TOMBSTONE_SECONDS = 600.0  # far longer than a list takes


def _resource_version(body: Body) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "ownerReferences",
    "labels",
)


def slim(kind: str, body: Body) -> Body:
    """What the operator reads of an object: identity and lifecycle metadata, labels, our own
    annotations, status, and a generation's spec. The rest (managedFields, a pod's spec) is most of
    an object's size. Strings are interned: cached objects repeat each other's keys and values."""
    metadata = body["metadata"]
    kept: Body = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    own = {key: value for key, value in (metadata.get("annotations") or {}).items() if key.startswith(f"{GROUP}/")}
    if own:
        kept["annotations"] = own
    read: Body = {"metadata": kept}
    for part in ("spec", "status") if kind == "generations" else ("status",):
        if part in body:
            read[part] = body[part]
    read = cast(Body, _interned(read))
    conditions = (read.get("status") or {}).get("conditions")
    if kind == "generations" and isinstance(conditions, list):
        read["status"]["conditions"] = [Condition.compact(c) for c in conditions]
    return read


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(key): _interned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interned(item) for item in value]
    return value


class Condition(Mapping[str, Any]):
    """A status condition as a read-only mapping of its six standard fields: five per generation,
    ten thousand generations, a third of the memory of as many dicts."""

    FIELDS = ("type", "status", "reason", "message", "lastTransitionTime", "observedGeneration")
    __slots__ = FIELDS

    @classmethod
    def compact(cls, condition: Any) -> Any:
        """``condition`` as a Condition when it holds the standard fields only, else as it is."""
        if not isinstance(condition, dict) or not condition.keys() <= set(cls.FIELDS):
            return condition
        compacted = cls()
        for field in cls.FIELDS:
            if field in condition:
                setattr(compacted, field, condition[field])
        return compacted

    def __getitem__(self, key: str) -> Any:
        if key not in self.FIELDS:
            raise KeyError(key)
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return (field for field in self.FIELDS if hasattr(self, field))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"Condition({dict(self)!r})"


class ObjectCache:
    """PoseGenerations and worker pods by uid; watch events may arrive late or twice, so only a
    newer resourceVersion replaces what is cached. A re-list is merged, not swapped in: what the
    watch delivered while the list was in flight (a creation, a deletion) is newer than the list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Body]] = {"generations": {}, "pods": {}}
        self._deleted: dict[str, dict[str, int]] = {"generations": {}, "pods": {}}  # uid -> version deleted at
        self._deleted_at: dict[str, float] = {}  # uid -> monotonic time of its deletion
        self._pods_by_owner: dict[str, set[str]] = {}  # owner uid -> pod uids

    def upsert(self, kind: str, body: Body) -> None:
        uid = body["metadata"]["uid"]
        with self._lock:
            if self._deleted[kind].get(uid, -1) >= _resource_version(body):
                return  # a late event for something already deleted
            current = self._objects[kind].get(uid)
            if current is None or _resource_version(body) > _resource_version(current):
                self._objects[kind][uid] = slim(kind, body)
                if kind == "pods":
                    for owner in _owners(body):
                        self._pods_by_owner.setdefault(owner, set()).add(uid)

    def remove(self, kind: str, body: Body) -> None:
        uid = body["metadata"]["uid"]
        with self._lock:
            self._deleted[kind][uid] = _resource_version(body)
            self._deleted_at[uid] = time.monotonic()
            gone = self._objects[kind].pop(uid, None)
            if kind == "pods" and gone is not None:
                for owner in _owners(gone):
                    self._pods_by_owner.get(owner, set()).discard(uid)
                    if not self._pods_by_owner.get(owner):
                        self._pods_by_owner.pop(owner, None)

    def replace(self, kind: str, bodies: Iterable[Body], listed_at: int, namespace: str | None = None) -> None:
        """Merge a list taken at resourceVersion ``listed_at``: the list wins over older cached
        versions and drops what it no longer holds, unless the watch has seen it since. A list of
        one ``namespace`` leaves the other namespaces' objects, and every tombstone, alone.
        ``bodies`` come slimmed (``slim``, as each page arrives): nothing heavy runs under the lock,
        which the event handler on kopf's loop takes too."""
        with self._lock:
            cached, deleted = self._objects[kind], self._deleted[kind]
            merged: dict[str, Body] = {}
            if namespace is not None:
                merged = {uid: body for uid, body in cached.items() if body["metadata"].get("namespace") != namespace}
            for body in bodies:
                uid = body["metadata"]["uid"]
                if deleted.get(uid, 0) > listed_at:
                    continue  # deleted after the list was taken
                current = cached.get(uid)
                newer = current is not None and _resource_version(current) > _resource_version(body)
                merged[uid] = current if current is not None and newer else body
            for uid, current in cached.items():
                if uid not in merged and _resource_version(current) > listed_at:
                    merged[uid] = current  # created after the list was taken
            self._objects[kind] = merged
            if namespace is None:
                # Tombstones the list has caught up with go, but only once no other list taken
                # earlier (two listers: the re-list and the pod informer) can still be merging.
                horizon = time.monotonic() - TOMBSTONE_SECONDS
                kept = {uid: at for uid, at in deleted.items() if at > listed_at or self._deleted_at[uid] > horizon}
                for uid in deleted.keys() - kept.keys():
                    del self._deleted_at[uid]
                self._deleted[kind] = kept
            if kind == "pods":
                self._pods_by_owner = {}
                for uid, pod in merged.items():
                    for owner in _owners(pod):
                        self._pods_by_owner.setdefault(owner, set()).add(uid)

    def generations(self) -> list[Body]:
        with self._lock:
            return list(self._objects["generations"].values())

    def pods(self) -> list[Body]:
        with self._lock:
            return list(self._objects["pods"].values())

    def deleted(self, kind: str) -> set[str]:
        """Uids the watch saw deleted lately (until a later list has caught up with them)."""
        with self._lock:
            return set(self._deleted[kind])

    def has_pods(self, owner_uid: str) -> bool:
        with self._lock:
            return owner_uid in self._pods_by_owner

    def pods_of(self, owner_uid: str) -> list[Body]:
        with self._lock:
            pods = self._objects["pods"]
            return [pods[uid] for uid in self._pods_by_owner.get(owner_uid, ()) if uid in pods]


def _owners(pod: Body) -> list[str]:
    """A pod belongs to a generation only through a controller reference of kind PoseGeneration."""
    return [
        owner["uid"]
        for owner in pod["metadata"].get("ownerReferences") or []
        if owner.get("controller")
        and owner.get("kind") == KIND
        and str(owner.get("apiVersion", "")).startswith(f"{GROUP}/")
    ]
