"""Mass crash: kill -9 N workers at once, time until every one has resumed, then audit the ledger.

For each N (quick: 10 and 50; full: 10, 50 and 100) the benchmark creates N generations, waits
until every worker runs and has recorded a pose, SIGKILLs all N worker processes in one loop and
measures, per generation, the first pose of the new attempt (generated_pose.created_at; same clock
as the kill). In the 50 run the operator itself is SIGKILLed midway (once about half the
replacements have been claimed, or 5 s after the mass kill) and started again.

A pod watch of the benchmark's own splits the time: kill -> the node runner reports the old pod
Failed, kill -> the operator creates the replacement pod. The recovery reasons recorded in
pose_generation (Crashed, or Hung when the heartbeat expired before the crash was noticed) are
printed with the ledger.

Then every generation runs to completion and the ledger is audited: each (generation, pose_index)
recorded exactly once, 0 lost, 0 duplicated, and the seed's duplicate query returns nothing.
Target: all resumed within 30 s at 100 (issue 11; 60 s with the operator SIGKILLed as well). Each
worker is a Python process (~45 MB); starting 100 of them on 2 cores takes a while, and that
start-up is printed too.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import (
    BenchStack,
    Recorder,
    Report,
    command_line,
    generation_manifest,
    parser,
    print_table,
    process_rss_mib,
    summary,
)
from bench.ledger import audit
from posegen_devstack.processes import wait_for

NAME = "mass_crash"
POSE_SECONDS = 1.0


def operator_env(pose_seconds: float) -> dict[str, str]:
    return {
        "POSEGEN_POSE_SECONDS": str(pose_seconds),
        "POSEGEN_MAX_CONCURRENT": "200",
        "POSEGEN_WORKER_GRACE_SECONDS": "5",
    }


def poses_for(count: int, pose_seconds: float) -> int:
    """Long enough that no generation finishes before the slowest of N workers has started."""
    return max(30, math.ceil((2.0 * count + 40) / pose_seconds))


def scenario(bench: BenchStack, count: int, pose_seconds: float, restart_operator: bool) -> dict[str, Any]:
    poses = poses_for(count, pose_seconds)
    namespace = bench.namespace(f"mass{count}")
    print(
        f"\n-- {count} workers ({poses} poses each, {pose_seconds:g} s a pose)"
        + (", operator SIGKILLed midway" if restart_operator else ""),
        flush=True,
    )
    pods = Recorder(bench.core.list_namespaced_pod, namespace, budget=1800)
    pods.start()
    pods.ready.wait(10)
    created = time.monotonic()
    bench.create_generations(
        namespace, [generation_manifest(f"m{count}-{i:03d}", variationCount=poses) for i in range(count)]
    )

    def rows() -> list[tuple[Any, ...]]:
        return bench.sql(
            "SELECT id, name, attempt, poses_completed, status FROM pose_generation WHERE namespace = %s", namespace
        )

    def all_running() -> list[tuple[Any, ...]] | None:
        found = rows()
        ready = [r for r in found if r[4] == "processing" and r[3] >= 1]
        return found if len(ready) == count else None

    state = wait_for(all_running, timeout=60 + 10 * count, interval=0.5, what=f"{count} workers to record a pose")
    startup = time.monotonic() - created
    victims = {r[0]: (r[1], r[2]) for r in state}
    pids = {gid: bench.pod_pid(namespace, f"{name}-w{attempt}") for gid, (name, attempt) in victims.items()}
    rss = sum(process_rss_mib(pid) for pid in pids.values())
    done_at_kill = sum(r[3] for r in state)
    print(f"all {count} running after {startup:.1f} s (worker RSS total {rss:.0f} MiB); kill -9 all", flush=True)
    loop_started = time.time()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    print(f"killed {count} workers in {1000 * (killed - loop_started):.1f} ms", flush=True)

    restart: dict[str, float] = {}
    if restart_operator:

        def half_claimed() -> bool:
            claimed = bench.sql("SELECT count(*) FROM pose_generation WHERE namespace = %s AND attempt > 1", namespace)[
                0
            ][0]
            return bool(claimed >= count // 2)

        with_timeout = time.monotonic() + 5
        while time.monotonic() < with_timeout and not half_claimed():
            time.sleep(0.02)
        claimed = bench.sql("SELECT count(*) FROM pose_generation WHERE namespace = %s AND attempt > 1", namespace)[0][
            0
        ]
        bench.stack.stop_operator(sig=signal.SIGKILL)
        stopped = time.time()
        bench.stack.start_operator()
        ready = time.time()
        restart = {
            "operator_killed_after": stopped - killed,
            "claimed_before_kill": claimed,
            "down_for": ready - stopped,
        }
        print(
            f"operator SIGKILLed {stopped - killed:.2f} s after the mass kill "
            f"({claimed}/{count} replacements claimed), "
            f"ready again after {ready - stopped:.1f} s",
            flush=True,
        )

    def resumed() -> dict[str, float] | None:
        found = bench.sql(
            "SELECT p.generation_id, extract(epoch FROM min(p.created_at)) FROM generated_pose p "
            "JOIN pose_generation g ON g.id = p.generation_id WHERE g.namespace = %s AND p.attempt > 1 "
            "GROUP BY p.generation_id",
            namespace,
        )
        return {gid: float(t) for gid, t in found} if len(found) == count else None

    first_poses = wait_for(resumed, timeout=120 + 5 * count, interval=0.25, what=f"all {count} to resume")
    latencies = sorted(t - killed for t in first_poses.values())
    stats = summary(latencies)
    print(
        f"all {count} resumed {stats['max']:.1f} s after the kill (p50 {stats['p50']:.1f} s, p90 {stats['p90']:.1f} s)",
        flush=True,
    )
    # Where the time went, per generation, from the benchmark's own pod watch: the node runner
    # reporting the killed pod Failed, then the operator creating the replacement.
    events = pods.snapshot()
    pods.stop()
    reported, replaced = [], []
    for name, attempt in victims.values():
        old, new = f"{name}-w{attempt}", f"{name}-w{attempt + 1}"
        failed = next(
            (
                t
                for t, kind, o in events
                if t >= killed and o["metadata"]["name"] == old and (o.get("status") or {}).get("phase") == "Failed"
            ),
            None,
        )
        added = next((t for t, kind, o in events if kind == "ADDED" and o["metadata"]["name"] == new), None)
        if failed is not None:
            reported.append(failed - killed)
        if added is not None:
            replaced.append(added - killed)
    phases = {"kill->old pod reported Failed": summary(reported), "kill->replacement pod created": summary(replaced)}
    for label, values in phases.items():
        print(
            f"  {label}: p50 {values['p50']:.1f} s, p90 {values['p90']:.1f} s, max {values['max']:.1f} s "
            f"({values['n']} of {count})"
        )

    def completed() -> bool:
        return bool(
            bench.sql("SELECT count(*) FROM pose_generation WHERE namespace = %s AND status = 'completed'", namespace)[
                0
            ][0]
            == count
        )

    wait_for(completed, timeout=poses * pose_seconds + 120 + 5 * count, interval=1, what=f"all {count} to complete")
    ledger = audit(bench, [namespace])
    print(
        f"ledger: {len(ledger.generations)} generations, {ledger.pose_rows} pose rows, lost {ledger.lost}, "
        f"duplicated {ledger.duplicated}, generations not exactly once {ledger.inexact}, seed duplicate query rows "
        f"{ledger.seed_duplicates}; recoveries {ledger.recoveries()}",
        flush=True,
    )
    bench.delete_namespace(namespace, timeout=300)
    return {
        "workers": count,
        "poses_each": poses,
        "startup_seconds": startup,
        "worker_rss_mib_total": rss,
        "poses_done_at_kill": done_at_kill,
        "kill_loop_ms": 1000 * (killed - loop_started),
        "operator_restart": restart,
        "resume": stats,
        "phases": phases,
        # Raw seconds after the kill, for the timeline plot (bench/plots.py).
        "samples": {
            "old pod reported Failed": sorted(reported),
            "replacement pod created": sorted(replaced),
            "first pose of the new attempt": latencies,
        },
        "all_resumed_seconds": stats["max"],
        "lost": ledger.lost,
        "duplicated": ledger.duplicated,
        "not_exactly_once": ledger.inexact,
        "seed_duplicates": ledger.seed_duplicates,
        "recoveries": ledger.recoveries(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--counts", type=int, nargs="+", help="worker counts (quick: 10 50, full: 10 50 100)")
    p.add_argument("--restart-at", type=int, default=50, help="the count whose run also SIGKILLs the operator")
    p.add_argument("--pose-seconds", type=float, default=POSE_SECONDS)
    args = p.parse_args(argv)
    counts = args.counts or ([10, 50] if args.mode == "quick" else [10, 50, 100])
    env = operator_env(args.pose_seconds)
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {"counts": counts, "restart_operator_at": args.restart_at, "operator_env": env}
    results = []
    with BenchStack(NAME, env, keep=args.keep) as bench:
        for count in counts:
            results.append(scenario(bench, count, args.pose_seconds, restart_operator=count == args.restart_at))
    print()
    print_table(
        ["workers", "start-up", "resumed p50", "p90", "all resumed", "op restart", "lost", "dup", "seed dup rows"],
        [
            (
                r["workers"],
                r["startup_seconds"],
                r["resume"]["p50"],
                r["resume"]["p90"],
                r["all_resumed_seconds"],
                "yes" if r["operator_restart"] else "no",
                r["lost"],
                r["duplicated"],
                r["seed_duplicates"],
            )
            for r in results
        ],
    )
    report.figures = {"scenarios": results}
    largest = max(results, key=lambda r: r["workers"])
    report.target(f"all resumed at {largest['workers']} (target set at 100)", largest["all_resumed_seconds"], 30, "s")
    restarted = [r for r in results if r["operator_restart"]]
    if restarted:
        report.target(
            f"all resumed at {restarted[0]['workers']} with an operator SIGKILL",
            restarted[0]["all_resumed_seconds"],
            60,
            "s",
        )
    report.target("poses lost", sum(r["lost"] for r in results), 0, "")
    report.target("poses duplicated", sum(r["duplicated"] + r["seed_duplicates"] for r in results), 0, "")
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
