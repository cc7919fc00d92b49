"""Foreign pods: what a cluster full of pods that are not ours costs the operator.

N pods that are not ours (quick 1,000, full 5,000) are created in a namespace the operator serves
(it serves the whole cluster by default), relabelled twice and deleted — 4 N writes on pods, 16 at a
time — while the operator runs with 50 suspended generations present. The pods carry a realistic
spec (two containers, env, resources; ~2 KB) and are bound to a node that does not exist, so
nothing runs them.

Side by side in one run, so that other work on the machine weighs on both alike: the operator's CPU
(utime + stime, /proc/<pid>/stat) and RSS (VmRSS, sampled every 0.5 s) over the churn window,
against two windows with no churn of the same length, one right before and one right after it. The
figure is the ratio of the churn window's CPU to the mean of the quiet ones, and how much higher
the RSS went from the churn on than before it.
The operator asks the API server for worker pods only (pod_watch.py), so the churn should not reach
it at all. Target: within 5 % of the quiet windows.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

from bench.common import (
    BenchStack,
    Report,
    command_line,
    generation_manifest,
    parser,
    print_table,
    process_cpu_seconds,
    process_rss_mib,
)
from posegen_devstack.processes import wait_for

NAME = "foreign_pods"
SAMPLE_SECONDS = 0.5
THREADS = 16
GENERATIONS = 50
QUIET_WINDOW_MIN = 20.0


def foreign_pod(name: str) -> dict[str, Any]:
    """A pod of some other application, about the size of a real one's spec."""
    env = [{"name": f"SETTING_{i}", "value": f"value-{i}-" + "x" * 24} for i in range(12)]
    container = {
        "image": "registry.example/shop/web:1.4.2",
        "env": env,
        "ports": [{"containerPort": 8080, "name": "http"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "shop", "tier": "web", "app.kubernetes.io/managed-by": "helm"},
            "annotations": {"example.com/revision": "42"},
        },
        "spec": {
            "nodeName": "elsewhere",  # a node that does not exist: nothing runs these
            "containers": [{**container, "name": "web"}, {**container, "name": "sidecar", "image": "envoy:1.30"}],
        },
    }


