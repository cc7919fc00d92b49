"""Our finalizer on PoseGenerations: added at first sight, removed once a deletion has cancelled
the worker and the row."""

from __future__ import annotations

import kubernetes
from kubernetes.client.exceptions import ApiException

from posegen_operator.actions import AddFinalizer, RemoveFinalizer
from posegen_operator.builders import FINALIZER, GROUP, PLURAL, VERSION

REQUEST_TIMEOUT = (5, 15)


class FinalizerActions:
    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api)
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
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, key[0], PLURAL, key[1], patch, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True
