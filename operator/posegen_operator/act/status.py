"""What users see: the status subresource of a PoseGeneration and its Events."""

from __future__ import annotations

import datetime as dt

import kubernetes
from kubernetes.client.exceptions import ApiException

from posegen_operator.actions import PatchStatus, PostEvent
from posegen_operator.builders import GROUP, PLURAL, VERSION, build_event

REQUEST_TIMEOUT = (5, 15)


class StatusActions:
    def __init__(self, api: kubernetes.client.ApiClient, identity: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.identity = identity

    def patch(self, action: PatchStatus) -> bool:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                action.key[0],
                PLURAL,
                action.key[1],
                {"status": action.patch},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
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
            self.core.create_namespaced_event(action.key[0], event, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status in (403, 404):  # the namespace is gone or being deleted: nobody to tell
                return False
            raise
        return True
