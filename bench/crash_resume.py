"""Crash to resume: kill -9 a worker at a random pose, time until the next pose is recorded.

Each run creates a 40-pose generation (0.2 s a pose), waits for a random pose count (2..30) plus a
random fraction of a pose, SIGKILLs the worker process by its pid file, and measures on one clock
(this machine's; Postgres stamps generated_pose.created_at with the same clock):

  detection = kill -> the replacement pod exists (pod watch, ADDED with attempt+1)
              split into kill -> the old pod is reported Failed (node runner) and Failed -> new pod
  restart   = new pod -> the first pose of the new attempt (generated_pose.created_at)
              split into new pod -> Running (process started) and Running -> first pose
  total     = kill -> first pose of the new attempt

Every run then waits for Completed and checks its ledger (all 40 pose indexes once, status row
completed) and, at the end, the seed's duplicate query. Ratio: the seed's 1800 s threshold / p99.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import (
    GROUP,
    PLURAL,
    SEED_DUPLICATE_QUERY,
    SEED_THRESHOLD_SECONDS,
    VERSION,
    BenchError,
    BenchStack,
    Recorder,
    Report,
    command_line,
    generation_manifest,
    parser,
    print_table,
    summary,
)
from posegen_devstack.processes import wait_for

NAME = "crash_resume"
POSES = 40
POSE_SECONDS = 0.2
OPERATOR_ENV = {"POSEGEN_POSE_SECONDS": str(POSE_SECONDS), "POSEGEN_WORKER_GRACE_SECONDS": "5"}
PHASES = (
    "kill->old pod Failed",
    "Failed->new pod",
    "detection",
    "new pod->Running",
    "Running->pose",
    "restart",
    "total",
)


def _first(events: list[tuple[float, str, dict[str, Any]]], after: float, match: Any) -> float | None:
    return next((t for t, kind, obj in events if t >= after and kind != "DELETED" and match(obj)), None)


def _pod_is(name: str, phase: str | None = None) -> Any:
    def match(obj: dict[str, Any]) -> bool:
        return bool(
            obj["metadata"]["name"] == name and (phase is None or (obj.get("status") or {}).get("phase") == phase)
        )

    return match


def one_run(
    bench: BenchStack, namespace: str, name: str, kill_at: int, jitter: float, pods: Recorder, gens: Recorder
) -> dict[str, Any]:
    created = time.time()
    bench.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, generation_manifest(name, variationCount=POSES)
    )

    def progress() -> tuple[str, int, int] | None:
        rows = bench.sql(
            "SELECT id, attempt, poses_completed FROM pose_generation WHERE namespace = %s AND name = %s",
            namespace,
            name,
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows and rows[0][2] >= kill_at else None

    generation_id, attempt, _ = wait_for(progress, timeout=120, interval=0.02, what=f"{name} to reach pose {kill_at}")
    time.sleep(jitter)
    victim = f"{name}-w{attempt}"
    pid = bench.pod_pid(namespace, victim)
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    at_kill = bench.sql("SELECT poses_completed FROM pose_generation WHERE id = %s", generation_id)[0][0]

    def resumed() -> float | None:
        value = bench.sql(
            "SELECT extract(epoch FROM min(created_at)) FROM generated_pose WHERE generation_id = %s AND attempt > %s",
            generation_id,
            attempt,
        )[0][0]
        return float(value) if value is not None else None

    first_pose = wait_for(resumed, timeout=120, interval=0.05, what=f"{name} to record a pose after the kill")
    replacement = f"{name}-w{attempt + 1}"

    def completed() -> bool:
        return bool(bench.sql("SELECT status = 'completed' FROM pose_generation WHERE id = %s", generation_id)[0][0])

    wait_for(completed, timeout=120, interval=0.2, what=f"{name} to complete")
    pod_events = pods.snapshot()
    old_failed = _first(pod_events, killed, _pod_is(victim, "Failed"))
    new_pod = _first(pod_events, killed, _pod_is(replacement))
    running = _first(pod_events, killed, _pod_is(replacement, "Running"))
    recovery_seen = _first(
        gens.snapshot(), killed, lambda o: o["metadata"]["name"] == name and (o.get("status") or {}).get("recoveries")
    )
    ledger = bench.sql(
        "SELECT count(*), count(DISTINCT pose_index), min(pose_index), max(pose_index) FROM generated_pose "
        "WHERE generation_id = %s",
        generation_id,
    )[0]
    row = bench.sql("SELECT status, poses_completed, recoveries FROM pose_generation WHERE id = %s", generation_id)[0]
    if new_pod is None or running is None or old_failed is None:
        raise BenchError(f"{name}: the pod watch missed a transition (failed={old_failed}, new={new_pod})")

    return {
        "name": name,
        "kill_at_pose": at_kill,
        "created_to_kill": killed - created,
        "kill->old pod Failed": old_failed - killed,
        "Failed->new pod": new_pod - old_failed,
        "detection": new_pod - killed,
        "kill->status.recoveries": (recovery_seen - killed) if recovery_seen else None,
        "new pod->Running": running - new_pod,
        "Running->pose": first_pose - running,
        "restart": first_pose - new_pod,
        "total": first_pose - killed,
        "rows": ledger[0],
        "distinct": ledger[1],
        "exactly_once": ledger[0] == ledger[1] == POSES and ledger[2] == 0 and ledger[3] == POSES - 1,
        "row": list(row),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--runs", type=int, help="kills to time (quick 10, full 30)")
    p.add_argument("--seed", type=int, default=20251014, help="random seed for the kill points")
    p.add_argument("--real-node", action="store_true", help="workers in containers on the kubelet node")
    args = p.parse_args(argv)
    runs = args.runs or (10 if args.mode == "quick" else 30)
    report = Report(NAME + ("_real_node" if args.real_node else ""), args.mode, command_line(NAME, argv))
    report.settings = {
        "runs": runs,
        "poses": POSES,
        "seed": args.seed,
        "operator_env": OPERATOR_ENV,
        "node": "kubelet" if args.real_node else "process",
    }
    rng = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    with BenchStack(NAME, OPERATOR_ENV, keep=args.keep, real_node=args.real_node) as bench:
        namespace = bench.namespace("crash")
        pods = Recorder(bench.core.list_namespaced_pod, namespace, budget=runs * 120 + 300)
        gens = Recorder(
            bench.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, budget=runs * 120 + 300
        )
        pods.start()
        gens.start()
        pods.ready.wait(10)
        gens.ready.wait(10)
        time.sleep(0.5)
        print(f"{runs} runs: kill -9 at a random pose of a {POSES}-pose generation ({POSE_SECONDS} s a pose)")
        for i in range(runs):
            result = one_run(
                bench, namespace, f"crash-{i:03d}", rng.randint(2, 30), rng.uniform(0, POSE_SECONDS), pods, gens
            )
            results.append(result)
            print(
                f"  run {i + 1:>2}/{runs}: killed at pose {result['kill_at_pose']:>2}, detection "
                f"{result['detection']:.2f} s, restart {result['restart']:.2f} s, total {result['total']:.2f} s, "
                f"ledger {'ok' if result['exactly_once'] else 'WRONG'}",
                flush=True,
            )
        pods.stop()
        gens.stop()
        duplicates = bench.sql(SEED_DUPLICATE_QUERY)

    stats = {phase: summary([r[phase] for r in results]) for phase in PHASES}
    recoveries = [r["kill->status.recoveries"] for r in results if r["kill->status.recoveries"] is not None]
    stats["kill->status.recoveries"] = summary(recoveries)
    print()
    print_table(
        ["seconds", "p50", "p90", "p99", "max", "min"],
        [(k, s["p50"], s["p90"], s["p99"], s["max"], s["min"]) for k, s in stats.items()],
    )
    p99 = stats["total"]["p99"]
    wrong = [r["name"] for r in results if not r["exactly_once"]]
    print(
        f"\nledger: {len(results) - len(wrong)}/{len(results)} generations exactly once; "
        f"seed duplicate query rows: {len(duplicates)}"
    )
    print(
        f"the seed detects a crash after {SEED_THRESHOLD_SECONDS:.0f} s: 1800 s / p99 {p99:.2f} s = "
        f"x{SEED_THRESHOLD_SECONDS / p99:.0f}"
    )
    report.figures = {
        "runs": results,
        "summary": stats,
        "ratio_seed_threshold_to_p99": SEED_THRESHOLD_SECONDS / p99,
        "ledger_wrong": wrong,
        "seed_duplicates": len(duplicates),
    }
    report.target("crash -> next pose p99", p99, 10.0, "s")
    report.target("generations not exactly once", len(wrong) + len(duplicates), 0, "")
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
