"""The worker's run loop: resume from the checkpoint, then for each missing pose generate it, store
the PNG and keypoints, record the row and the progress in one fenced transaction, renew the
heartbeat. SIGTERM stops it after the current pose, with everything done so far recorded."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TypeVar

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from posegen_common import checkpoint
from posegen_common.checkpoint import Checkpoint, PoseRecorded, RecordedPose, Superseded
from posegen_common.database import create_db_engine
from posegen_common.exit_codes import ExitCode
from posegen_common.schema import pose_key, reference_for
from posegen_worker.generators import (
    GeneratedPose,
    Generator,
    PermanentGenerationError,
    PoseRequest,
    TransientGenerationError,
    UpstreamRefusedError,
    build_generator,
)
from posegen_worker.heartbeat import Heartbeat
from posegen_worker.settings import WorkerSettings

log = logging.getLogger("posegen.worker")
T = TypeVar("T")


class Worker:
    def __init__(
        self, settings: WorkerSettings, engine: Engine, redis_client: redis.Redis, generator: Generator
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis_client
        self.generator = generator
        self.stop_requested = threading.Event()

    def run(self) -> ExitCode:
        s = self.settings
        try:
            job = self._with_database_retry(self._load)
        except Superseded as superseded:
            log.warning("not starting: %s", superseded)
            return ExitCode.SUPERSEDED
        spec, done = job.spec, set(job.completed_indexes)
        total = spec.total_expected_poses
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
                recorded = self._produce(job, index)
                done.add(index)
                heartbeat.beat(recorded.poses_completed)
                log.info("pose %d/%d recorded (index %d)", recorded.poses_completed, total, index)
                if not recorded.keep_going and len(done) < total:
                    log.info("suspended: stopping at checkpoint %d/%d", recorded.poses_completed, total)
                    return ExitCode.OK
            log.info("generation %s completed: %d/%d poses", spec.id, len(done), total)
            return ExitCode.OK
        except Superseded as superseded:
            log.warning("superseded, writing nothing more: %s", superseded)
            return ExitCode.SUPERSEDED
        except PermanentGenerationError as error:
            log.error("permanent failure: %s", error)
            return ExitCode.UPSTREAM_REFUSED if isinstance(error, UpstreamRefusedError) else ExitCode.BAD_INPUT
        except TransientGenerationError as error:
            log.error("generator unavailable, exiting for a recovery: %s", error)
            return ExitCode.FAILED
        finally:
            heartbeat.stop()

    def _load(self) -> Checkpoint:
        with self.engine.begin() as conn:
            return checkpoint.load_checkpoint(conn, self.settings.generation_id, self.settings.attempt)

    def _produce(self, job: Checkpoint, index: int) -> PoseRecorded:
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
        image_path = self._store(spec.namespace, spec.name, spec.id, index, generated)
        recorded = RecordedPose(
            index=index,
            pose_library_id=pose_key(reference, index),
            image_path=str(image_path),
            keypoints=[asdict(k) for k in generated.keypoints],
            base_pose=generated.base_pose,
        )

        def record() -> PoseRecorded:
            with self.engine.begin() as conn:
                return checkpoint.record_pose(conn, spec.id, self.settings.attempt, recorded)

        return self._with_database_retry(record)

    def _store(self, namespace: str, name: str, generation_id: str, index: int, generated: GeneratedPose) -> Path:
        """Write the PNG and its keypoints atomically; a redo after a crash rewrites identical files."""
        directory = output_directory(self.settings.output_dir, namespace, name, generation_id)
        directory.mkdir(parents=True, exist_ok=True)
        image = directory / f"pose-{index:04d}.png"
        keypoints = directory / f"pose-{index:04d}.json"
        document = {
            "index": index,
            "basePose": generated.base_pose,
            "keypoints": [asdict(k) for k in generated.keypoints],
            "metadata": generated.metadata,
        }
        for path, content in ((image, generated.png), (keypoints, json.dumps(document, indent=1).encode())):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return image

    def _with_database_retry(self, operation: Callable[[], T]) -> T:
        """Ride out a database restart: retry connection-level failures for a bounded time."""
        deadline = time.monotonic() + self.settings.database_retry_seconds
        delay = 0.2
        while True:
            try:
                return operation()
            except (OperationalError, DBAPIError) as error:
                if not _is_connection_error(error) or time.monotonic() > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.1fs", type(error.orig).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def output_directory(root: Path, namespace: str, name: str, generation_id: str) -> Path:
    """Where a generation's images go: <output>/<namespace>/<name>-<first 8 of the id>/."""
    return root / namespace / f"{name}-{generation_id[:8]}"


def _is_connection_error(error: DBAPIError) -> bool:
    return bool(error.connection_invalidated) or isinstance(error, OperationalError)


def run(settings: WorkerSettings) -> ExitCode:
    engine = create_db_engine(
        settings.database_url, application_name=f"posegen-worker-{settings.pod_name}", pool_size=1
    )
    redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    generator = build_generator(
        settings.generator,
        pose_seconds=settings.pose_seconds,
        flux_url=settings.flux_url,
        flux_api_key=settings.flux_api_key,
        flux_timeout=settings.flux_timeout,
        flux_max_attempts=settings.flux_max_attempts,
    )
    worker = Worker(settings, engine, redis_client, generator)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current pose", signal.Signals(signum).name)
        worker.stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return worker.run()
    finally:
        engine.dispose()
