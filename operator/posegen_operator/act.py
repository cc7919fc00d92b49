"""Act: carry out a plan. Every action is idempotent and fenced, so a pass that dies half-way, or
runs twice, or races a second replica, leaves nothing wrong: the next pass finishes the job."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kubernetes
import redis
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine

from posegen_common import checkpoint, keys
from posegen_operator.builders import FINALIZER, GROUP, PLURAL, VERSION, build_event, build_worker_pod
from posegen_operator.metrics import Metrics
from posegen_operator.observe import ObjectCache
from posegen_operator.planning import (
    Action,
    AddFinalizer,
    DeletePod,
    Emit,
    PatchStatus,
    Plan,
    Register,
    RemoveFinalizer,
    SetRowStatus,
    StartWorker,
)
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
REQUEST_TIMEOUT = (5, 15)
# Resources acted on side by side; the database pool and the API client's connection pool are
# sized for it (runtime.py).
PARALLEL_RESOURCES = 8


@dataclass
class ActResult:
    recovered: int = 0
    failed: int = 0


class Actor:
    def __init__(
        self,
        settings: Settings,
        api: kubernetes.client.ApiClient,
        engine: Engine,
        redis_client: redis.Redis,
        metrics: Metrics,
        cache: ObjectCache,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.engine = engine
        self.redis = redis_client
        self.metrics = metrics
        self._queued_view: list[str] | None = None
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_RESOURCES, thread_name_prefix="posegen-act")
        self._handlers: dict[type, Callable[[Any], bool]] = {
            AddFinalizer: self._add_finalizer,
            RemoveFinalizer: self._remove_finalizer,
            Register: self._register,
            StartWorker: self._start_worker,
            DeletePod: self._delete_pod,
            SetRowStatus: self._set_row_status,
            PatchStatus: self._patch_status,
            Emit: self._emit,
        }

    def execute(self, plan: Plan, finalizers: dict[tuple[str, str], tuple[str, list[str]]]) -> ActResult:
        """Run the plan's actions: in order for each resource, resources side by side (a burst of
        new generations is mostly waiting on the API server). ``finalizers`` maps each resource to
        its observed (resourceVersion, finalizers)."""
        self._finalizers = finalizers
        by_key: dict[tuple[str, str], list[Action]] = {}
        for action in plan.actions:
            by_key.setdefault(action.key, []).append(action)
        result = ActResult()
        for recovered, failed in self._pool.map(self._execute_for_one, by_key.values()):
            result.recovered += recovered
            result.failed += failed
        self._sync_queue_view(plan.queued)
        return result

    def _execute_for_one(self, actions: list[Action]) -> tuple[int, int]:
        """One resource's actions, in order; returns its (recovered, failed) recovery counts."""
        recovered = failed = 0
        broken = False
        for action in actions:
            if broken and isinstance(action, PatchStatus | Emit):
                continue  # the status tells only what was done; the next pass retries the rest
            try:
                done = self._handlers[type(action)](action)
            except Exception as error:
                broken, done = True, False
                self.metrics.action_errors.labels(action=type(action).__name__).inc()
                log.warning(
                    "%s for %s/%s failed, retried next pass: %s", type(action).__name__, *action.key, _describe(error)
                )
            if isinstance(action, StartWorker) and action.reason is not None:
                recovered, failed = recovered + done, failed + (not done)
        return recovered, failed

    # ---- handlers: True when the action took effect ------------------------------------------
    def _add_finalizer(self, action: AddFinalizer) -> bool:
        version, current = self._finalizers.get(action.key, ("", []))
        return self._set_finalizers(action.key, version, [*current, FINALIZER])

    def _remove_finalizer(self, action: RemoveFinalizer) -> bool:
        version, current = self._finalizers.get(action.key, ("", []))
        return self._set_finalizers(action.key, version, [f for f in current if f != FINALIZER])

    def _set_finalizers(self, key: tuple[str, str], version: str, finalizers: list[str]) -> bool:
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

    def _register(self, action: Register) -> bool:
        with self.engine.begin() as conn:
            checkpoint.register(conn, action.spec)
        return True

    def _start_worker(self, action: StartWorker) -> bool:
        with self.engine.begin() as conn:
            attempt = checkpoint.begin_attempt(
                conn, action.generation_id, action.expected_attempt, str(action.reason) if action.reason else None
            )
        if attempt is None:
            log.info("generation %s moved on (another actor claimed attempt %d)", action.generation_id, action.attempt)
            return False
        pod = build_worker_pod(action.key[0], action.key[1], action.uid, action.generation_id, attempt, self.settings)
        if action.reason is not None:
            log.info(
                "[Recovery] Recovering generation %s (%d/%d completed)",
                action.generation_id,
                action.poses_completed,
                action.total,
                extra={"generation": action.generation_id, "attempt": attempt, "reason": str(action.reason)},
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
        self.redis_quietly(lambda: self.redis.zrem(keys.QUEUE, action.generation_id))
        if action.reason is not None:
            log.info(
                "[Recovery] Successfully re-queued generation %s as job %s (attempt %d)",
                action.generation_id,
                pod["metadata"]["name"],
                attempt,
                extra={"generation": action.generation_id, "attempt": attempt, "reason": str(action.reason)},
            )
        else:
            log.info(
                "started generation %s: worker %s (attempt %d)", action.generation_id, pod["metadata"]["name"], attempt
            )
        return True

    def _delete_pod(self, action: DeletePod) -> bool:
        try:
            self.core.delete_namespaced_pod(
                action.pod, action.key[0], grace_period_seconds=action.grace_seconds, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def _set_row_status(self, action: SetRowStatus) -> bool:
        with self.engine.begin() as conn:
            changed = checkpoint.set_status(conn, action.generation_id, action.status, error_message=action.message)
        if changed and action.key == ("", ""):
            log.info("generation %s marked %s: %s", action.generation_id, action.status, action.message)
        return changed

    def _patch_status(self, action: PatchStatus) -> bool:
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

    def _emit(self, action: Emit) -> bool:
        event = build_event(
            action.key[0],
            action.key[1],
            action.uid,
            action.type,
            action.reason,
            action.message,
            instance=self.settings.identity,
            now=dt.datetime.now(dt.UTC),
        )
        try:
            self.core.create_namespaced_event(action.key[0], event, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status in (403, 404):  # the namespace is gone or being deleted: nobody to tell
                return False
            raise
        return True

    # ---- redis: a derived view, rebuilt from the plan when it differs ------------------------
    def _sync_queue_view(self, queued: list[str]) -> None:
        if queued == self._queued_view:
            return

        def write() -> None:
            pipe = self.redis.pipeline()
            pipe.delete(keys.QUEUE)
            if queued:
                pipe.zadd(keys.QUEUE, {generation_id: rank for rank, generation_id in enumerate(queued)})
            pipe.execute()
            self._queued_view = list(queued)

        self.redis_quietly(write)

    def redis_quietly(self, operation: Callable[[], Any]) -> None:
        try:
            operation()
        except redis.RedisError as error:
            log.warning("redis write skipped (%s); it is only a view and is rebuilt later", error)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
