"""The controller loop: observe → plan → act, in one thread, one pass at a time.

Watch events (a pod failed, a resource changed) wake the loop at once; the periodic sweep runs it
every ``sweep_interval`` for hangs, stalls and deadlines; an admin trigger runs it on demand and
waits for the result. Passes run only on the replica that holds the lease. Keeping every pass in
one thread means no two passes ever race each other, and the asyncio loop is never blocked."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import kubernetes
import redis
from sqlalchemy import Engine

from posegen_common import checkpoint, keys
from posegen_operator.act import Actor, ActResult
from posegen_operator.builders import GROUP, PLURAL, VERSION, WORKER_SELECTOR
from posegen_operator.leader import LeaderElector
from posegen_operator.metrics import Metrics
from posegen_operator.observe import ObjectCache, Observer, slim
from posegen_operator.planning import Observed, Plan, PlanConfig, PodView, plan
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
DEBOUNCE_SECONDS = 0.05  # events arriving together (a burst of applies) share one pass
RELIST_SECONDS = 300.0
BANNER = "=" * 50


class Trigger(StrEnum):
    STARTUP = "startup"
    SWEEP = "sweep"
    MANUAL = "manual"
    EVENT = "event"


@dataclass
class TriggerResult:
    success: bool
    recovered: int
    failed: int


@dataclass
class _ManualRequest:
    done: threading.Event = field(default_factory=threading.Event)
    result: TriggerResult | None = None


@dataclass
class _RecoveryClock:
    """When a recovery began, to time it until the worker's next recorded pose."""

    started: dt.datetime
    attempt: int
    reason: str
    poses: int


