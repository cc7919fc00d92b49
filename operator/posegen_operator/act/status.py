"""What users see: the status subresource of a PoseGeneration and its Events.

A patched status goes into the cache at once (the API server's reply is the object as it now is):
the next pass must not decide again from the version before it, as it would while the watch is
behind in a burst (a second phase Event for the same transition)."""

from __future__ import annotations

import datetime as dt

from posegen_operator.actions import PatchStatus, PostEvent
from posegen_operator.builders import GROUP, PLURAL, VERSION, build_event
from posegen_operator.cache import ObjectCache
from posegen_operator.kube import MERGE_PATCH, ApiError, KubeClient, resource_path

REQUEST_TIMEOUT = (5, 15)


class StatusActions:
    def __init__(self, api: KubeClient, identity: str, cache: ObjectCache) -> None:
        self.api = api
        self.identity = identity
        self.cache = cache

    def patch(self, action: PatchStatus) -> bool:
        namespace, name = action.key
        try:
            updated = self.api.request(
                "PATCH",
                resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace, name, "status"),
                body={"status": action.patch},
                content_type=MERGE_PATCH,
                timeout=REQUEST_TIMEOUT,
            )
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        self.cache.upsert("generations", updated)
        return True

    def post_event(self, action: PostEvent) -> bool:
        event = build_event(
            action.key[0],
            action.key[1],
            action.uid,
            action.type,
            action.reason,
            action.message,
            instance=self.identity,
            now=dt.datetime.now(dt.UTC),
        )
        try:
            self.api.request("POST", resource_path("v1", "events", action.key[0]), body=event, timeout=REQUEST_TIMEOUT)
        except ApiError as error:
            if error.status in (403, 404):  # the namespace is gone or being deleted: nobody to tell
                return False
            raise
        return True
