"""What 1,000 PoseGenerations cost a Prometheus scrape of the operator: page size and scrape time.

The operator computes its gauges once per reconcile pass from batched reads, so a scrape should cost
the same with ten resources or ten thousand. This creates 1,000 suspended PoseGenerations (no
worker runs) in a fresh namespace, waits until the operator's metrics count them, then GETs the
metrics page 50 times and prints its size and the p50/p99 scrape time, before and after. It deletes
its namespace (and so everything it created) at the end, even when interrupted.

Run it against a running local stack (`make up`, state in .local/, or POSEGEN_STATE_DIR):

    make up
    .venv/bin/python bench/metrics_scrape.py                      # --count 1000 --requests 50
    POSEGEN_STATE_DIR=/tmp/stack .venv/bin/python bench/metrics_scrape.py --count 200

The stack's kubeconfig and ports are read from <state>/stack.json (the values <state>/env exports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from prometheus_client.parser import text_string_to_metric_families

from posegen_devstack.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "posegen.io", "v1", "posegenerations"


@dataclass
class Scrape:
    size_bytes: int
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    families: dict[str, int]  # samples per metric family


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def measure(url: str, requests: int) -> Scrape:
    get(url)  # warm up the connection path once
    times, sizes = [], []
    for _ in range(requests):
        started = time.perf_counter()
        body = get(url)
        times.append((time.perf_counter() - started) * 1000)
        sizes.append(len(body))
    families = {family.name: len(family.samples) for family in text_string_to_metric_families(body.decode())}
    return Scrape(
        max(sizes), sum(families.values()), statistics.median(times), percentile(times, 0.99), max(times), families
    )


def suspended_count(url: str) -> float:
    for family in text_string_to_metric_families(get(url).decode()):
        if family.name == "posegen_generations":
            return sum(s.value for s in family.samples if s.labels.get("phase") == "Suspended")
    return 0.0


def prometheus_scrape_stats(prometheus_url: str) -> dict[str, float]:
    """What the stack's Prometheus itself measured for its last scrape of the operator."""
    stats = {}
    for metric in ("scrape_duration_seconds", "scrape_samples_scraped"):
        query = urllib.parse.urlencode({"query": f'{metric}{{job="posegen-operator"}}'})
        try:
            answer = json.loads(get(f"{prometheus_url}/api/v1/query?{query}"))
            stats[metric] = max(float(r["value"][1]) for r in answer["data"]["result"])
        except (OSError, ValueError, KeyError):
            continue
    return stats


def delete_namespace(core: kubernetes.client.CoreV1Api, namespace: str, timeout: float) -> None:
    """Delete the namespace and wait until it is gone (the operator releases the finalizers)."""
    print(f"deleting namespace {namespace} and its generations...", flush=True)
    core.delete_namespace(namespace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                print(f"namespace {namespace} deleted")
                return
            raise
        time.sleep(1)
    print(f"namespace {namespace} is still terminating after {timeout:.0f} s", file=sys.stderr)


def manifest(name: str) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PoseGeneration",
        "metadata": {"name": name},
        "spec": {
            "projectId": "bench-metrics",
            "generationType": "TEXT_DESCRIPTION",
            "textPrompt": "a person standing",
            "variationCount": 50,
            "suspend": True,
        },
    }


def report(label: str, scrape: Scrape) -> None:
    print(
        f"{label:<28} {scrape.size_bytes:>9,} bytes  {scrape.samples:>5} samples  "
        f"p50 {scrape.p50_ms:6.2f} ms  p99 {scrape.p99_ms:6.2f} ms  max {scrape.max_ms:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="PoseGenerations to create (default 1000)")
    parser.add_argument("--requests", type=int, default=50, help="metrics GETs per measurement (default 50)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the operator")
    args = parser.parse_args()

    stack = Stack(Path(os.environ.get("POSEGEN_STATE_DIR", REPO_ROOT / ".local")))
    if not stack.config_file.exists():
        print(f"no local stack in {stack.state_dir}: run `make up` (or set POSEGEN_STATE_DIR)", file=sys.stderr)
        return 2
    metrics_url = f"http://127.0.0.1:{stack.config.ports.operator_metrics}/metrics"
    api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)

    before = measure(metrics_url, args.requests)
    baseline = suspended_count(metrics_url)
    namespace = f"bench-metrics-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, manifest(f"bench-{i:05d}")
                    ),
                    range(args.count),
                )
            )
        created = time.monotonic() - started
        while suspended_count(metrics_url) < baseline + args.count:
            if time.monotonic() - started > args.timeout:
                print(f"the operator did not count {args.count} suspended generations in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        observed = time.monotonic() - started
        time.sleep(1)  # one more pass, so the page is in its steady state
        after = measure(metrics_url, args.requests)
        prometheus = prometheus_scrape_stats(stack.prometheus_url)

        print(f"created {args.count} suspended PoseGenerations in {created:.1f} s; the operator counted them")
        print(f"after {observed:.1f} s. Metrics page {metrics_url}, {args.requests} GETs each:")
        report("before", before)
        report(f"with {args.count} more generations", after)
        grown = {
            name: n - before.families.get(name, 0)
            for name, n in after.families.items()
            if n != before.families.get(name)
        }
        print("samples added, by family: " + (", ".join(f"{k} +{v}" for k, v in sorted(grown.items())) or "none"))
        if prometheus:
            print("Prometheus's last scrape: " + ", ".join(f"{k} {v:g}" for k, v in sorted(prometheus.items())))
    finally:
        delete_namespace(core, namespace, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