class Controller:
    def __init__(
        self,
        settings: Settings,
        api: kubernetes.client.ApiClient,
        engine: Engine,
        redis_client: redis.Redis,
        metrics: Metrics,
        elector: LeaderElector,
        cache: ObjectCache | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.engine = engine
        self.redis = redis_client
        self.metrics = metrics
        self.elector = elector
        self.cache = cache or ObjectCache()
        self.observer = Observer(settings, engine, redis_client, self.cache)
        self.actor = Actor(settings, api, engine, redis_client, metrics, self.cache)
        self.config = PlanConfig(
            max_concurrent=settings.max_concurrent,
            heartbeat_ttl=settings.heartbeat_ttl,
            worker_startup_grace=settings.worker_startup_grace,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._manual: list[_ManualRequest] = []
        self._manual_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._clocks: dict[str, _RecoveryClock] = {}
        self._seen_progress: dict[str, int] = {}
        self.last_pass_ok = False

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="posegen-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.elector.release()

    def notify(self) -> None:
        """A watch event: run a pass soon (events arriving together share one pass)."""
        self._wake.set()

    def trigger(self, timeout: float = 30) -> TriggerResult:
        """The admin trigger: run a recovery pass now and report what it did (blocking)."""
        request = _ManualRequest()
        with self._manual_lock:
            self._manual.append(request)
        self._wake.set()
        if not request.done.wait(timeout) or request.result is None:
            return TriggerResult(False, 0, 0)
        return request.result

    # ---- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        first, woken = True, True
        next_sweep = next_relist = due_at = 0.0
        while not self._stopping.is_set():
            if not self.elector.ensure():
                self.metrics.leader.set(0)
                first = True  # whoever takes over runs the start-up sweep
                self._answer_manual(TriggerResult(False, 0, 0))
                self._stopping.wait(self.elector.retry_seconds)
                continue
            self.metrics.leader.set(1)
            with self._manual_lock:
                manual, self._manual = self._manual, []
            now = time.monotonic()
            # Waking only to renew the lease is not a reason for a pass.
            if first or manual or woken or now >= min(next_sweep, due_at):
                outcome = TriggerResult(False, 0, 0)
                try:
                    relisted = first or now >= next_relist
                    if relisted:
                        self.relist()
                        next_relist = now + RELIST_SECONDS
                    trigger = (
                        Trigger.STARTUP
                        if first
                        else Trigger.MANUAL
                        if manual
                        else Trigger.SWEEP
                        if now >= next_sweep
                        else Trigger.EVENT
                    )
                    outcome, retry_after, busy = self.run_pass(trigger, refresh=relisted)
                    first = False
                    if trigger != Trigger.EVENT:
                        next_sweep = time.monotonic() + self.settings.sweep_interval
                    # Something time-based is due (a grace, a backoff) or progress is worth showing.
                    soonest = [retry_after + 0.05] if retry_after is not None else []
                    soonest += [self.settings.status_interval] if busy else []
                    due_at = time.monotonic() + min(soonest, default=float("inf"))
                except Exception:
                    log.exception("reconcile pass failed; retrying")
                    self.last_pass_ok = False
                    due_at = time.monotonic() + 2.0
                for request in manual:
                    request.result = outcome
                    request.done.set()
            wait = min(next_sweep, due_at) - time.monotonic()
            woken = self._wake.wait(min(max(wait, 0.0), self.elector.renew_seconds))
            if woken:
                self._wake.clear()
                time.sleep(DEBOUNCE_SECONDS)

    def _answer_manual(self, result: TriggerResult) -> None:
        with self._manual_lock:
            manual, self._manual = self._manual, []
        for request in manual:
            request.result = result
            request.done.set()

    def relist(self) -> None:
        """Seed (and now and then heal) the watch-fed cache with one authoritative list per kind.
        Listed in pages, each slimmed as it arrives: thousands of objects decoded at once would set
        the process's memory high-water mark (which it keeps) every few minutes."""
        custom = kubernetes.client.CustomObjectsApi(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        listed: dict[str, list[dict[str, Any]]] = {"generations": [], "pods": []}
        versions: list[int] = []  # each list's resourceVersion: the cache keeps what the watch saw later

        def page(kind: str, namespace: str | None, token: str | None) -> dict[str, Any]:
            options: dict[str, Any] = {
                "limit": 500,
                "_continue": token,
                "_preload_content": False,
                "_request_timeout": (5, 30),
            }
            if kind == "pods":
                options["label_selector"] = WORKER_SELECTOR
                if namespace is None:
                    response = core.list_pod_for_all_namespaces(**options)
                else:
                    response = core.list_namespaced_pod(namespace, **options)
            elif namespace is None:
                response = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)
            else:
                response = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **options)
            result: dict[str, Any] = json.loads(response.data)
            return result

        for namespace in self.settings.namespaces or (None,):
            for kind, bodies in listed.items():
                listing = page(kind, namespace, None)
                versions.append(int(listing["metadata"]["resourceVersion"]))  # later pages share its snapshot
                while True:
                    bodies += [slim(kind, body) for body in listing["items"]]
                    token = listing["metadata"].get("continue")
                    if not token:
                        break
                    listing = page(kind, namespace, token)
        for kind, bodies in listed.items():
            self.cache.replace(kind, bodies, listed_at=min(versions))

    def run_pass(self, trigger: Trigger, *, refresh: bool) -> tuple[TriggerResult, float | None, bool]:
        started = time.perf_counter()
        observation = self.observer.observe(first_pass=trigger == Trigger.STARTUP, refresh=refresh)
        observed = observation.observed
        decided = plan(observed, self.config)
        self._log_recovery_start(trigger, decided)
        acted = self.actor.execute(decided, observation.finalizers)
        outcome = self._account(trigger, observed, decided, acted, observation.counts)
        self.metrics.pass_duration.labels(trigger=str(trigger)).observe(time.perf_counter() - started)
        self.metrics.last_pass.set(time.time())
        self.last_pass_ok = True
        busy = any(v.row is not None and v.row.status == "processing" for v in observed.generations)
        return outcome, decided.retry_after, busy

    # ---- the seed's log story, metrics and recovery stats --------------------------------------
    def _log_recovery_start(self, trigger: Trigger, decided: Plan) -> None:
        found = len(decided.recoveries)
        if trigger == Trigger.STARTUP:
            log.info(BANNER)
            log.info("🔄 Running startup recovery...")
            log.info(BANNER)
        if trigger in (Trigger.STARTUP, Trigger.MANUAL) or found:
            log.info("[Recovery] Starting job recovery... (trigger: %s)", trigger)
            log.info("[Recovery] Found %d stuck generations in database", found)
        for recovery in decided.recoveries:
            if recovery.outcome == "backoff":
                log.info(
                    "[Recovery] Generation %s (%d/%d completed) is %s; waiting out the backoff",
                    recovery.generation_id,
                    recovery.poses_completed,
                    recovery.total,
                    recovery.reason,
                )
            elif recovery.outcome == "fail":
                log.warning(
                    "[Recovery] Not recovering generation %s (%d/%d completed): %s",
                    recovery.generation_id,
                    recovery.poses_completed,
                    recovery.total,
                    recovery.detail,
                )

    def _account(
        self, trigger: Trigger, observed: Observed, decided: Plan, acted: ActResult, counts: dict[str, int]
    ) -> TriggerResult:
        failed = acted.failed + sum(1 for r in decided.recoveries if r.outcome == "fail")
        now = dt.datetime.now(dt.UTC)
        for recovery in decided.recoveries:
            if recovery.outcome == "recover":
                self.metrics.recoveries.labels(reason=str(recovery.reason), result="recovered").inc()
                view = next(v for v in observed.generations if v.key == recovery.key)
                row = view.row
                crashed_at = _crash_time(view.pods, row.attempt if row else 0)
                self._clocks[recovery.generation_id] = _RecoveryClock(
                    crashed_at or now, (row.attempt if row else 0) + 1, str(recovery.reason), recovery.poses_completed
                )
            elif recovery.outcome == "fail":
                self.metrics.recoveries.labels(reason=str(recovery.reason), result="failed").inc()
        self._observe_progress(observed)
        if trigger != Trigger.EVENT or decided.recoveries:
            if trigger in (Trigger.STARTUP, Trigger.MANUAL) or decided.recoveries:
                log.info("✅ Recovery complete: %d recovered, %d failed", acted.recovered, failed)
            if trigger == Trigger.STARTUP:
                log.info("✅ Cleanup complete")
                log.info(BANNER)
            self.metrics.last_sweep.set(time.time())
            self._store_run(now, acted.recovered, failed)
        if trigger != Trigger.EVENT:
            self._update_gauges(observed, counts)  # once per sweep: cheap scrapes, no query per event
        return TriggerResult(True, acted.recovered, failed)

    def _observe_progress(self, observed: Observed) -> None:
        for view in observed.generations:
            row = view.row
            if row is None:
                continue
            seen = self._seen_progress.get(row.id)
            if seen is not None and row.poses_completed > seen:
                self.metrics.poses_recorded.inc(row.poses_completed - seen)
            self._seen_progress[row.id] = row.poses_completed
            clock = self._clocks.get(row.id)
            if clock and row.attempt >= clock.attempt and row.poses_completed > clock.poses and row.last_pose_at:
                latency = (row.last_pose_at - clock.started).total_seconds()
                self.metrics.recovery_latency.labels(reason=clock.reason).observe(max(latency, 0.0))
                log.info(
                    "[Recovery] generation %s resumed: next pose recorded %.1fs after the %s",
                    row.id,
                    latency,
                    "crash" if clock.reason == "Crashed" else "detection",
                )
                del self._clocks[row.id]
            if row.final:
                self._clocks.pop(row.id, None)
                self._seen_progress.pop(row.id, None)
                if (
                    row.status == "completed"
                    and view.status.get("phase") != "Completed"
                    and row.started_at
                    and row.completed_at
                ):
                    self.metrics.generation_duration.observe((row.completed_at - row.started_at).total_seconds())

    def _update_gauges(self, observed: Observed, counts: dict[str, int]) -> None:
        for phase in ("Pending", "Queued", "Processing", "Recovering", "Suspended", "Completed", "Failed", "Cancelled"):
            self.metrics.generations.labels(phase=phase).set(counts.get(phase, 0))
        with self.engine.connect() as conn:
            stats = checkpoint.status_summary(conn, self.settings.stall_timeout)
        self.metrics.stalled.set(stats["stalled"])
        self.metrics.queued.set(stats["queued"])
        self.metrics.processing.set(stats["processing"])
        oldest = stats["oldest_started_at"]
        age = (observed.db_now - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.oldest_processing_age.set(age)

    def _store_run(self, when: dt.datetime, recovered: int, failed: int) -> None:
        try:
            pipe = self.redis.pipeline()
            pipe.set(keys.LAST_RECOVERY_RUN, when.isoformat().replace("+00:00", "Z"))
            if recovered:
                pipe.hincrby(keys.RECOVERY_TOTALS, "recovered", recovered)
            if failed:
                pipe.hincrby(keys.RECOVERY_TOTALS, "failed", failed)
            pipe.execute()
        except redis.RedisError as error:
            log.warning("recovery run not recorded in redis: %s", error)


def _crash_time(pods: tuple[PodView, ...], attempt: int) -> dt.datetime | None:
    """When the replaced worker died, if it did (the clock of a crash recovery starts there)."""
    return next((pod.finished_at for pod in pods if pod.attempt == attempt and pod.finished_at), None)
