"""Hang detection: SIGSTOP a worker (alive pod, no heartbeat) and time until it is replaced.

The operator runs with the default heartbeat TTL (15 s; workers renew every TTL/5 = 3 s), sweep
interval (10 s) and worker start-up grace (30 s); the effective settings are printed. Three kinds:

  late     the worker has run longer than TTL + start-up grace (45 s) when it freezes: the
           steady state. Target: replaced within TTL + 10 s = 25 s of the SIGSTOP.
  early    the worker freezes ~2 s after its first pose: it has reported in (worker_started_at),
           so it is judged by the TTL alone as well. Same target.
  startup  the worker freezes as soon as its process exists, before it reports in: the operator
           then allows TTL + start-up grace from the pod's start (expect ~45 s; no target).

For each frozen worker it records the heartbeat key's remaining TTL at the SIGSTOP (so: when it
expired), the first status with lastRecoveryReason == Hung, and the replacement pod (attempt+1).
For comparison, BullMQ (the seed's queue) finds a stalled job only after its lock expires (30 s)
at its next stalled-job check (every 30 s): 30-60 s.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis

from bench.common import (
    GROUP,
    PLURAL,
    VERSION,
    BenchStack,
    Recorder,
    Report,
    command_line,
    generation_manifest,
    parser,
    print_table,
    read_pids,
    summary,
)

NAME = "hang"
POSE_SECONDS = 0.5
# Defaults on purpose for everything timing hangs (the effective values are printed); only the pose
# pace is set, and a concurrency limit above the number of frozen workers (the default is 10).
OPERATOR_ENV = {
    "POSEGEN_POSE_SECONDS": str(POSE_SECONDS),
    "POSEGEN_WORKER_GRACE_SECONDS": "5",
    "POSEGEN_MAX_CONCURRENT": "50",
}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--late", type=int, help="workers frozen after 45 s of running (quick 3, full 8)")
    p.add_argument("--early", type=int, help="workers frozen 2 s after their first pose (quick 1, full 4)")
    p.add_argument("--startup", type=int, help="workers frozen before they report in (quick 1, full 2)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    quick = args.mode == "quick"
    counts = {
        "late": args.late if args.late is not None else (3 if quick else 8),
        "early": args.early if args.early is not None else (1 if quick else 4),
        "startup": args.startup if args.startup is not None else (1 if quick else 2),
    }
    report = Report(NAME, args.mode, command_line(NAME, argv))
    rng = random.Random(args.seed)
    frozen: dict[str, dict[str, Any]] = {}
    stopped_pids: list[int] = []
    with BenchStack(NAME, OPERATOR_ENV, keep=args.keep) as bench:
        effective = bench.operator_settings()
        ttl, grace = effective.heartbeat_ttl, effective.worker_startup_grace
        report.settings = {
            "heartbeat_ttl_s": ttl,
            "heartbeat_interval_s": effective.heartbeat_interval,
            "sweep_interval_s": effective.sweep_interval,
            "status_interval_s": effective.status_interval,
            "worker_startup_grace_s": grace,
            "counts": counts,
            "operator_env": OPERATOR_ENV,
        }
        print(
            f"settings: heartbeat TTL {ttl:g} s (renewed every {effective.heartbeat_interval:g} s), sweep interval "
            f"{effective.sweep_interval:g} s, passes every {effective.status_interval:g} s while a generation "
            f"processes, start-up grace {grace:g} s"
        )
        namespace = bench.namespace("hang")
        pods = Recorder(bench.core.list_namespaced_pod, namespace, budget=900)
        gens = Recorder(bench.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, budget=900)
        pods.start()
        gens.start()
        pods.ready.wait(10)
        gens.ready.wait(10)
        client = redis.Redis.from_url(bench.stack.redis_url, socket_timeout=5)
        plan: dict[str, dict[str, Any]] = {}
        for kind, count in counts.items():
            for i in range(count):
                name = f"{kind}-{i:02d}"
                body = bench.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, generation_manifest(name, variationCount=400)
                )
                plan[name] = {"uid": body["metadata"]["uid"], "kind": kind, "offset": rng.uniform(0, 3)}
        print(", ".join(f"{n} {k}" for k, n in counts.items()) + " hangs; waiting for the workers ...", flush=True)
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and len(frozen) < len(plan):
                now = time.time()
                events = pods.snapshot()
                for name, item in plan.items():
                    if name in frozen:
                        continue
                    pod = f"{name}-w1"
                    pid_file = bench.state_dir / "node" / namespace / f"{pod}.pid"
                    if item["kind"] == "startup":
                        pids = read_pids(pid_file)
                        if not pids or not bench.owns(pids[0]):
                            continue
                        item.setdefault("running", now)
                        due = now
                    else:
                        running = next(
                            (
                                t
                                for t, _, o in events
                                if o["metadata"]["name"] == pod and (o.get("status") or {}).get("phase") == "Running"
                            ),
                            None,
                        )
                        if running is None:
                            continue
                        item["running"] = running
                        if item["kind"] == "late":
                            due = running + ttl + grace + 2 + item["offset"]
                        else:
                            poses = bench.sql("SELECT poses_completed FROM pose_generation WHERE id = %s", item["uid"])
                            if not poses or poses[0][0] < 1:
                                continue
                            item.setdefault("first_pose_seen", now)
                            due = item["first_pose_seen"] + 2
                    if now < due:
                        continue
                    pid = bench.pod_pid(namespace, pod)
                    os.kill(pid, signal.SIGSTOP)
                    stopped = time.time()
                    stopped_pids.append(pid)
                    ttl_ms = client.pttl(f"posegen:heartbeat:{item['uid']}")
                    frozen[name] = {
                        "stopped": stopped,
                        "running_for": stopped - item["running"],
                        "heartbeat_expires_in": ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else 0.0,
                    }
                    print(f"  SIGSTOP {pod} after {stopped - item['running']:.1f} s of running", flush=True)
                time.sleep(0.02)
            print("waiting for the replacements ...", flush=True)
            results = _wait_for_replacements(plan, frozen, pods, gens, deadline=time.monotonic() + 240)
        finally:
            for pid in stopped_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            pods.stop()
            gens.stop()

    rows = []
    for r in results:
        rows.append(
            (
                r["name"],
                r["running_for"],
                r["heartbeat_expires_in"],
                r["to_hung_status"],
                r["to_new_pod"],
                r["expired_to_new_pod"],
            )
        )
    print()
    print_table(
        ["worker", "ran for (s)", "stop->hb expiry", "stop->Hung status", "stop->new pod", "expiry->new pod"], rows
    )
    by_kind = {
        kind: summary([r["to_new_pod"] for r in results if r["kind"] == kind and r["to_new_pod"] is not None])
        for kind in counts
        if any(r["kind"] == kind and r["to_new_pod"] is not None for r in results)
    }
    missing = [r["name"] for r in results if r["to_new_pod"] is None]
    never_frozen = sorted(set(plan) - {r["name"] for r in results})
    if never_frozen:
        report.note(f"never frozen (their workers did not start in time): {', '.join(never_frozen)}")
    print()
    for kind, stats in by_kind.items():
        print(f"{kind:<8} hangs: SIGSTOP -> replacement p50 {stats['p50']:.1f} s, max {stats['max']:.1f} s")
    print(
        f"(target TTL + 10 s = {ttl + 10:g} s; TTL + start-up grace = {ttl + grace:g} s; BullMQ's stall check: 30-60 s)"
    )
    report.figures = {
        "workers": results,
        "by_kind": by_kind,
        "not_replaced": missing,
        "bullmq_stall_detection_s": [30, 60],
    }
    for kind in ("late", "early"):
        if kind in by_kind:
            report.target(f"{kind} hang: SIGSTOP -> replacement (max)", by_kind[kind]["max"], ttl + 10, "s")
    if "startup" in by_kind:
        report.target(
            "hang before reporting in: SIGSTOP -> replacement (max)", by_kind["startup"]["max"], ttl + grace + 10, "s"
        )
    report.target("frozen workers never replaced", len(missing), 0, "")
    report.save()
    return report.figures


def _wait_for_replacements(
    plan: dict[str, dict[str, Any]],
    frozen: dict[str, dict[str, Any]],
    pods: Recorder,
    gens: Recorder,
    *,
    deadline: float,
) -> list[dict[str, Any]]:
    def found() -> dict[str, tuple[float | None, float | None]]:
        pod_events, gen_events = pods.snapshot(), gens.snapshot()
        seen: dict[str, tuple[float | None, float | None]] = {}
        for name, item in frozen.items():
            new_pod = next(
                (t for t, kind, o in pod_events if kind == "ADDED" and o["metadata"]["name"] == f"{name}-w2"), None
            )
            hung = next(
                (
                    t
                    for t, _, o in gen_events
                    if t >= item["stopped"]
                    and o["metadata"]["name"] == name
                    and (o.get("status") or {}).get("lastRecoveryReason") == "Hung"
                ),
                None,
            )
            seen[name] = (hung, new_pod)
        return seen

    seen = found()
    while time.monotonic() < deadline and any(v[1] is None or v[0] is None for v in seen.values()):
        time.sleep(0.2)
        seen = found()
    results = []
    for name, item in frozen.items():
        hung, new_pod = seen[name]
        stopped = item["stopped"]
        results.append(
            {
                "name": name,
                "kind": plan[name]["kind"],
                "running_for": item["running_for"],
                "heartbeat_expires_in": item["heartbeat_expires_in"],
                "to_hung_status": hung - stopped if hung else None,
                "to_new_pod": new_pod - stopped if new_pod else None,
                "expired_to_new_pod": new_pod - stopped - item["heartbeat_expires_in"] if new_pod else None,
            }
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
