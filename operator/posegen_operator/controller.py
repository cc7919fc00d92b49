"""The controller loop: observe → plan → act, in one thread, one pass at a time.

Watch events (a pod failed, a resource changed) wake the loop at once; the periodic sweep runs it
every ``sweep_interval`` for hangs, stalls and deadlines; an admin trigger runs it on demand and
waits for the result. Passes run only on the replica that holds the lease. Keeping every pass in
one thread means no two passes ever race each other, and the asyncio loop is never blocked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine

from posegen_common.database import is_connection_error
from posegen_operator.act import Actor
from posegen_operator.actions import Plan
from posegen_operator.cache import ObjectCache
from posegen_operator.heartbeats import HeartbeatMonitor
from posegen_operator.kube import KubeClient
from posegen_operator.leader import LeaderElector
from posegen_operator.listing import relist
from posegen_operator.metrics import Metrics
from posegen_operator.model import PlanConfig
from posegen_operator.observe import Observer
from posegen_operator.poison import PoisonLog
from posegen_operator.reporting import Reporter, Trigger, TriggerResult
from posegen_operator.rules import plan
from posegen_operator.settings import Settings
from posegen_operator.status import outage_patches

log = logging.getLogger("posegen.operator")
DEBOUNCE_SECONDS = 0.05  # events arriving together (a burst of applies) share one pass
RELIST_SECONDS = 300.0
TICK_SECONDS = 5.0  # the loop comes round at least this often, pass or not: the liveness probe's pulse
FAILURE_BACKOFF_SECONDS = (2.0, 60.0)  # after a failed pass: first delay, doubling up to the cap
NOT_RUN = TriggerResult(False, 0, 0)


@dataclass
class _ManualRequest:
    done: threading.Event = field(default_factory=threading.Event)
    result: TriggerResult | None = None


class Controller:
    def __init__(
        self,
        settings: Settings,
        api: KubeClient,
        engine: Engine,
        redis_client: redis.Redis,
        metrics: Metrics,
        elector: LeaderElector,
        cache: ObjectCache | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.elector = elector
        self.cache = cache or ObjectCache()
        self.heartbeats = HeartbeatMonitor(redis_client, settings.heartbeat_ttl, settings.identity)
        self.poison = PoisonLog(metrics)
        self.observer = Observer(settings, engine, self.heartbeats, self.cache, self.poison)
        self.actor = Actor(settings, api, engine, redis_client, metrics, self.cache)
        self.reporter = Reporter(engine, redis_client, metrics, settings.stall_timeout)
        self.config = PlanConfig(
            max_concurrent=settings.max_concurrent,
            heartbeat_ttl=settings.heartbeat_ttl,
            worker_startup_grace=settings.worker_startup_grace,
            worker_start_timeout=settings.worker_start_timeout,
            max_per_namespace=settings.max_concurrent_per_namespace,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._manual: list[_ManualRequest] = []
        self._manual_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_pass_ok = False
        self.last_iteration = time.monotonic()
        self._database_down_since: float | None = None
        self._database_back_at: float | None = None
        elector.on_change = lambda _leading: self._wake.set()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.elector.start()
        self._thread = threading.Thread(target=self._run, name="posegen-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.actor.close()
        self.elector.stop()

    def alive(self) -> bool:
        """False when the loop has not come round for several sweeps (a pass wedged on a call that
        never returns): the liveness probe then fails and Kubernetes restarts the operator."""
        allowed = max(3 * self.settings.sweep_interval, 3 * TICK_SECONDS)
        return time.monotonic() - self.last_iteration < allowed

    def notify(self) -> None:
        """A watch event: run a pass soon (events arriving together share one pass)."""
        self._wake.set()

    def heartbeat_expired(self, generation_id: str, attempt: int) -> None:
        """Redis reported a heartbeat expired: a pass soon decides whether that worker hangs."""
        self.heartbeats.expired(generation_id, attempt)
        self._wake.set()

    def trigger(self, timeout: float = 30) -> TriggerResult:
        """The admin trigger: run a recovery pass now and report what it did (blocking)."""
        request = _ManualRequest()
        with self._manual_lock:
            self._manual.append(request)
        self._wake.set()
        if not request.done.wait(timeout) or request.result is None:
            return NOT_RUN
        return request.result

    # ---- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        startup_due, event_arrived = True, True
        next_sweep = next_relist = due_at = 0.0
        failures = 0
        while not self._stopping.is_set():
            self.last_iteration = time.monotonic()
            if not self.elector.is_leader:
                self.metrics.leader.set(0)
                startup_due = True  # whoever takes over runs the start-up sweep
                self._answer_manual(self._take_manual(), NOT_RUN)
                self._wake.wait(self.elector.retry_seconds)
                self._wake.clear()
                continue
            self.metrics.leader.set(1)
            manual = self._take_manual()
            now = time.monotonic()
            # Waking only for the pulse is not a reason for a pass.
            if startup_due or manual or event_arrived or now >= min(next_sweep, due_at):
                outcome = NOT_RUN
                try:
                    refresh = startup_due or now >= next_relist
                    if refresh:
                        relist(self.api, self.settings.namespaces, self.cache)
                        next_relist = now + RELIST_SECONDS
                    trigger = (
                        Trigger.STARTUP
                        if startup_due
                        else Trigger.MANUAL
                        if manual
                        else Trigger.SWEEP
                        if now >= next_sweep
                        else Trigger.EVENT
                    )
                    outcome, retry_after, busy = self.run_pass(trigger, refresh=refresh)
                    startup_due, failures = False, 0
                    if trigger != Trigger.EVENT:
                        next_sweep = time.monotonic() + self.settings.sweep_interval
                    # Something time-based is due (a grace, a backoff) or progress is worth showing.
                    soonest = [retry_after + 0.05] if retry_after is not None else []
                    soonest += [self.settings.status_interval] if busy else []
                    due_at = time.monotonic() + min(soonest, default=float("inf"))
                except Exception as error:
                    if is_connection_error(error):
                        self._database_unavailable(error)
                    # Back off while passes keep failing (a dependency down): no re-list storm.
                    failures += 1
                    first, cap = FAILURE_BACKOFF_SECONDS
                    delay = min(cap, first * 2 ** (failures - 1))
                    if failures == 1:
                        log.exception("reconcile pass failed; retrying in %.0fs", delay)
                    else:
                        log.warning(
                            "reconcile pass failed again (%d in a row; next in %.0fs): %s", failures, delay, error
                        )
                    self.last_pass_ok = False
                    due_at = next_sweep = time.monotonic() + delay
                self._answer_manual(manual, outcome)
            wait = min(next_sweep, due_at) - time.monotonic()
            event_arrived = self._wake.wait(min(max(wait, 0.0), TICK_SECONDS))
            if event_arrived:
                self._wake.clear()
                time.sleep(DEBOUNCE_SECONDS)

    def _take_manual(self) -> list[_ManualRequest]:
        with self._manual_lock:
            manual, self._manual = self._manual, []
        return manual

    @staticmethod
    def _answer_manual(requests: list[_ManualRequest], result: TriggerResult) -> None:
        for request in requests:
            request.result = result
            request.done.set()

    def _database_unavailable(self, error: Exception) -> None:
        """No pass can decide without the database: say so on every generation in play (the
        workers wait for it), and restart the stall clocks once it is back."""
        self.metrics.dependency_up.labels(dependency="database").set(0)
        self._database_down_since = self._database_down_since or time.monotonic()
        message = f"Postgres is unreachable ({type(error).__name__}): progress is not checked meanwhile"
        patches = outage_patches(self.cache.generations(), "DatabaseUnavailable", message, dt.datetime.now(dt.UTC))
        if patches:
            self.actor.execute(Plan(actions=list(patches)), {}, may_act=lambda: self.elector.is_leader)

    def _database_back_for(self) -> float | None:
        """Seconds since the database came back after an outage, while that is within a stall
        timeout: no pose could be recorded during the outage, so it does not count as a stall."""
        if self._database_down_since is not None:
            self._database_down_since = None
            self._database_back_at = time.monotonic()
            self.metrics.dependency_up.labels(dependency="database").set(1)
        if self._database_back_at is None:
            return None
        back_for = time.monotonic() - self._database_back_at
        if back_for > self.settings.stall_timeout:
            self._database_back_at = None
            return None
        return back_for

    def run_pass(self, trigger: Trigger, *, refresh: bool) -> tuple[TriggerResult, float | None, bool]:
        started = time.perf_counter()
        observation = self.observer.observe(first_pass=trigger == Trigger.STARTUP, refresh=refresh)
        snapshot = dataclasses.replace(observation.snapshot, database_back_for=self._database_back_for())
        self.metrics.dependency_up.labels(dependency="redis").set(1 if snapshot.redis_reachable else 0)
        decided = plan(snapshot, self.config)
        for key, uid, error in decided.skipped:
            self.poison.report("generations", uid, f"PoseGeneration {key[0]}/{key[1]} (not decided)", error)
        self.reporter.recovery_started(trigger, decided)
        acted = self.actor.execute(decided, observation.finalizers, may_act=lambda: self.elector.is_leader)
        outcome = self.reporter.pass_done(trigger, snapshot, decided, acted.recovered, acted.failed, observation.counts)
        self.metrics.pass_duration.labels(trigger=str(trigger)).observe(time.perf_counter() - started)
        self.metrics.last_pass.set(time.time())
        self.last_pass_ok = True
        busy = any(v.row is not None and v.row.status == "processing" for v in snapshot.generations)
        return outcome, decided.retry_after, busy
