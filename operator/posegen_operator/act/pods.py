"""Worker pods: claim an attempt (fencing every earlier worker), then create its pod; delete pods."""

from __future__ import annotations

import json
import logging

import kubernetes
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine

from posegen_common import checkpoint
from posegen_operator.act.queue_view import QueueView
from posegen_operator.actions import DeletePod, StartWorker
from posegen_operator.builders import build_worker_pod
from posegen_operator.cache import ObjectCache
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
REQUEST_TIMEOUT = (5, 15)


class PodActions:
    def __init__(
        self,
        settings: Settings,
        api: kubernetes.client.ApiClient,
        engine: Engine,
        cache: ObjectCache,
        queue_view: QueueView,
    ) -> None:
        self.settings = settings
        self.core = kubernetes.client.CoreV1Api(api)
        self.engine = engine
        self.cache = cache
        self.queue_view = queue_view

    def start_worker(self, action: StartWorker) -> bool:
        with self.engine.begin() as conn:
            attempt = checkpoint.begin_attempt(
                conn, action.generation_id, action.expected_attempt, str(action.reason) if action.reason else None
            )
        if attempt is None:
            log.info("generation %s moved on (another actor claimed attempt %d)", action.generation_id, action.attempt)
            return False
        pod = build_worker_pod(action.key[0], action.key[1], action.uid, action.generation_id, attempt, self.settings)
        context = {"generation": action.generation_id, "attempt": attempt, "reason": str(action.reason)}
        if action.reason is not None:
            log.info(
                "[Recovery] Recovering generation %s (%d/%d completed)",
                action.generation_id,
                action.poses_completed,
                action.total,
                extra=context,
            )
        try:
            response = self.core.create_namespaced_pod(
                action.key[0], pod, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status != 409:  # 409: an earlier pass already created it
                raise
        else:
            # Seen at once by the next pass: the watch may deliver it later, and a pass that saw a
            # new attempt without its pod would take the worker for gone.
            self.cache.upsert("pods", json.loads(response.data))
        self.queue_view.started(action.generation_id)
        if action.reason is not None:
            log.info(
                "[Recovery] Successfully re-queued generation %s as job %s (attempt %d)",
                action.generation_id,
                pod["metadata"]["name"],
                attempt,
                extra=context,
            )
        else:
            log.info(
                "started generation %s: worker %s (attempt %d)", action.generation_id, pod["metadata"]["name"], attempt
            )
        return True

    def delete(self, action: DeletePod) -> bool:
        try:
            self.core.delete_namespaced_pod(
                action.pod, action.key[0], grace_period_seconds=action.grace_seconds, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
