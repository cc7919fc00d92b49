"""The worker's run loop: resume from the checkpoint (repairing files a predecessor left unpublished),
then for each missing pose generate it, stage the PNG and keypoints, record the row and the
progress in one fenced transaction, publish the files if the row is this attempt's, renew the
heartbeat. SIGTERM stops it after the current pose, with everything done so far recorded."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TypeVar

import psycopg2
import redis

from posegen_common.contract import Superseded, pose_key, reference_for
from posegen_common.exit_codes import ExitCode
from posegen_worker import checkpoint, faults
from posegen_worker.checkpoint import Checkpoint, PoseRecorded, RecordedPose
from posegen_worker.database import CONNECTION_ERRORS, Database
from posegen_worker.generators import GenerationError, Generator, PoseRequest, build_generator
from posegen_worker.heartbeat import Heartbeat
from posegen_worker.outputs import OutputError, PoseFiles
from posegen_worker.settings import WorkerSettings

log = logging.getLogger("posegen.worker")
T = TypeVar("T")
# Named causes that end a run with their own exit code (anything else is a crash).
STOPPING_CAUSES = (GenerationError, faults.DependencyUnavailable, OutputError)


class Worker:
    def __init__(
        self, settings: WorkerSettings, database: Database, redis_client: redis.Redis, generator: Generator
    ) -> None:
        self.settings = settings
        self.database = database
        self.redis = redis_client
        self.generator = generator
        self.stop_requested = threading.Event()

    def run(self) -> ExitCode:
        """Produce the missing poses; known causes of stopping are named and get their exit code."""
        try:
            return self._run()
        except Superseded as superseded:
            log.warning("superseded, writing nothing more: %s", superseded)
            return ExitCode.SUPERSEDED
        except STOPPING_CAUSES as error:
            code, cause = faults.classify(error)
            faults.report(code, cause)
            return code

    def _run(self) -> ExitCode:
        s = self.settings
        try:
            job = self._ride_out_database_outage(self._load)
        except Superseded as superseded:
            log.warning("not starting: %s", superseded)
            return ExitCode.SUPERSEDED
        spec, done = job.spec, set(job.recorded)
        total = spec.total_expected_poses
        files = self._files(job)
        lost = files.repair(job.recorded)
        if lost:
            log.error(
                "%d recorded poses have no files and cannot be repaired (output volume lost, wiped, or an emptyDir"
                " that did not outlive its pod): %s",
                len(lost),
                _some(lost),
            )
        if done:
            log.info(
                "RECOVERY MODE: resuming generation %s at %d/%d (attempt %d), skipping %d completed poses",
                spec.id,
                len(done),
                total,
                s.attempt,
                len(done),
            )
        else:
            log.info("starting generation %s: %d poses (attempt %d)", spec.id, total, s.attempt)
        heartbeat = Heartbeat(self.redis, spec.id, s.attempt, s.pod_name, s.heartbeat_ttl, s.heartbeat_interval)
        heartbeat.start(len(done))
        try:
            for index in range(total):
                if self.stop_requested.is_set():
                    log.info("SIGTERM: stopping at checkpoint %d/%d; a new worker will resume", len(done), total)
                    return ExitCode.OK
                if index in done:
                    continue
                recorded = self._produce(job, files, index)
                done.add(index)
                heartbeat.beat(recorded.poses_completed)
                log.info("pose %d/%d recorded (index %d)", recorded.poses_completed, total, index)
                if not recorded.keep_going and len(done) < total:
                    log.info("suspended: stopping at checkpoint %d/%d", recorded.poses_completed, total)
                    return ExitCode.OK
            log.info("generation %s completed: %d/%d poses", spec.id, len(done), total)
            return ExitCode.OK
        finally:
            heartbeat.stop()

    def _load(self) -> Checkpoint:
        with self.database.transaction() as cursor:
            return checkpoint.load_checkpoint(cursor, self.settings.generation_id, self.settings.attempt)

    def _files(self, job: Checkpoint) -> PoseFiles:
        spec = job.spec
        return PoseFiles(output_directory(self.settings.output_dir, spec.namespace, spec.name, spec.id), job.attempt)

    def _produce(self, job: Checkpoint, files: PoseFiles, index: int) -> PoseRecorded:
        spec = job.spec
        reference = reference_for(spec.pose_library_ids, index)
        request = PoseRequest(
            generation_id=spec.id,
            project_id=spec.project_id,
            generation_type=spec.generation_type,
            text_prompt=spec.text_prompt,
            reference_id=reference,
            seed=spec.seed,
            index=index,
        )
        generated = self.generator.generate(request)
        keypoints = [asdict(k) for k in generated.keypoints]
        document = {
            "index": index,
            "attempt": job.attempt,
            "basePose": generated.base_pose,
            "keypoints": keypoints,
            "metadata": generated.metadata,
        }
        files.stage(index, {"png": generated.png, "json": json.dumps(document, indent=1).encode()})
        recorded = RecordedPose(
            index=index,
            pose_library_id=pose_key(reference, index),
            image_path=str(files.final(index, "png")),
            keypoints=keypoints,
            base_pose=generated.base_pose,
        )

        def record() -> PoseRecorded:
            with self.database.transaction() as cursor:
                return checkpoint.record_pose(cursor, spec.id, job.attempt, recorded)

        try:
            outcome = self._ride_out_database_outage(record)
        except Superseded:
            self._settle(job, files, index)
            raise
        # Any other failure leaves the staged files: whether the row is ours is unknown (the next
        # attempt's repair publishes them if it is, and drops them if not).
        if not outcome.ours:
            log.warning("pose %d was already recorded by another attempt: keeping its files", index)
            files.discard(index)
        elif not files.publish(index, job.attempt):
            log.error("pose %d is recorded but its staged files are gone: it has no files", index)
        return outcome

    def _settle(self, job: Checkpoint, files: PoseFiles, index: int) -> None:
        """Superseded while recording: the pose is still ours if an earlier try of the same record
        committed (its reply lost in a connection failure) before the new attempt began."""
        try:
            with self.database.transaction() as cursor:
                recorder = checkpoint.pose_recorder(cursor, job.spec.id, index)
        except psycopg2.Error:
            return  # unknown: the staged files wait for the next attempt's repair
        if recorder == job.attempt:
            log.info("pose %d was recorded by this attempt before it was superseded: publishing its files", index)
            files.publish(index, job.attempt)
        else:
            files.discard(index)

    def _ride_out_database_outage(self, operation: Callable[[], T]) -> T:
        """An outage is not the generation's fault: keep this worker's place and retry with backoff
        for up to the bound the operator sets (its stall timeout), then stop as
        DEPENDENCY_UNAVAILABLE (at once if asked to stop meanwhile). Retrying is safe: a transaction
        either committed or did nothing, and ``record_pose`` tells a pose this attempt already
        recorded."""
        bound = self.settings.dependency_retry_seconds
        down_since: float | None = None
        delay = 0.2
        while True:
            try:
                result = operation()
            except CONNECTION_ERRORS as error:
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    log.warning("Postgres unreachable (%s); retrying for up to %.0fs", _first_line(error), bound)
                elif now - down_since >= bound:
                    raise faults.DependencyUnavailable(
                        f"Postgres unreachable for {now - down_since:.0f}s ({_first_line(error)})"
                    ) from error
                if self.stop_requested.wait(min(delay, max(0.0, down_since + bound - now))):
                    raise faults.DependencyUnavailable(
                        f"asked to stop (SIGTERM) while Postgres was unreachable for "
                        f"{time.monotonic() - down_since:.0f}s ({_first_line(error)})"
                    ) from error
                delay = min(delay * 2, 5.0)
            else:
                if down_since is not None:
                    log.info("Postgres reachable again after %.0fs", time.monotonic() - down_since)
                return result


def output_directory(root: Path, namespace: str, name: str, generation_id: str) -> Path:
    """Where a generation's images go: <output>/<namespace>/<name>-<first 8 of the id>/."""
    return root / namespace / f"{name}-{generation_id[:8]}"


def _some(indexes: list[int], limit: int = 20) -> str:
    shown = ", ".join(map(str, indexes[:limit]))
    return f"[{shown}{', …' if len(indexes) > limit else ''}]"


def _first_line(error: psycopg2.Error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def run(settings: WorkerSettings) -> ExitCode:
    database = Database(settings.database_url, application_name=f"posegen-worker-{settings.pod_name}")
    redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    generator = build_generator(
        settings.generator,
        pose_seconds=settings.pose_seconds,
        flux_url=settings.flux_url,
        flux_api_key=settings.flux_api_key,
        flux_timeout=settings.flux_timeout,
        flux_max_attempts=settings.flux_max_attempts,
    )
    worker = Worker(settings, database, redis_client, generator)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current pose", signal.Signals(signum).name)
        worker.stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return worker.run()
    finally:
        database.close()
