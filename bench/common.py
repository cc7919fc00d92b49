"""What every benchmark shares: a private local stack, clocks, percentiles, tables and results.

A benchmark runs inside ``BenchStack``: a fresh state dir under /tmp (mode 755, so Postgres, which
runs as the postgres user, can traverse it), a full local stack with the operator tuned by the
benchmark's ``operator_env``, and a teardown in ``finally`` (SIGTERM and Ctrl-C included) that ends
the operator, then every pod process the stack's node runner started (by the pids in its own pid
files), then the stack, and removes the state dir. Nothing here touches ``.local/``.

Figures are printed as tables with the command that reproduces them, and written as JSON to
``bench/results/<name>.json`` (git-ignored)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import kubernetes
import psycopg2
from prometheus_client.parser import text_string_to_metric_families

from posegen_devstack import images, kubelet_node
from posegen_devstack.operator_process import kubelet_node_environment, worker_secret
from posegen_devstack.processes import StackError, wait_for
from posegen_devstack.stack import Stack
from posegen_operator.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
PYTHON = ".venv/bin/python"
GROUP, VERSION, PLURAL = "posegen.io", "v1", "posegenerations"
SEED_THRESHOLD_SECONDS = 1800.0  # the seed's "stuck in processing for > 30 minutes"
SEED_DUPLICATE_QUERY = """
SELECT generation_id, pose_library_id, COUNT(*)
FROM generated_pose
GROUP BY generation_id, pose_library_id
HAVING COUNT(*) > 1
"""
STACK_ATTEMPTS = 3
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a timeout, a stack that did not start)."""


