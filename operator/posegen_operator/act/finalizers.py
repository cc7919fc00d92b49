"""Our finalizer on PoseGenerations: added at first sight, removed once a deletion has cancelled
the worker and the row."""

from __future__ import annotations

from posegen_operator.actions import AddFinalizer, RemoveFinalizer
from posegen_operator.builders import FINALIZER, GROUP, PLURAL, VERSION
from posegen_operator.kube import MERGE_PATCH, ApiError, KubeClient, resource_path

REQUEST_TIMEOUT = (5, 15)


class FinalizerActions:
    def __init__(self, api: KubeClient) -> None:
        self.api = api
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
            self.api.request(
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
        return True
