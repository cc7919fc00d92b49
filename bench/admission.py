"""Admission throughput: N PoseGenerations applied at once; time until every one has a phase.

The operator runs with a concurrency limit of 20 and 1-pose generations (quick: N = 200, full:
N = 1,000). The benchmark creates all N from 32 threads, and a watch on the namespace records
when each resource first shows a status.phase (Processing for the 20 admitted, Queued for the
rest). It prints the time until the last one had its phase, the per-resource latency from its
create to its phase, and the API requests made meanwhile (kube-apiserver's apiserver_request_total,
attributed by verb and resource as in bench.idle_cost; the benchmark's own creates are shown
apart). Workers keep starting while it runs (20 at a time), as they would in production.

It also prints the operator's reconcile passes in that time (posegen_reconcile_pass_duration_seconds
by trigger) and the PoseGenerations' Events by reason, once every resource's first phase Event is
posted (Events follow the status, from a background queue; the lag is printed): a phase Event
(Queued, Started, Completed) is meant once per resource and transition, so "resources with it twice
or more" counts repeats. Target (issue 11): 1,000 with a phase within 10 s of the first create.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import (
    GROUP,
    PLURAL,
    VERSION,
    BenchStack,
    Recorder,
    Report,
    command_line,
    generation_manifest,
    operator_requests,
    parser,
    pass_diff,
    print_table,
    request_diff,
    request_rows,
    summary,
)
from posegen_devstack.processes import wait_for

NAME = "admission"
MAX_CONCURRENT = 20
OPERATOR_ENV = {
    "POSEGEN_MAX_CONCURRENT": str(MAX_CONCURRENT),
    "POSEGEN_POSE_SECONDS": "0.05",
    "POSEGEN_WORKER_GRACE_SECONDS": "5",
}


def phase_events(bench: BenchStack, namespace: str) -> dict[str, dict[str, int]]:
    """The PoseGenerations' Events by reason: how many objects, for how many resources, repeats."""
    per: dict[tuple[str, str], int] = {}
    for event in bench.core.list_namespaced_event(namespace, _request_timeout=(5, 60)).items:
        if event.involved_object.kind == "PoseGeneration":
            key = (event.reason, event.involved_object.name)
            per[key] = per.get(key, 0) + 1
    reasons: dict[str, dict[str, int]] = {}
    for (reason, _), n in per.items():
        entry = reasons.setdefault(reason, {"events": 0, "resources": 0, "repeated": 0, "max": 0})
        entry["events"] += n
        entry["resources"] += 1
        entry["repeated"] += n > 1
        entry["max"] = max(entry["max"], n)
    return reasons


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--count", type=int, help="resources applied at once (quick 200, full 1000)")
    p.add_argument("--threads", type=int, default=32, help="client threads creating them")
    args = p.parse_args(argv)
    count = args.count or (200 if args.mode == "quick" else 1000)
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {"count": count, "threads": args.threads, "operator_env": OPERATOR_ENV}
    with BenchStack(NAME, OPERATOR_ENV, keep=args.keep) as bench:
        namespace = bench.namespace("admit")
        gens = Recorder(bench.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, budget=1800)
        gens.start()
        gens.ready.wait(10)
        time.sleep(1)
        custom = bench.custom
        created_at: dict[str, float] = {}

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, generation_manifest(name, variationCount=1), _request_timeout=(5, 60)
            )
            created_at[name] = time.time()

        names = [f"adm-{i:05d}" for i in range(count)]
        before = bench.apiserver_requests()
        passes_before = bench.pass_stats()
        started = time.time()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            list(pool.map(create, names))
        created = time.time() - started
        print(f"created {count} PoseGenerations in {created:.1f} s ({count / created:.0f}/s)", flush=True)

        def phased() -> dict[str, tuple[float, str]] | None:
            first: dict[str, tuple[float, str]] = {}
            for arrived, _, obj in gens.snapshot():
                name = obj["metadata"]["name"]
                phase = (obj.get("status") or {}).get("phase")
                if phase and name not in first:
                    first[name] = (arrived, phase)
            return first if len(first) >= count else None

        first = wait_for(phased, timeout=300 + count, interval=0.25, what=f"all {count} to show a phase")
        after = bench.apiserver_requests()
        passes = pass_diff(passes_before, bench.pass_stats())
        window = time.time() - started
        done = max(t for t, _ in first.values())
        gens.stop()

        def every_first_phase_told() -> dict[str, dict[str, int]] | None:
            # Events are posted in the background after the status: each resource's first one
            # (Queued or Started) follows its phase.
            events = phase_events(bench, namespace)
            told = sum(events.get(reason, {}).get("resources", 0) for reason in ("Queued", "Started"))
            return events if told >= count else None

        events = wait_for(every_first_phase_told, timeout=300, interval=1, what="every resource's first phase Event")
        events_done = time.time() - done
    elapsed = done - started
    latencies = [first[name][0] - created_at[name] for name in names]
    phases: dict[str, int] = {}
    for _, phase in first.values():
        phases[phase] = phases.get(phase, 0) + 1
    diff = request_diff(before, after)
    minutes = window / 60
    print(f"\nrequests from the first create until every resource was seen with a phase ({window:.1f} s):")
    print_table(["who", "verb", "resource", "requests", "per min"], request_rows(diff, minutes))
    mine = operator_requests(diff)
    pods_created = sum(v for (verb, _, res, sub), v in diff.items() if verb == "POST" and res == "pods" and not sub)
    stats = summary(latencies)
    print(
        f"\nall {count} had a phase {elapsed:.1f} s after the first create ({count / elapsed:.0f} resources/s); "
        f"create -> phase p50 {stats['p50']:.2f} s, p99 {stats['p99']:.2f} s; first phases {phases}"
    )
    print(
        f"operator requests: {mine['requests']:.0f} ({mine['requests'] / count:.1f} per resource), of which "
        f"{mine['writes']:.0f} writes; {pods_created:.0f} worker pods created; lease {mine['lease_requests']:.0f}"
    )
    print(f"operator passes in those {window:.1f} s:")
    print_table(
        ["pass trigger", "passes", "seconds", "mean ms"],
        [(trigger, int(v["passes"]), v["seconds"], v["mean_ms"]) for trigger, v in sorted(passes.items())],
    )
    print(f"every resource's first phase Event posted {events_done:.1f} s after the last phase")
    print_table(
        ["phase event", "Event objects", "resources", "resources with it twice or more", "most for one"],
        [(reason, v["events"], v["resources"], v["repeated"], v["max"]) for reason, v in sorted(events.items())],
    )
    report.figures = {
        "count": count,
        "create_seconds": created,
        "all_phased_seconds": elapsed,
        "window_seconds": window,
        "resources_per_second": count / elapsed,
        "create_to_phase": stats,
        "first_phases": phases,
        "operator_requests": mine,
        "operator_requests_per_resource": mine["requests"] / count,
        "pods_created": pods_created,
        "requests": [list(row) for row in request_rows(diff, minutes)],
        "passes": passes,
        "phase_events": events,
        "events_posted_after_seconds": events_done,
    }
    report.target(f"all {count} with a phase (target set at 1,000)", elapsed, 10, "s")
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
