"""Idle cost: what the operator costs with N PoseGenerations present and nothing processing.

N suspended generations (spec.suspend: true: registered, no worker ever runs) are created in one
namespace, in steps (quick: 100 then 1,000; full: 100, 1,000, 5,000). After each step the
benchmark waits until the operator's metrics count all N as Suspended, lets it settle for two
sweep intervals, then waits until the operator is quiet (its CPU over 10 s below 2 % of a core;
bounded: quick 120 s, full 900 s; the time it took is printed, and a trace of CPU and RSS), then
measures over a window (quick 30 s, full 60 s), making no API request itself:

  CPU   utime + stime of the operator process (/proc/<pid>/stat), as % of one core
  RSS   VmRSS of the operator process (/proc/<pid>/status), at the end and the window's maximum
  API   kube-apiserver's apiserver_request_total before/after, by verb and resource. The metric has
        no user-agent label, so requests are attributed by what they touch (PoseGenerations, Events,
        the operator's Lease: the operator; pod bindings/status, nodes: the node runner). The Lease
        renewals (leader election, one read and one write every 5 s) are counted apart.
  pass  the operator's own posegen_reconcile_pass_duration_seconds (sweep passes) in the window

At the largest count the operator is then restarted and measured again, to tell the memory it
needs for N resources from the high-water mark of taking them in live.

After each window, a responsiveness probe: three times, one of the suspended generations is
annotated posegen.io/recover=<token> and the time until its status.lastRecoveryRequest shows the
token is measured (the watch event reaching the operator, a pass, a status patch).

The operator runs with its defaults (sweep every 10 s); the stack's Prometheus scrapes its metrics
every 5 s, and that is part of the idle cost measured. Targets: < 2 % of a core and no writes at
1,000; at 10,000 (issue 11) < 1 % of a core and RSS < 200 MiB, created live and after a restart,
and the restart's first pass done (the operator ready) within 10 s.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from bench.common import (
    GROUP,
    PLURAL,
    VERSION,
    BenchStack,
    Report,
    command_line,
    generation_manifest,
    operator_requests,
    parser,
    pass_diff,
    print_table,
    process_cpu_seconds,
    process_rss_mib,
    request_diff,
    request_rows,
)
from posegen_devstack.processes import wait_for

NAME = "idle_cost"
SWEEP_INTERVAL = 10.0
QUIET_PROBE = 10.0
QUIET_CPU_PERCENT = 2.0
RECOVER_ANNOTATION = "posegen.io/recover"
OPERATOR_ENV: dict[str, str] = {}  # the defaults: sweep 10 s, status 2 s, leader election on


def suspended(bench: BenchStack) -> float:
    return sum(
        value
        for name, labels, value in bench.operator_samples()
        if name == "posegen_generations" and labels.get("phase") == "Suspended"
    )


def suspended_at_least(bench: BenchStack, count: int) -> bool:
    return suspended(bench) >= count


def recovery_request_seen(bench: BenchStack, namespace: str, name: str, token: str) -> bool:
    return bool(bench.status(namespace, name).get("lastRecoveryRequest") == token)


def quiesce(bench: BenchStack, limit: float) -> tuple[float, list[tuple[float, float, float]]]:
    """Wait until the operator's CPU over 10 s is below 2 % of a core; (seconds waited, trace)."""
    pid = bench.operator_pid()
    started = time.monotonic()
    trace: list[tuple[float, float, float]] = []
    while time.monotonic() - started < limit:
        cpu = process_cpu_seconds(pid)
        time.sleep(QUIET_PROBE)
        percent = 100 * (process_cpu_seconds(pid) - cpu) / QUIET_PROBE
        trace.append((time.monotonic() - started, percent, process_rss_mib(pid)))
        if percent < QUIET_CPU_PERCENT:
            break
    return time.monotonic() - started, trace


