"""Checkpoint overhead: the worker's loop with checkpoints and heartbeats vs the generator alone.

Against the benchmark stack's real Postgres and Redis (the operator is stopped, so nothing else
touches the rows), for the embedded generator paced at 0.1 s and 1 s a pose:

  generator only  EmbeddedGenerator.generate for N poses (render the PNG, sleep the pace)
  worker loop     posegen_worker.run.Worker.run on a registered generation of N poses: the same
                  generator, plus per pose the PNG and keypoints written to disk, the fenced
                  record_pose transaction (row lock, insert, progress) and a heartbeat SET, with
                  the background heartbeat thread running

The difference per pose is what checkpointing costs the loop; as a share of the pose time it is
the overhead (target < 1 % at 1 s poses). The checkpoint alone (record_pose transaction and
heartbeat SET, no generator) is also timed per call. Quick: fewer poses.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis

from bench.common import BenchStack, Report, command_line, parser, percentile, print_table
from posegen_common import checkpoint
from posegen_common.contract import GenerationSpec, pose_key
from posegen_common.database import create_db_engine
from posegen_common.exit_codes import ExitCode
from posegen_worker.checkpoint import RecordedPose, record_pose
from posegen_worker.database import Database
from posegen_worker.generators import PoseRequest
from posegen_worker.generators.embedded import EmbeddedGenerator
from posegen_worker.heartbeat import Heartbeat
from posegen_worker.run import Worker
from posegen_worker.settings import WorkerSettings

NAME = "checkpoint_overhead"
HEARTBEAT_TTL = 15.0


def register(engine: Any, total: int) -> GenerationSpec:
    spec = GenerationSpec(
        id=str(uuid.uuid4()),
        namespace="bench",
        name=f"overhead-{uuid.uuid4().hex[:6]}",
        project_id="bench",
        generation_type="TEXT_DESCRIPTION",
        text_prompt="a person running",
        pose_library_ids=None,
        seed=42,
        total_expected_poses=total,
    )
    with engine.begin() as conn:
        checkpoint.register(conn, spec)
        checkpoint.begin_attempt(conn, spec.id, 0, None)
    return spec


def generator_only(pose_seconds: float, poses: int, seed: int = 42) -> float:
    generator = EmbeddedGenerator(pose_seconds=pose_seconds)
    started = time.perf_counter()
    for index in range(poses):
        generator.generate(
            PoseRequest(str(uuid.uuid4()), "bench", "TEXT_DESCRIPTION", "a person running", None, seed, index)
        )
    return time.perf_counter() - started


def worker_loop(
    bench: BenchStack, engine: Any, database: Database, client: redis.Redis, pose_seconds: float, poses: int
) -> float:
    spec = register(engine, poses)
    with tempfile.TemporaryDirectory(prefix="posegen-bench-outputs-") as outputs:
        settings = WorkerSettings(
            generation_id=spec.id,
            attempt=1,
            database_url=bench.stack.database_url,
            redis_url=bench.stack.redis_url,
            output_dir=Path(outputs),
            pod_name="bench-worker",
            generator="embedded",
            pose_seconds=pose_seconds,
            flux_url=None,
            flux_api_key=None,
            flux_timeout=30,
            flux_max_attempts=5,
            heartbeat_ttl=HEARTBEAT_TTL,
            heartbeat_interval=HEARTBEAT_TTL / 5,
            dependency_retry_seconds=600,
            log_format="text",
        )
        worker = Worker(settings, database, client, EmbeddedGenerator(pose_seconds=pose_seconds))
        started = time.perf_counter()
        code = worker.run()
        elapsed = time.perf_counter() - started
    if code != ExitCode.OK:
        raise RuntimeError(f"the worker loop exited with {code!r}")
    with engine.connect() as conn:
        done = checkpoint.fetch_states(conn, [spec.id])[spec.id]
    if done.poses_completed != poses or done.status != "completed":
        raise RuntimeError(f"the worker loop recorded {done.poses_completed}/{poses} ({done.status})")
    return elapsed


def checkpoint_alone(engine: Any, database: Database, client: redis.Redis, calls: int) -> dict[str, list[float]]:
    spec = register(engine, calls + 1)
    generated = EmbeddedGenerator(pose_seconds=0).generate(
        PoseRequest(spec.id, "bench", "TEXT_DESCRIPTION", "a person running", None, 42, 0)
    )
    keypoints = [asdict(k) for k in generated.keypoints]
    heartbeat = Heartbeat(client, spec.id, 1, "bench-worker", HEARTBEAT_TTL, HEARTBEAT_TTL / 5)
    record_ms, beat_ms = [], []
    for index in range(calls):
        pose = RecordedPose(index, pose_key(None, index), f"/tmp/pose-{index:04d}.png", keypoints, generated.base_pose)
        started = time.perf_counter()
        with database.transaction() as cursor:
            record_pose(cursor, spec.id, 1, pose)
        recorded = time.perf_counter()
        heartbeat.poses = index + 1
        heartbeat.renew()
        beat_ms.append(1000 * (time.perf_counter() - recorded))
        record_ms.append(1000 * (recorded - started))
    return {"record_pose_ms": record_ms, "heartbeat_ms": beat_ms}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--rounds", type=int, help="alternating rounds of both variants (quick 1, full 3)")
    args = p.parse_args(argv)
    quick = args.mode == "quick"
    plan = {0.1: 50 if quick else 300, 1.0: 15 if quick else 60}
    rounds = args.rounds or (1 if quick else 3)
    calls = 200 if quick else 1000
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {"poses": {str(k): v for k, v in plan.items()}, "rounds": rounds, "checkpoint_calls": calls}
    rows, figures = [], []
    with BenchStack(NAME, {}, keep=args.keep) as bench:
        bench.stack.stop_operator()  # it would cancel rows that have no PoseGeneration
        engine = create_db_engine(bench.stack.database_url, application_name="posegen-bench", pool_size=1)
        database = Database(bench.stack.database_url, application_name="posegen-bench-worker")
        client = redis.Redis.from_url(bench.stack.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            alone = checkpoint_alone(engine, database, client, calls)
            for pose_seconds, poses in plan.items():
                bare, full = [], []
                for _ in range(rounds):
                    bare.append(generator_only(pose_seconds, poses) / poses)
                    full.append(worker_loop(bench, engine, database, client, pose_seconds, poses) / poses)
                bare_s, full_s = statistics.median(bare), statistics.median(full)
                extra_ms = 1000 * (full_s - bare_s)
                overhead = 100 * (full_s - bare_s) / bare_s
                print(
                    f"{pose_seconds:g} s poses x {poses} ({rounds} round(s)): generator {bare_s * 1000:.2f} ms/pose, "
                    f"worker loop {full_s * 1000:.2f} ms/pose -> +{extra_ms:.2f} ms ({overhead:.2f} %)",
                    flush=True,
                )
                rows.append((f"{pose_seconds:g}", poses, bare_s * 1000, full_s * 1000, extra_ms, overhead))
                figures.append(
                    {
                        "pose_seconds": pose_seconds,
                        "poses": poses,
                        "rounds": rounds,
                        "generator_ms_per_pose": bare_s * 1000,
                        "worker_ms_per_pose": full_s * 1000,
                        "checkpoint_ms_per_pose": extra_ms,
                        "overhead_percent": overhead,
                    }
                )
        finally:
            engine.dispose()
            database.close()
            client.close()
    print()
    print_table(["pose s", "poses", "generator ms/pose", "worker ms/pose", "+ms/pose", "overhead %"], rows)
    micro = {
        name: {"p50": statistics.median(v), "p90": percentile(v, 90), "p99": percentile(v, 99)}
        for name, v in alone.items()
    }
    print(
        f"checkpoint alone ({calls} calls): record_pose transaction p50 {micro['record_pose_ms']['p50']:.2f} ms "
        f"(p90 {micro['record_pose_ms']['p90']:.2f}), heartbeat SET p50 {micro['heartbeat_ms']['p50']:.2f} ms "
        f"(p90 {micro['heartbeat_ms']['p90']:.2f})"
    )
    report.figures = {"loops": figures, "checkpoint_alone": micro}
    at_one = next(f for f in figures if f["pose_seconds"] == 1.0)
    report.target("checkpoint overhead at 1 s poses", at_one["overhead_percent"], 1.0, "%")
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
