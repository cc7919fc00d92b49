"""Reporting a pass: the seed's recovery log story, metrics, recovery latency and the run
statistics the seed's status endpoint shows (kept in Redis)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

import redis
from sqlalchemy import Engine

from posegen_common import checkpoint, keys
from posegen_operator.actions import Plan
from posegen_operator.metrics import Metrics
from posegen_operator.model import PodView, Snapshot

log = logging.getLogger("posegen.operator")
BANNER = "=" * 50
PHASES = ("Pending", "Queued", "Processing", "Recovering", "Suspended", "Completed", "Failed", "Cancelled")


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
class _RecoveryClock:
    """When a recovery began, to time it until the worker's next recorded pose."""

    started: dt.datetime
    attempt: int
    reason: str
    poses: int


class Reporter:
    def __init__(self, engine: Engine, redis_client: redis.Redis, metrics: Metrics, stall_timeout: float) -> None:
        self.engine = engine
        self.redis = redis_client
        self.metrics = metrics
        self.stall_timeout = stall_timeout
        self._clocks: dict[str, _RecoveryClock] = {}
        self._seen_progress: dict[str, int] = {}

    def recovery_started(self, trigger: Trigger, decided: Plan) -> None:
        """The seed's opening lines, before the pass acts."""
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

    def pass_done(
        self,
        trigger: Trigger,
        snapshot: Snapshot,
        decided: Plan,
        recovered: int,
        action_failures: int,
        counts: dict[str, int],
    ) -> TriggerResult:
        """The seed's closing lines, recovery metrics and latency clocks, gauges once per sweep."""
        failed = action_failures + sum(1 for r in decided.recoveries if r.outcome == "fail")
        now = dt.datetime.now(dt.UTC)
        for recovery in decided.recoveries:
            if recovery.outcome == "recover":
                self.metrics.recoveries.labels(reason=str(recovery.reason), result="recovered").inc()
                view = next(v for v in snapshot.generations if v.key == recovery.key)
                row = view.row
                crashed_at = _crash_time(view.pods, row.attempt if row else 0)
                self._clocks[recovery.generation_id] = _RecoveryClock(
                    crashed_at or now, (row.attempt if row else 0) + 1, str(recovery.reason), recovery.poses_completed
                )
            elif recovery.outcome == "fail":
                self.metrics.recoveries.labels(reason=str(recovery.reason), result="failed").inc()
        self._observe_progress(snapshot)
        if trigger != Trigger.EVENT or decided.recoveries:
            if trigger in (Trigger.STARTUP, Trigger.MANUAL) or decided.recoveries:
                log.info("✅ Recovery complete: %d recovered, %d failed", recovered, failed)
            if trigger == Trigger.STARTUP:
                log.info("✅ Cleanup complete")
                log.info(BANNER)
            self.metrics.last_sweep.set(time.time())
            self._store_run(now, recovered, failed)
        if trigger != Trigger.EVENT:
            self._update_gauges(snapshot, counts)  # once per sweep: cheap scrapes, no query per event
        return TriggerResult(True, recovered, failed)

    def _observe_progress(self, snapshot: Snapshot) -> None:
        for view in snapshot.generations:
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

    def _update_gauges(self, snapshot: Snapshot, counts: dict[str, int]) -> None:
        for phase in PHASES:
            self.metrics.generations.labels(phase=phase).set(counts.get(phase, 0))
        with self.engine.connect() as conn:
            stats = checkpoint.status_summary(conn, self.stall_timeout)
        self.metrics.stalled.set(stats["stalled"])
        self.metrics.queued.set(stats["queued"])
        self.metrics.processing.set(stats["processing"])
        oldest = stats["oldest_started_at"]
        age = (snapshot.db_now - oldest).total_seconds() if oldest is not None else 0.0
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