class Sampler(threading.Thread):
    """The operator's RSS every 0.5 s (the window's maximum), with its CPU time alongside."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, cpu seconds, rss MiB)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append((time.monotonic(), process_cpu_seconds(self.pid), process_rss_mib(self.pid)))
            self.stopping.wait(SAMPLE_SECONDS)

    def window(self, label: str, started: float, ended: float) -> dict[str, Any]:
        inside = [s for s in self.samples if started <= s[0] <= ended]
        seconds = inside[-1][0] - inside[0][0]
        cpu = inside[-1][1] - inside[0][1]
        return {
            "window": label,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "cpu_percent_of_core": 100 * cpu / seconds if seconds > 0 else 0.0,
            "rss_mib_max": max(s[2] for s in inside),
            "rss_mib_end": inside[-1][2],
        }


def quiet(seconds: float) -> tuple[float, float]:
    started = time.monotonic()
    time.sleep(seconds)
    return started, time.monotonic()


def churn(bench: BenchStack, namespace: str, count: int) -> dict[str, float]:
    """Create, relabel twice and delete ``count`` pods; the seconds each step took."""
    core = bench.core
    names = [f"shop-web-{i:05d}" for i in range(count)]
    steps: dict[str, Callable[[str], Any]] = {
        "create": lambda n: core.create_namespaced_pod(namespace, foreign_pod(n), _request_timeout=(5, 60)),
        "relabel 1": lambda n: core.patch_namespaced_pod(n, namespace, {"metadata": {"labels": {"round": "1"}}}),
        "relabel 2": lambda n: core.patch_namespaced_pod(n, namespace, {"metadata": {"labels": {"round": "2"}}}),
        "delete": lambda n: delete(core, namespace, n),
    }
    took = {}
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for step, call in steps.items():
            started = time.monotonic()
            list(pool.map(call, names))
            took[step] = time.monotonic() - started
            print(f"  {step}: {count} pods in {took[step]:.1f} s ({count / took[step]:.0f}/s)", flush=True)
    return took


def delete(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> None:
    with contextlib.suppress(kubernetes.client.ApiException):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _request_timeout=(5, 60))


def suspended_count(bench: BenchStack) -> float:
    return sum(
        value
        for name, labels, value in bench.operator_samples()
        if name == "posegen_generations" and labels.get("phase") == "Suspended"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--count", type=int, help="foreign pods (quick 1,000, full 5,000)")
    args = p.parse_args(argv)
    count = args.count or (1000 if args.mode == "quick" else 5000)
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {"foreign_pods": count, "generations": GENERATIONS, "threads": THREADS, "operator_env": {}}
    with BenchStack(NAME, {}, keep=args.keep) as bench:
        ours = bench.namespace("ours")
        bench.create_generations(ours, [generation_manifest(f"idle-{i:03d}", suspend=True) for i in range(GENERATIONS)])
        wait_for(lambda: suspended_count(bench) >= GENERATIONS, timeout=120, what="the generations to settle")
        theirs = bench.namespace("shop")
        time.sleep(10)  # let the start-up and the namespaces' creation settle
        sampler = Sampler(bench.operator_pid())
        sampler.start()
        # The quiet window before is as long as the churn is expected to take; the one after as
        # long as it did take.
        before = quiet(max(QUIET_WINDOW_MIN, count * 4 / 250))
        print(f"\n-- {count} foreign pods: create, relabel twice, delete", flush=True)
        started = time.monotonic()
        steps = churn(bench, theirs, count)
        during = (started, time.monotonic())
        after = quiet(max(QUIET_WINDOW_MIN, during[1] - during[0]))
        sampler.stopping.set()
        sampler.join()
        windows = [
            sampler.window("quiet before", *before),
            sampler.window(f"{count} foreign pods churning", *during),
            sampler.window("quiet after", *after),
        ]
        bench.delete_namespace(theirs, timeout=300)
    print()
    print_table(
        ["window", "seconds", "CPU s", "CPU % core", "RSS max MiB", "RSS end MiB"],
        [
            (w["window"], w["seconds"], w["cpu_seconds"], w["cpu_percent_of_core"], w["rss_mib_max"], w["rss_mib_end"])
            for w in windows
        ],
    )
    quiet_cpu = (windows[0]["cpu_percent_of_core"] + windows[2]["cpu_percent_of_core"]) / 2
    churn_cpu = windows[1]["cpu_percent_of_core"]
    ratio = churn_cpu / quiet_cpu if quiet_cpu > 0 else float("inf")
    # Memory taken during the churn and kept after it counts: the highest RSS from the churn on,
    # against the highest before it.
    rss_delta = max(windows[1]["rss_mib_max"], windows[2]["rss_mib_max"]) - windows[0]["rss_mib_max"]
    writes = 4 * count / (during[1] - during[0])
    print(
        f"operator CPU while {count} foreign pods churned ({writes:.0f} pod writes/s): {churn_cpu:.2f} % of a core, "
        f"quiet {quiet_cpu:.2f} %: ratio x{ratio:.2f}; RSS max {rss_delta:+.1f} MiB",
        flush=True,
    )
    report.figures = {
        "foreign_pods": count,
        "steps_seconds": steps,
        "pod_writes_per_second": writes,
        "windows": windows,
        "cpu_ratio": ratio,
        "cpu_percent_quiet": quiet_cpu,
        "cpu_percent_churn": churn_cpu,
        "rss_mib_delta": rss_delta,
        "samples": [(round(t - before[0], 2), round(cpu, 3), round(rss, 1)) for t, cpu, rss in sampler.samples],
        "churn_started_at": during[0] - before[0],
        "churn_ended_at": during[1] - before[0],
    }
    report.target(f"operator CPU with {count} foreign pods churning / quiet", ratio, 1.05, "x")
    report.target("operator RSS growth from the churn on", rss_delta, 0.05 * windows[0]["rss_mib_max"], "MiB")
    report.save()
    return report.figures


if __name__ == "__main__":
    main(sys.argv[1:])