# ---- command line and results --------------------------------------------------------------------
def parser(name: str, description: str | None) -> argparse.ArgumentParser:
    """--quick (the default) or --full, plus --keep to leave the state dir for a post-mortem."""
    p = argparse.ArgumentParser(
        prog=f"{PYTHON} -m bench.{name}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="the quick counts (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the full counts")
    p.set_defaults(mode="quick")
    p.add_argument("--keep", action="store_true", help="keep the stack's state dir (logs) after the run")
    return p


def command_line(name: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this run."""
    args = list(argv if argv is not None else sys.argv[1:])
    if not any(a in ("--quick", "--full") for a in args):
        args.insert(0, "--quick")
    return " ".join([PYTHON, "-m", f"bench.{name}", *args])


@dataclass
class Report:
    """One benchmark's figures, printed as they come and saved as JSON at the end."""

    name: str
    mode: str
    command: str
    started: float = field(default_factory=time.time)
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _cpu_start: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.machine = machine_info()
        self._cpu_start = _machine_cpu()
        print(f"== bench.{self.name} ({self.mode}) ==")
        print(f"reproduce: {self.command}")
        m = self.machine
        print(f"code: {m['code']}")
        print(
            f"machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']:.1f} GiB, load {m['loadavg_start']}, "
            f"other local stacks running: {m['other_stacks_start']}",
            flush=True,
        )

    def target(self, what: str, measured: float, limit: float, unit: str, *, at_most: bool = True) -> bool:
        """Record a target: met when ``measured`` <= ``limit`` (or >= with at_most=False)."""
        met = measured <= limit if at_most else measured >= limit
        ratio = (limit / measured if measured > 0 else math.inf) if at_most else measured / limit
        self.targets.append(
            {"target": what, "limit": limit, "measured": measured, "unit": unit, "met": met, "ratio": ratio}
        )
        sign = "<=" if at_most else ">="
        verdict = "met" if met else "MISSED"
        print(f"TARGET {what} {sign} {limit:g} {unit}: measured {measured:.4g} {unit} -> {verdict} (x{ratio:.2f})")
        return met

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def save(self) -> Path:
        busy = _machine_busy(self._cpu_start, _machine_cpu())
        self.machine["loadavg_end"] = _loadavg()
        self.machine["other_stacks_end"] = other_stacks()
        self.machine["machine_cpu_busy_percent"] = busy
        shared = self.machine["other_stacks_start"] or self.machine["other_stacks_end"]
        self.machine["shared"] = bool(shared)
        document = {
            "benchmark": self.name,
            "mode": self.mode,
            "command": self.command,
            "started_at": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(),
            "duration_seconds": round(time.time() - self.started, 1),
            "machine": self.machine,
            "settings": self.settings,
            "figures": self.figures,
            "targets": self.targets,
            "notes": self.notes,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(
            f"machine CPU busy over the run: {busy:.0f} % of {self.machine['cpus']} cores"
            + (" (other work shared the machine)" if shared else "")
        )
        print(f"results: {path.relative_to(REPO_ROOT)} ({document['duration_seconds']:.0f} s)\n", flush=True)
        return path


# ---- the machine ---------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal:")))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    return {
        "code": code_version(),
        "cpus": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": total_kib / 1024 / 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": _loadavg(),
        "other_stacks_start": other_stacks(),
    }


def code_version() -> str:
    """The commit measured, and whether the work tree differed from it (read-only git)."""
    try:
        commit = run_checked(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).strip()
        changed = run_checked(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" + uncommitted changes" if changed.strip() else "")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def other_stacks(own_state_dir: Path | None = None) -> int:
    """kube-apiservers running on this machine other than ours: other work sharing the CPU."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "kube-apiserver " in cmdline and "--etcd-servers" in cmdline:
            if own_state_dir is not None and str(own_state_dir) in cmdline:
                continue
            count += 1
    return count


def _machine_cpu() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def _machine_busy(start: tuple[int, int], end: tuple[int, int]) -> float:
    total, idle = end[0] - start[0], end[1] - start[1]
    return 100.0 * (total - idle) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- numbers and tables --------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in 0..100."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append(
            "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    print(table(headers, list(rows)), flush=True)


# ---- a private stack -----------------------------------------------------------------------------
class _Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so every ``finally`` runs."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


class BenchStack:
    """A local stack of its own, torn down in every case (see the module docstring)."""

    def __init__(self, name: str, operator_env: dict[str, str], *, keep: bool = False, real_node: bool = False) -> None:
        self.name = name
        self.operator_env = dict(operator_env)
        self.keep = keep
        # The process node by default (hundreds of pods); the kubelet node with containers on request.
        self.real_node = real_node
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"posegen-bench-{name}-"))
        self.state_dir.chmod(0o755)
        self.stack = Stack(self.state_dir, operator_env=self.operator_env, kubelet=real_node)
        self.up_seconds = 0.0
        self._api: kubernetes.client.ApiClient | None = None

    def __enter__(self) -> BenchStack:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        started = time.monotonic()
        for attempt in range(1, STACK_ATTEMPTS + 1):
            print(f"starting a private stack in {self.state_dir} ...", flush=True)
            try:
                self.stack.up()
                break
            except StackError as error:
                # The stack picks free ports when its config is made and binds them later; on a busy
                # machine an outgoing connection can take one meanwhile. A fresh stack gets new ports.
                self.teardown()
                if attempt == STACK_ATTEMPTS:
                    raise
                print(f"stack did not start ({str(error).splitlines()[0]}); retrying with new ports", flush=True)
                self.state_dir = Path(tempfile.mkdtemp(prefix=f"posegen-bench-{self.name}-"))
                self.state_dir.chmod(0o755)
                self.stack = Stack(self.state_dir, operator_env=self.operator_env, kubelet=self.real_node)
            except BaseException:
                self.teardown()
                raise
        self.up_seconds = time.monotonic() - started
        print(f"stack up in {self.up_seconds:.1f} s", flush=True)
        if self.real_node:
            try:
                self.use_kubelet_node()
            except BaseException:
                self.teardown()
                raise
        return self

    def use_kubelet_node(self) -> None:
        """Workers in containers on the kubelet node, from the image built from the Dockerfile."""
        started = time.monotonic()
        worker_image = images.build_images(self.stack)["worker"]
        print(f"images built and pushed in {time.monotonic() - started:.1f} s", flush=True)
        self.stack.operator_env = {**self.operator_env, **kubelet_node_environment(self.stack, worker_image)}
        self.stack.stop_operator()
        self.stack.start_operator()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.teardown()

    def teardown(self) -> None:
        started = time.monotonic()
        with contextlib.suppress(Exception):
            self.stack.stop_operator(sig=signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.stack.stop_operator("operator-b", sig=signal.SIGKILL)
        killed = self.kill_pod_processes()
        with contextlib.suppress(Exception):
            self.stack.down()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
        if self.keep:
            print(f"state kept in {self.state_dir}")
        else:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        print(f"stack stopped ({killed} pod processes ended) in {time.monotonic() - started:.1f} s", flush=True)

    def kill_pod_processes(self) -> int:
        """SIGKILL the pod processes of this stack only, by the pids in its node runner's pid files."""
        killed = 0
        for pid_file in (self.state_dir / "node").glob("*/*.pid"):
            for pid in read_pids(pid_file):
                if not self.owns(pid):
                    continue  # exited meanwhile: the pid may already name someone else's process
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed

    def owns(self, pid: int) -> bool:
        """A pod process of this stack: its environment names this stack's state dir."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return str(self.state_dir).encode() in environ

    def operator_settings(self) -> Settings:
        """The operator's effective settings on this stack (its defaults plus the stack's and ours)."""
        return Settings.from_env({**self.stack.environment(), **self.stack.operator_environment()})

    # ---- clients -------------------------------------------------------------------------------
    @property
    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            config = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(config_file=str(self.stack.kubeconfig), client_configuration=config)
            config.connection_pool_maxsize = 64
            self._api = kubernetes.client.ApiClient(config)
        return self._api

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    def sql(self, query: str, *params: Any, database: str | None = None) -> list[tuple[Any, ...]]:
        url = self.stack.database_url
        if database is not None:
            url = url.rsplit("/", 1)[0] + "/" + database
        conn = psycopg2.connect(url, connect_timeout=5)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{os.urandom(3).hex()}"
        self.core.create_namespace({"metadata": {"name": name}})
        # Pods are refused until the service-account controller has made the default account.
        wait_for(
            lambda: self.core.read_namespaced_service_account("default", name),
            timeout=60,
            what=f"the default service account of {name}",
        )
        if self.real_node:
            self.core.create_namespaced_secret(name, worker_secret(self.stack))
        return name

    def delete_namespace(self, namespace: str, *, timeout: float = 120) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespace(namespace)

        def gone() -> bool:
            try:
                self.core.read_namespace(namespace)
            except kubernetes.client.ApiException as error:
                return bool(error.status == 404)
            return False

        wait_for(gone, timeout=timeout, interval=0.5, what=f"namespace {namespace} to be deleted")

    def pod_pid(self, namespace: str, pod: str, timeout: float = 30) -> int:
        if self.real_node:
            return wait_for(
                lambda: kubelet_node.main_pid(self.stack, self.core, namespace, pod),
                timeout=timeout,
                interval=0.02,
                what=f"the main process of {pod}",
            )
        pid_file = self.state_dir / "node" / namespace / f"{pod}.pid"

        def owned_pid() -> int | None:
            pids = read_pids(pid_file)
            return pids[0] if pids and self.owns(pids[0]) else None

        return wait_for(owned_pid, timeout=timeout, interval=0.02, what=f"the pid of {pod}")

    def operator_pid(self, name: str = "operator") -> int:
        return read_pids(self.stack.run_dir / f"{name}.pid")[0]

    # ---- PoseGenerations -----------------------------------------------------------------------
    def create_generations(self, namespace: str, manifests: Sequence[dict[str, Any]], *, threads: int = 16) -> float:
        """Create them all, ``threads`` at a time; returns the seconds it took."""
        started = time.monotonic()
        custom = self.custom

        def create(body: dict[str, Any]) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, _request_timeout=(5, 60))

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(create, manifests))
        return time.monotonic() - started

    def list_generations(self, namespace: str) -> list[dict[str, Any]]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=(5, 60))
        items: list[dict[str, Any]] = listing["items"]
        return items

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        body = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return dict(body.get("status") or {})

    def operator_samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on the operator's own /metrics page."""
        url = f"http://127.0.0.1:{self.stack.config.ports.operator_metrics}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def pass_stats(self) -> dict[str, dict[str, float]]:
        """posegen_reconcile_pass_duration_seconds count and sum, by trigger."""
        stats: dict[str, dict[str, float]] = {}
        for name, labels, value in self.operator_samples():
            if name.startswith("posegen_reconcile_pass_duration_seconds_"):
                suffix = name.rsplit("_", 1)[1]
                if suffix in ("count", "sum"):
                    stats.setdefault(labels.get("trigger", ""), {})[suffix] = value
        return stats

    # ---- the API server's own request counters -------------------------------------------------
    def apiserver_requests(self) -> dict[tuple[str, str, str, str], float]:
        """apiserver_request_total summed by (verb, group, resource, subresource)."""
        pki = self.stack.pki
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        with urllib.request.urlopen(f"{self.stack.apiserver_url}/metrics", timeout=15, context=context) as response:
            text = response.read().decode()
        counts: dict[tuple[str, str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                if sample.name != "apiserver_request_total":
                    continue
                labels = sample.labels
                key = (
                    labels.get("verb", ""),
                    labels.get("group", ""),
                    labels.get("resource", ""),
                    labels.get("subresource", ""),
                )
                counts[key] = counts.get(key, 0.0) + sample.value
        return counts


def read_pids(pid_file: Path) -> list[int]:
    try:
        return [int(line) for line in pid_file.read_text().split()]
    except (OSError, ValueError):
        return []


def generation_manifest(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "projectId": "bench",
        "generationType": "TEXT_DESCRIPTION",
        "textPrompt": "a person running",
        "variationCount": 50,
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PoseGeneration", "metadata": {"name": name}, "spec": body}


# ---- API request accounting ----------------------------------------------------------------------
def request_diff(
    before: dict[tuple[str, str, str, str], float], after: dict[tuple[str, str, str, str], float]
) -> dict[tuple[str, str, str, str], float]:
    keys = set(before) | set(after)
    diff = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
    return {key: value for key, value in diff.items() if value > 0}


# Who makes which requests on a bench stack (the API server's metrics have no user-agent label, so
# requests are told apart by what they touch). "operator" rows are the operator's alone.
def requester(verb: str, group: str, resource: str, subresource: str) -> str:
    if group == "posegen.io":
        if verb in ("POST", "DELETE"):
            return "bench"  # the benchmark creates and deletes PoseGenerations
        if verb == "GET":
            # The operator reads PoseGenerations from its watch cache only; single GETs come from the
            # garbage collector checking the owners of new worker pods.
            return "controllers (GC owner checks)"
        return "operator"
    if group == "coordination.k8s.io" and resource == "leases":
        return "operator (lease)"
    if resource == "events":
        return "operator"
    if resource == "pods":
        if subresource in ("binding", "status"):
            return "node runner"
        if verb == "POST":
            return "operator"
        if verb == "DELETE":
            return "operator+node runner"
        return "operator+node runner" if verb in ("LIST", "WATCH") else "other"
    if resource in ("nodes", "serviceaccounts", "secrets", "configmaps"):
        return "node runner/controllers"
    return "controllers/other"


def request_rows(diff: dict[tuple[str, str, str, str], float], minutes: float) -> list[tuple[Any, ...]]:
    rows = []
    for (verb, group, resource, sub), count in sorted(diff.items(), key=lambda kv: (-kv[1], kv[0])):
        what = f"{resource}/{sub}" if sub else resource
        if group:
            what = f"{what}.{group}"
        rows.append(
            (requester(verb, group, resource, sub), verb, what or "(non-resource)", int(count), count / minutes)
        )
    return rows


def operator_requests(diff: dict[tuple[str, str, str, str], float]) -> dict[str, float]:
    """The operator's requests and writes (its Lease renewals counted apart)."""
    totals = {"requests": 0.0, "writes": 0.0, "lease_requests": 0.0, "lease_writes": 0.0}
    for (verb, group, resource, sub), count in diff.items():
        who = requester(verb, group, resource, sub)
        if who == "operator":
            totals["requests"] += count
            if verb in WRITE_VERBS:
                totals["writes"] += count
        elif who == "operator (lease)":
            totals["lease_requests"] += count
            if verb in WRITE_VERBS:
                totals["lease_writes"] += count
    return totals


# ---- watch streams with arrival times ------------------------------------------------------------
class Recorder(threading.Thread):
    """Keeps every event of one watch with the wall-clock time it arrived (resuming on reconnects)."""

    def __init__(self, list_call: Callable[..., Any], *args: Any, budget: float = 3600, **kwargs: Any) -> None:
        super().__init__(daemon=True, name="bench-watch")
        self.list_call, self.args, self.kwargs = list_call, args, kwargs
        self.deadline = time.monotonic() + budget
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            watch = kubernetes.watch.Watch()
            try:
                extra = {"resource_version": version} if version else {}
                self.ready.set()
                for event in watch.stream(
                    self.list_call,
                    *self.args,
                    deserialize=False,
                    timeout_seconds=max(1, min(600, int(self.deadline - time.monotonic()))),
                    _request_timeout=(5, 660),
                    **extra,
                    **self.kwargs,
                ):
                    arrived = time.time()
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    with self.lock:
                        self.events.append((arrived, event["type"], obj))
                    if self.stopping.is_set():
                        watch.stop()
                        break
            except Exception:
                if self.stopping.is_set():
                    return
                version = None
                time.sleep(0.5)

    def snapshot(self) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return list(self.events)

    def stop(self) -> None:
        self.stopping.set()


def pass_diff(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Passes run between two pass_stats(), by trigger: count, total and mean seconds."""
    diff = {}
    for trigger, values in after.items():
        count = values.get("count", 0) - before.get(trigger, {}).get("count", 0)
        total = values.get("sum", 0) - before.get(trigger, {}).get("sum", 0)
        if count:
            diff[trigger] = {"passes": count, "seconds": total, "mean_ms": 1000 * total / count}
    return diff


def run_checked(argv: Sequence[str], timeout: float = 60) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=timeout).stdout
