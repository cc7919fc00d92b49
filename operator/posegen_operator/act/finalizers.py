"""Our finalizer on PoseGenerations: added when a generation's first worker is admitted, removed
once a deletion has cancelled the worker and the row. The reply goes into the cache at once, so the
next pass writes from the version it made (see act/status.py)."""

from __future__ import annotations

from posegen_operator.actions import AddFinalizer, RemoveFinalizer
from posegen_operator.builders import FINALIZER, GROUP, PLURAL, VERSION
from posegen_operator.cache import ObjectCache
from posegen_operator.kube import MERGE_PATCH, ApiError, KubeClient, resource_path

REQUEST_TIMEOUT = (5, 15)


class FinalizerActions:
    def __init__(self, api: KubeClient, cache: ObjectCache) -> None:
        self.api = api
        self.cache = cache
        # Each resource's observed (resourceVersion, finalizers), set for every plan.
        self.observed: dict[tuple[str, str], tuple[str, list[str]]] = {}

    def add(self, action: AddFinalizer) -> bool:
        version, current = self.observed.get(action.key, ("", []))
        return self._set(action.key, version, [*current, FINALIZER])

    def remove(self, action: RemoveFinalizer) -> bool:
        version, current = self.observed.get(action.key, ("", []))
        return self._set(action.key, version, [f for f in current if f != FINALIZER])

    def _set(self, key: tuple[str, str], version: str, finalizers: list[str]) -> bool:
        # The observed resourceVersion guards the write: a finalizer someone else added meanwhile
        # is never clobbered (409, and the next pass sees it).
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
        try:
            updated = self.api.request(
                "PATCH",
                resource_path(f"{GROUP}/{VERSION}", PLURAL, key[0], key[1]),
                body=patch,
                content_type=MERGE_PATCH,
                timeout=REQUEST_TIMEOUT,
            )
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        self.cache.upsert("generations", updated)
        return True
