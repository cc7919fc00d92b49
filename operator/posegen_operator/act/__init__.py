"""Act: carry out a plan. Every action is idempotent and fenced, so a pass that dies half-way, or
runs twice, or races a second replica, leaves nothing wrong: the next pass finishes the job.

Each kind of action has its own module (pods, rows, status and Events, finalizers); this one runs a
plan: each resource's actions in order, resources side by side, one resource's failure contained.
Events go to a background sink (``events.py``): a pass never waits on them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine

from posegen_operator.act.credentials import CredentialActions
from posegen_operator.act.errors import describe
from posegen_operator.act.events import EventSink
from posegen_operator.act.finalizers import FinalizerActions
from posegen_operator.act.pods import PodActions
from posegen_operator.act.queue_view import QueueView
from posegen_operator.act.rows import RowActions
from posegen_operator.act.status import StatusActions
from posegen_operator.actions import (
    Action,
    AddFinalizer,
    CreatePod,
    DeletePod,
    PatchStatus,
    Plan,
    PostEvent,
    RegisterRow,
    RemoveFinalizer,
    RestoreWorkerAccess,
    RevokeCredentials,
    SetRowStatus,
    StartWorker,
)
from posegen_operator.cache import ObjectCache
from posegen_operator.kube import KubeClient
from posegen_operator.metrics import Metrics
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
# Resources acted on side by side; the database pool and the API client's connection pool are
# sized for it (runtime.py).
PARALLEL_RESOURCES = 8
Finalizers = dict[tuple[str, str], tuple[str, list[str]]]


@dataclass
class ActResult:
    recovered: int = 0
    failed: int = 0


class Actor:
    def __init__(
        self,
        settings: Settings,
        api: KubeClient,
        engine: Engine,
        redis_client: redis.Redis,
        metrics: Metrics,
        cache: ObjectCache,
    ) -> None:
        self.metrics = metrics
        self.queue_view = QueueView(redis_client)
        self.finalizers = FinalizerActions(api, cache)
        credentials = CredentialActions(settings, engine, redis_client)
        pods = PodActions(settings, api, engine, cache, self.queue_view, credentials)
        rows = RowActions(engine)
        status = StatusActions(api, settings.identity, cache)
        self.events = EventSink(status.post_event, metrics)
        self._may_act: Callable[[], bool] = lambda: True
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_RESOURCES, thread_name_prefix="posegen-act")
        self._handlers: dict[type, Callable[[Any], bool]] = {
            AddFinalizer: self.finalizers.add,
            RemoveFinalizer: self.finalizers.remove,
            RegisterRow: rows.register,
            StartWorker: pods.start_worker,
            CreatePod: pods.create,
            RestoreWorkerAccess: credentials.restore,
            RevokeCredentials: credentials.revoke,
            DeletePod: pods.delete,
            SetRowStatus: rows.set_status,
            PatchStatus: status.patch,
            PostEvent: self.events.submit,
        }

    def execute(self, plan: Plan, finalizers: Finalizers, may_act: Callable[[], bool] = lambda: True) -> ActResult:
        """Run the plan's actions: in order for each resource, resources side by side (a burst of
        new generations is mostly waiting on the API server). ``finalizers`` maps each resource to
        its observed (resourceVersion, finalizers); ``may_act`` is asked before each resource's
        actions (a replica that lost the lease meanwhile acts no more)."""
        self.finalizers.observed = finalizers
        self._may_act = may_act
        by_key: dict[tuple[str, str], list[Action]] = {}
        for action in plan.actions:
            by_key.setdefault(action.key, []).append(action)
        result = ActResult()
        for recovered, failed in self._pool.map(self._execute_for_one, by_key.values()):
            result.recovered += recovered
            result.failed += failed
        self.queue_view.sync(plan.queued)
        return result

    def _execute_for_one(self, actions: list[Action]) -> tuple[int, int]:
        """One resource's actions, in order; returns its (recovered, failed) recovery counts."""
        recovered = failed = 0
        broken = False
        if not self._may_act():
            return 0, 0
        for action in actions:
            if broken and isinstance(action, PatchStatus | PostEvent):
                continue  # the status tells only what was done; the next pass retries the rest
            try:
                done = self._handlers[type(action)](action)
            except Exception as error:
                broken, done = True, False
                self.metrics.action_errors.labels(action=type(action).__name__).inc()
                log.warning(
                    "%s for %s/%s failed, retried next pass: %s", type(action).__name__, *action.key, describe(error)
                )
            if isinstance(action, StartWorker) and action.reason is not None:
                recovered, failed = recovered + done, failed + (not done)
        return recovered, failed

    def close(self) -> None:
        self.events.close()
        self._pool.shutdown(wait=False)