def probe(bench: BenchStack, namespace: str, names: list[str], timeout: float) -> list[float]:
    """Annotate a generation for a recovery check; seconds until its status acknowledges it."""
    latencies = []
    for i, name in enumerate(names):
        token = f"bench-probe-{int(time.time())}-{i}"
        started = time.monotonic()
        bench.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": {RECOVER_ANNOTATION: token}}}
        )
        wait_for(
            partial(recovery_request_seen, bench, namespace, name, token),
            timeout=timeout,
            interval=0.05,
            what=f"{name} to acknowledge {token}",
        )
        latencies.append(time.monotonic() - started)
    return latencies


def measure(bench: BenchStack, count: int, window: float) -> dict[str, Any]:
    pid = bench.operator_pid()
    passes_before = bench.pass_stats()
    requests_before = bench.apiserver_requests()
    cpu_before, started = process_cpu_seconds(pid), time.monotonic()
    rss_samples = [process_rss_mib(pid)]
    while time.monotonic() - started < window:
        time.sleep(min(5.0, max(0.0, window - (time.monotonic() - started))))
        rss_samples.append(process_rss_mib(pid))
    cpu_after, elapsed = process_cpu_seconds(pid), time.monotonic() - started
    requests_after = bench.apiserver_requests()
    passes = pass_diff(passes_before, bench.pass_stats())
    diff = request_diff(requests_before, requests_after)
    minutes = elapsed / 60
    mine = operator_requests(diff)
    sweeps = passes.get("sweep", {}).get("passes", 0)
    sweep_ms = passes.get("sweep", {}).get("mean_ms")
    print(f"\n{count} idle generations, {elapsed:.0f} s window:")
    print_table(["who", "verb", "resource", "requests", "per min"], request_rows(diff, minutes))
    result = {
        "generations": count,
        "window_seconds": elapsed,
        "cpu_percent_of_core": 100 * (cpu_after - cpu_before) / elapsed,
        "rss_mib_end": rss_samples[-1],
        "rss_mib_max": max(rss_samples),
        "operator_requests_per_min": mine["requests"] / minutes,
        "operator_writes_per_min": mine["writes"] / minutes,
        "lease_requests_per_min": mine["lease_requests"] / minutes,
        "lease_writes_per_min": mine["lease_writes"] / minutes,
        "all_requests_per_min": sum(diff.values()) / minutes,
        "sweeps": sweeps,
        "sweep_pass_ms_mean": sweep_ms,
        "passes": passes,
        "requests": [list(row) for row in request_rows(diff, minutes)],
    }
    print(
        f"operator: CPU {result['cpu_percent_of_core']:.2f} % of a core, RSS {result['rss_mib_end']:.0f} MiB "
        f"(max {result['rss_mib_max']:.0f}), {result['operator_requests_per_min']:.1f} requests/min of which "
        f"{result['operator_writes_per_min']:.1f} writes/min, plus the lease: "
        f"{result['lease_requests_per_min']:.1f} requests/min ({result['lease_writes_per_min']:.1f} writes); "
        f"{sweeps:.0f} sweeps, mean pass {result['sweep_pass_ms_mean'] or 0:.1f} ms",
        flush=True,
    )
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--counts", type=int, nargs="+", help="generation counts (quick: 100 1000; full: 100 1000 5000)")
    p.add_argument("--window", type=float, help="seconds sampled at each count (quick 30, full 60)")
    p.add_argument(
        "--no-restart", dest="restart", action="store_false", help="skip the operator restart at the largest count"
    )
    args = p.parse_args(argv)
    counts = sorted(args.counts or ([100, 1000] if args.mode == "quick" else [100, 1000, 5000]))
    window = args.window or (30.0 if args.mode == "quick" else 60.0)
    quiet_limit = 120.0 if args.mode == "quick" else 900.0
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {
        "counts": counts,
        "window_seconds": window,
        "quiet_limit_seconds": quiet_limit,
        "operator_env": "defaults",
    }
    results = []
    with BenchStack(NAME, OPERATOR_ENV, keep=args.keep) as bench:
        namespace = bench.namespace("idle")
        present = 0
        for count in counts:
            manifests = [
                generation_manifest(f"idle-{i:05d}", variationCount=50, suspend=True) for i in range(present, count)
            ]
            created = bench.create_generations(namespace, manifests)
            started = time.monotonic()
            wait_for(
                partial(suspended_at_least, bench, count),
                timeout=120 + count * 0.5,
                interval=1,
                what=f"the operator to count {count} suspended generations",
            )
            settled = time.monotonic() - started
            print(
                f"\ncreated {count - present} more in {created:.1f} s; the operator had them all Suspended "
                f"{settled:.1f} s later; settling {2 * SWEEP_INTERVAL:.0f} s",
                flush=True,
            )
            present = count
            time.sleep(2 * SWEEP_INTERVAL)
            waited, trace = quiesce(bench, quiet_limit)
            print(
                f"quiet after {waited:.0f} s more (CPU % of a core, RSS MiB every {QUIET_PROBE:.0f} s: "
                + ", ".join(f"{cpu:.1f} %/{rss:.0f}" for _, cpu, rss in trace)
                + ")",
                flush=True,
            )
            result = measure(bench, count, window)
            latencies = probe(bench, namespace, [f"idle-{count - 1 - 7 * i:05d}" for i in range(3)], 300)
            print("responsiveness probe (annotation -> status): " + ", ".join(f"{t:.2f} s" for t in latencies))
            result["created_seconds"] = created
            result["operator_caught_up_seconds"] = settled
            result["quiet_after_seconds"] = waited
            result["quiet_trace"] = trace
            result["probe_seconds"] = latencies
            results.append(result)
        if args.restart:
            # Is the RSS at the largest count what the operator needs, or the high-water mark of
            # taking thousands of new resources in? A fresh process starting with them all present.
            print(f"\nrestarting the operator with {present} generations present ...", flush=True)
            bench.stack.stop_operator()
            started = time.monotonic()
            bench.stack.start_operator()
            ready = time.monotonic() - started
            waited, trace = quiesce(bench, quiet_limit)
            print(f"ready after {ready:.1f} s, quiet after {waited:.0f} s more", flush=True)
            result = measure(bench, present, window)
            result.update(
                {
                    "restarted": True,
                    "ready_seconds": ready,
                    "quiet_after_seconds": waited,
                    "quiet_trace": trace,
                    "operator_caught_up_seconds": ready,
                    "probe_seconds": probe(
                        bench, namespace, [f"idle-{present - 1 - 7 * i:05d}" for i in range(3)], 300
                    ),
                }
            )
            results.append(result)
    print()
    print_table(
        [
            "generations",
            "caught up s",
            "quiet after s",
            "CPU % core",
            "RSS MiB",
            "op req/min",
            "op writes/min",
            "lease req/min",
            "sweep pass ms",
            "probe p50 s",
        ],
        [
            (
                f"{r['generations']}" + (" (restarted)" if r.get("restarted") else ""),
                r["operator_caught_up_seconds"],
                r["quiet_after_seconds"],
                r["cpu_percent_of_core"],
                r["rss_mib_end"],
                r["operator_requests_per_min"],
                r["operator_writes_per_min"],
                r["lease_requests_per_min"],
                r["sweep_pass_ms_mean"] or float("nan"),
                statistics.median(r["probe_seconds"]),
            )
            for r in results
        ],
    )
    report.figures = {"levels": results}
    by_count = {r["generations"]: r for r in results if not r.get("restarted")}
    if 1000 in by_count:
        report.target("CPU at 1,000 idle", by_count[1000]["cpu_percent_of_core"], 2.0, "% of a core")
        report.target(
            "operator writes at 1,000 idle (lease apart)", by_count[1000]["operator_writes_per_min"], 0, "/min"
        )
    largest = [r for r in results if r["generations"] == max(counts)]
    for r in largest:
        after = " after a restart" if r.get("restarted") else " (created live)"
        report.target(f"RSS at {r['generations']:,}{after} (target set at 10,000)", r["rss_mib_max"], 200, "MiB")
        report.target(
            f"CPU at {r['generations']:,} idle{after} (target set at 10,000)",
            r["cpu_percent_of_core"],
            1.0,
            "% of a core",
        )
        if r.get("restarted"):
            report.target(
                f"restart with {r['generations']:,} present: first pass done (target set at 10,000)",
                r["ready_seconds"],
                10,
                "s",
            )
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
