"""Worker pods: claim an attempt (fencing every earlier worker), then create its pod; delete pods."""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from posegen_common import checkpoint
from posegen_operator.act.credentials import CredentialActions
from posegen_operator.act.queue_view import QueueView
from posegen_operator.actions import CreatePod, DeletePod, StartWorker
from posegen_operator.builders import build_worker_pod
from posegen_operator.cache import ObjectCache
from posegen_operator.kube import ApiError, KubeClient, resource_path
from posegen_operator.model import worker_pod_name
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
REQUEST_TIMEOUT = (5, 15)


class PodActions:
    def __init__(
        self,
        settings: Settings,
        api: KubeClient,
        engine: Engine,
        cache: ObjectCache,
        queue_view: QueueView,
        credentials: CredentialActions,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.api = api
        self.engine = engine
        self.cache = cache
        self.queue_view = queue_view

    def start_worker(self, action: StartWorker) -> bool:
        with self.engine.begin() as conn:
            attempt = checkpoint.begin_attempt(
                conn,
                action.generation_id,
                action.expected_attempt,
                str(action.reason) if action.reason else None,
                budgeted=action.budgeted,
            )
        if attempt is None:
            log.info("generation %s moved on (another actor claimed attempt %d)", action.generation_id, action.attempt)
            return False
        context = {"generation": action.generation_id, "attempt": attempt, "reason": str(action.reason)}
        if action.reason is not None:
            log.info(
                "[Recovery] Recovering generation %s (%d/%d completed)",
                action.generation_id,
                action.poses_completed,
                action.total,
                extra=context,
            )
        self.queue_view.started(action.generation_id)
        if not self.create(CreatePod(action.key, action.uid, action.generation_id, attempt)):
            return False
        name = worker_pod_name(action.key[1], attempt)
        if action.reason is not None:
            log.info(
                "[Recovery] Successfully re-queued generation %s as job %s (attempt %d)",
                action.generation_id,
                name,
                attempt,
                extra=context,
            )
        else:
            log.info("started generation %s: worker %s (attempt %d)", action.generation_id, name, attempt)
        return True

    def create(self, action: CreatePod) -> bool:
        """Create the attempt's pod and record that it exists; a refusal is recorded instead (the
        rules retry it under the same attempt, with backoff) and raised for the pass to count."""
        namespace, name = action.key
        with self.engine.begin() as conn:
            credentials = self.credentials.mint(conn, action.generation_id, action.attempt)
        pod = build_worker_pod(
            namespace, name, action.uid, action.generation_id, action.attempt, self.settings, credentials=credentials
        )
        try:
            path = resource_path("v1", "pods", namespace)
            created = self.api.request("POST", path, body=pod, timeout=REQUEST_TIMEOUT)
            # Seen at once by the next pass: the watch may deliver it later, and a pass that saw a
            # new attempt without its pod would take the worker for gone.
            self.cache.upsert("pods", created)
        except ApiError as error:
            if error.status != 409 or not self._ours(namespace, pod["metadata"]["name"], action.uid):
                # The API server's own message (a quota, an admission policy, a webhook), else its reason.
                self._refused(action, f"{error.status} {error.reason}: {error.message or error.reason}")
                raise
        except Exception as error:  # the API server unreachable: the create may or may not have happened
            self._refused(action, f"{type(error).__name__}: {error}")
            raise
        with self.engine.begin() as conn:
            checkpoint.pod_created(conn, action.generation_id, action.attempt)
        return True

    def _ours(self, namespace: str, pod_name: str, owner_uid: str) -> bool:
        """A 409: the pod exists. It is this attempt's only if its controller is this very
        generation (a generation deleted and applied again under its name has a new uid, and its
        predecessor's pods wait for garbage collection under the same names)."""
        existing = self.api.request("GET", resource_path("v1", "pods", namespace, pod_name), timeout=REQUEST_TIMEOUT)
        owners = existing["metadata"].get("ownerReferences") or []
        return any(owner.get("controller") and owner["uid"] == owner_uid for owner in owners)

    def _refused(self, action: CreatePod, message: str) -> None:
        with self.engine.begin() as conn:
            checkpoint.pod_refused(conn, action.generation_id, action.attempt, message[:1000])

    def delete(self, action: DeletePod) -> bool:
        try:
            self.api.request(
                "DELETE",
                resource_path("v1", "pods", action.key[0], action.pod),
                query={"gracePeriodSeconds": action.grace_seconds},
                timeout=REQUEST_TIMEOUT,
            )
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True
