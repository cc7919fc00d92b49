"""Randomized fault soak: a steady load of generations under a nemesis, then a ledger.

On a private local stack (``BenchStack``: temporary state dir, loopback only, torn down in every
case) the soak keeps ``--concurrency`` PoseGenerations in flight across three namespaces (small
``variationCount``, quick poses; a finished one is deleted and a new one submitted) for
``--minutes``. Meanwhile a nemesis injects a fault every ``--fault-interval`` seconds on average
(exponential gaps), drawing kinds from a shuffled deck so that every kind comes up once per round:

  worker_kill        kill -9 of a running worker (its pid from ``node/<ns>/<pod>.pid``)
  worker_zombie      SIGSTOP of a worker, SIGCONT after 1.5-3 heartbeat TTLs
  pod_delete         delete a running worker's pod
  garbage_label      label a running worker's pod ``posegen.io/attempt=x`` (left in place)
  operator_kill      kill -9 of the operator, started again after 0-2 s
  postgres_restart   stop the Postgres server itself (its postmaster.pid: the run pid file names a
                     ``runuser`` wrapper that does not pass signals on), 1-5 s down, start again
  redis_restart      Redis stopped for 0.5-3 s and started empty (no persistence)
  redis_flushall     FLUSHALL
  apiserver_restart  kube-apiserver stopped for 1-3 s and started again
  pod_quota          a ResourceQuota ``pods: 0`` in one namespace for 8-20 s

Every fault is logged with its time, kind and target. Then the nemesis stops, outstanding faults
are undone (SIGCONT, quota removed), no more generations are submitted, and every generation has
``--drain-seconds`` to reach a final phase. The ledger then checks:

- every generation reached a final phase (its resource and its row);
- 0 poses lost and 0 duplicated (``bench.ledger``, with the seed's duplicate query);
- every recovery (a worker replaced by a new attempt, budgeted or not) is attributed to an
  injected fault that could cause it, within ``WINDOW`` seconds of the fault's end: a kill, stop,
  deletion or relabelling of that generation's worker (one recovery each, any reason), an
  operator kill (one OrphanedAfterRestart per generation: an attempt claimed just before the kill
  has no pod), a Postgres outage (any). Redis data loss, an API server restart and a quota cause
  none (``FLEET_CAUSES``). Recoveries are read from the pose_generation rows (a poll every 0.5 s
  of recoveries, transient_retries, last_recovery_reason, attempt_reason) and from the operator's
  recovery Events (one per attempt, for those a poll did not see); the rows' final counters are
  the total. A recovery no fault explains is a false recovery, reported by reason and by the
  faults that preceded it (on its generation, namespace or the fleet, within the window).

Time to recover is measured per fault and affected generation (the targeted one, or every
generation processing at the time): the fault's start -> that generation's next recorded pose.

Prints the tables, writes bench/results/soak.json, exits 1 when anything was lost, duplicated,
unfinished or falsely recovered. ``make soak MINUTES=30 SEED=7``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import kubernetes
import psycopg2
import redis

from bench.common import (
    GROUP,
    PLURAL,
    PYTHON,
    VERSION,
    BenchStack,
    Report,
    generation_manifest,
    print_table,
    read_pids,
    summary,
)
from bench.ledger import audit
from posegen_common.contract import FINAL_STATUSES
from posegen_devstack.processes import StackError, WaitTimeout, pid_alive, read_pid, running_pid, wait_for
from posegen_operator.builders import LABEL_ATTEMPT
from posegen_operator.model import FINAL_PHASES, Reason, worker_pod_name

NAME = "soak"
POSE_SECONDS = 0.25
HEARTBEAT_TTL = 4.0
# Tuned like the e2e tests: quick poses, short heartbeats and sweeps, so faults are noticed in seconds.
OPERATOR_ENV = {
    "POSEGEN_POSE_SECONDS": str(POSE_SECONDS),
    "POSEGEN_SWEEP_INTERVAL_SECONDS": "2",
    "POSEGEN_STATUS_INTERVAL_SECONDS": "0.5",
    "POSEGEN_HEARTBEAT_TTL_SECONDS": str(HEARTBEAT_TTL),
    "POSEGEN_HEARTBEAT_INTERVAL_SECONDS": "0.5",
    "POSEGEN_WORKER_STARTUP_GRACE_SECONDS": "20",  # Python starts slowly on a loaded machine
    "POSEGEN_RECOVERY_BACKOFF_SECONDS": "0.5",
    "POSEGEN_RECOVERY_BACKOFF_MAX_SECONDS": "8",
    "POSEGEN_STALL_TIMEOUT_SECONDS": "30",
    "POSEGEN_MAX_CONCURRENT": "30",
    "POSEGEN_WORKER_GRACE_SECONDS": "5",
}
NAMESPACES = 3
WINDOW = 60.0  # a recovery must follow its fault's end within this many seconds
EARLY = 1.0  # Event times are whole seconds: one may read up to a second before its fault
TARGETED = ("worker_kill", "worker_zombie", "pod_delete", "garbage_label")
SERVICES = ("operator_kill", "postgres_restart", "redis_restart", "redis_flushall", "apiserver_restart")
FAULT_KINDS = (*TARGETED, *SERVICES, "pod_quota")
# Faults that may cause a recovery of any generation: (the reasons it may give, how many per
# generation; None: any). A targeted fault causes one recovery of its own generation, for any reason.
# Redis data loss, an API server restart and a quota may cause none.
FLEET_CAUSES: dict[str, tuple[frozenset[str] | None, int | None]] = {
    # An attempt claimed just before the kill has no pod: the next operator finds it orphaned.
    "operator_kill": (frozenset({Reason.ORPHANED}), 1),
    # Workers that lose their database (issue 14 item 11 wants them kept, or at least not budgeted).
    "postgres_restart": (None, None),
}
RECOVERY_REASONS = frozenset(str(r) for r in Reason)
EVENT_ATTEMPT = re.compile(r"as attempt (\d+)\b")
ROWS = (
    "SELECT namespace || '/' || name, id, status, attempt, attempt_reason, recoveries, transient_retries, "
    "last_recovery_reason, extract(epoch FROM last_recovery_at)::float8, error_message "
    "FROM pose_generation WHERE namespace = ANY(%s)"
)
QUOTA = "soak-no-pods"


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    target: str  # "<ns>/<name>" of a generation, a namespace, or "fleet"
    detail: str = ""

    def affects(self, key: str) -> bool:
        return self.target in ("fleet", key, key.split("/", maxsplit=1)[0])


@dataclass
class Recovery:
    key: str  # "<ns>/<name>"
    attempt: int | None
    reason: str
    at: float | None
    source: str  # "row" (seen by the poll), "event", or "counter" (only the row's total shows it)
    budgeted: bool | None = None  # spent the recovery budget (None: not known, from an Event)
    cause: int | None = None  # index into the fault log
    suspect: str | None = None  # for a false one: the kinds of fault on it or the fleet shortly before


@dataclass
class Row:
    id: str
    status: str
    attempt: int
    attempt_reason: str | None
    recoveries: int  # replacements that spent the recovery budget
    transient_retries: int  # replacements for causes that are not the generation's fault
    last_recovery_reason: str | None
    last_recovery_at: float | None
    error_message: str | None


@dataclass
class Tracked:
    """One submitted generation, as the load generator sees it."""

    namespace: str
    name: str
    poses: int
    submitted: float
    phase: str | None = None
    finished: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class SoakState:
    """What the threads share: the generations, the latest rows, recoveries seen and the fault log."""

    rows: dict[str, Row] = field(default_factory=dict)
    tracked: dict[str, Tracked] = field(default_factory=dict)
    recoveries: list[Recovery] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def in_flight(self) -> list[Tracked]:
        with self.lock:
            return [t for t in self.tracked.values() if t.finished is None]


# ---- watching the rows ---------------------------------------------------------------------------
class RowWatch(threading.Thread):
    """Polls pose_generation every 0.5 s: the rows the nemesis picks targets from, and every increment
    of ``recoveries`` with the reason and time the row gives for the newest one."""

    def __init__(self, bench: BenchStack, state: SoakState, namespaces: Sequence[str]) -> None:
        super().__init__(daemon=True, name="soak-rows")
        self.bench, self.state, self.namespaces = bench, state, list(namespaces)
        self.stopping = threading.Event()
        self.polls = self.failed_polls = 0

    def run(self) -> None:
        conn: Any = None
        while not self.stopping.wait(0.5):
            try:
                if conn is None:
                    conn = psycopg2.connect(self.bench.stack.database_url, connect_timeout=3)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(ROWS, (self.namespaces,))
                    found = {key: Row(*values) for key, *values in cur.fetchall()}
                self.polls += 1
            except psycopg2.Error:
                self.failed_polls += 1
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                continue
            self.record(found)

    def record(self, found: dict[str, Row]) -> None:
        with self.state.lock:
            for key, row in found.items():
                seen = self.state.rows.get(key)
                budgeted = row.recoveries - (seen.recoveries if seen else 0)
                transient = row.transient_retries - (seen.transient_retries if seen else 0)
                if budgeted + transient > 0:
                    # Only the newest recovery's reason and time are in the row; Events fill in the rest.
                    attempt = row.attempt if row.attempt_reason is not None else None
                    reason = row.last_recovery_reason or "?"
                    self.state.recoveries.append(
                        Recovery(key, attempt, reason, row.last_recovery_at, "row", budgeted=budgeted > 0)
                    )
            self.state.rows = found


# ---- the load ------------------------------------------------------------------------------------
class Load(threading.Thread):
    """Keeps ``concurrency`` generations in flight; a generation is finished when both its resource's
    phase and its row's status are final, and is then deleted (as a user would clean up)."""

    def __init__(
        self, bench: BenchStack, state: SoakState, namespaces: Sequence[str], args: argparse.Namespace
    ) -> None:
        super().__init__(daemon=True, name="soak-load")
        self.bench, self.state, self.namespaces, self.args = bench, state, list(namespaces), args
        self.rng = random.Random(args.seed * 7919 + 1)
        self.submitting = threading.Event()
        self.submitting.set()
        self.stopping = threading.Event()
        self.sequence = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.collect()
                if self.submitting.is_set():
                    self.submit()
            except Exception:  # the API server or Postgres may be down: the nemesis' doing
                self.errors += 1

    def collect(self) -> None:
        phases: dict[str, str | None] = {}
        for namespace in self.namespaces:
            for body in self.bench.list_generations(namespace):
                meta = body["metadata"]
                phases[f"{namespace}/{meta['name']}"] = (body.get("status") or {}).get("phase")
        rows = self.state.rows
        done = []
        with self.state.lock:
            for tracked in self.state.tracked.values():
                if tracked.finished is not None or tracked.key not in phases:
                    continue
                tracked.phase = phases[tracked.key]
                row = rows.get(tracked.key)
                if tracked.phase in FINAL_PHASES and row is not None and row.status in FINAL_STATUSES:
                    tracked.finished = time.time()
                    done.append(tracked)
        for tracked in done:
            with contextlib.suppress(kubernetes.client.ApiException):
                self.bench.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, tracked.namespace, PLURAL, tracked.name, _request_timeout=(5, 15)
                )

    def submit(self) -> None:
        low, high = self.args.poses
        for _ in range(self.args.concurrency - len(self.state.in_flight())):
            self.sequence += 1
            namespace = self.rng.choice(self.namespaces)
            tracked = Tracked(namespace, f"s{self.sequence:05d}", self.rng.randint(low, high), time.time())
            self.bench.custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                generation_manifest(tracked.name, projectId="soak", variationCount=tracked.poses),
                _request_timeout=(5, 15),
            )
            with self.state.lock:
                self.state.tracked[tracked.key] = tracked


# ---- the nemesis ---------------------------------------------------------------------------------
class Nemesis:
    """Injects one fault at a time (restarts block; stops and quotas are undone later)."""

    def __init__(
        self, bench: BenchStack, state: SoakState, namespaces: Sequence[str], args: argparse.Namespace
    ) -> None:
        self.bench, self.state, self.namespaces, self.args = bench, state, list(namespaces), args
        self.rng = random.Random(args.seed)
        self.kinds = list(args.faults)
        self.deck: list[str] = []
        self.started = time.time()
        self.undo: list[tuple[float, Fault, Callable[[], None]]] = []
        self.operator_start_failures = 0
        self.node_restarts = 0
        self.injectors: dict[str, Callable[[Fault], bool]] = {
            "worker_kill": self.worker_kill,
            "worker_zombie": self.worker_zombie,
            "pod_delete": self.pod_delete,
            "garbage_label": self.garbage_label,
            "operator_kill": self.operator_kill,
            "postgres_restart": self.postgres_restart,
            "redis_restart": self.redis_restart,
            "redis_flushall": self.redis_flushall,
            "apiserver_restart": self.apiserver_restart,
            "pod_quota": self.pod_quota,
        }

    def run(self, until: float, on_tick: Callable[[], None]) -> None:
        next_at = time.time() + self.rng.expovariate(1 / self.args.fault_interval)
        while time.time() < until:
            self.undo_due(time.time())
            if time.time() >= next_at:
                if not self.deck:
                    self.deck = self.rng.sample(self.kinds, len(self.kinds))
                kind = self.deck[-1]
                if self.inject(kind):
                    self.deck.pop()
                    next_at = time.time() + self.rng.expovariate(1 / self.args.fault_interval)
                else:
                    self.state.skipped[kind] = self.state.skipped.get(kind, 0) + 1
                    next_at = time.time() + 1.0  # no target now (say, no worker running): try again soon
            self.keep_node_running()
            on_tick()
            time.sleep(0.2)

    def inject(self, kind: str) -> bool:
        fault = Fault(kind, time.time(), time.time(), "fleet")
        try:
            if not self.injectors[kind](fault):
                return False
        except (kubernetes.client.ApiException, OSError, redis.RedisError) as error:
            self.log(f"{kind} could not be injected: {error!r}")
            return False
        if fault.end < fault.start:
            fault.end = time.time()
        with self.state.lock:
            self.state.faults.append(fault)
        self.log(f"FAULT {kind:<17} {fault.target:<18} {fault.detail}", at=fault.start)
        return True

    def keep_node_running(self) -> None:
        """The local node runner (the kubelet's stand-in) exits when the API server is gone for a while,
        which a kubelet does not do; start it again (it adopts the running pod processes) and count it."""
        stack = self.bench.stack
        if running_pid(stack.run_dir / "node.pid") is None:
            self.node_restarts += 1
            self.log("node runner not running: starting it again (it adopts the running pod processes)")
            stack.start_process_node()

    def undo_due(self, now: float) -> None:
        for item in [u for u in self.undo if u[0] <= now]:
            self.undo.remove(item)
            _, fault, action = item
            with contextlib.suppress(Exception):
                action()
            fault.end = time.time()
            self.log(f"  undo {fault.kind} {fault.target} after {fault.end - fault.start:.1f} s")

    def undo_all(self) -> None:
        self.undo_due(float("inf"))

    def log(self, text: str, *, at: float | None = None) -> None:
        print(f"[{(at or time.time()) - self.started:7.1f}s] {text}", flush=True)

    # ---- targets ---------------------------------------------------------------------------------
    def running_worker(self) -> tuple[str, str, int, int] | None:
        """A generation whose current attempt's worker process runs: (key, pod, attempt, pid)."""
        rows = [(key, row) for key, row in self.state.rows.items() if row.status == "processing"]
        self.rng.shuffle(rows)
        for key, row in rows:
            namespace, name = key.split("/")
            pod = worker_pod_name(name, row.attempt)
            pids = read_pids(self.bench.state_dir / "node" / namespace / f"{pod}.pid")
            if pids and self.bench.owns(pids[0]) and pid_alive(pids[0]):
                return key, pod, row.attempt, pids[0]
        return None

    def worker_kill(self, fault: Fault) -> bool:
        found = self.running_worker()
        if found is None:
            return False
        fault.target, pod, attempt, pid = found
        os.kill(pid, signal.SIGKILL)
        fault.detail = f"pod {pod} (attempt {attempt}) pid {pid}"
        return True

    def worker_zombie(self, fault: Fault) -> bool:
        found = self.running_worker()
        if found is None:
            return False
        fault.target, pod, attempt, pid = found
        pause = self.rng.uniform(1.5, 3.0) * HEARTBEAT_TTL
        os.kill(pid, signal.SIGSTOP)
        fault.end = fault.start + pause
        fault.detail = f"pod {pod} (attempt {attempt}) pid {pid} stopped for {pause:.1f} s"
        self.undo.append((fault.end, fault, lambda: os.kill(pid, signal.SIGCONT)))
        return True

    def pod_delete(self, fault: Fault) -> bool:
        found = self.running_worker()
        if found is None:
            return False
        fault.target, pod, attempt, _ = found
        self.bench.core.delete_namespaced_pod(pod, fault.target.split("/")[0], _request_timeout=(5, 15))
        fault.detail = f"pod {pod} (attempt {attempt})"
        return True

    def garbage_label(self, fault: Fault) -> bool:
        found = self.running_worker()
        if found is None:
            return False
        fault.target, pod, attempt, _ = found
        patch = {"metadata": {"labels": {LABEL_ATTEMPT: "x"}}}
        self.bench.core.patch_namespaced_pod(pod, fault.target.split("/")[0], patch, _request_timeout=(5, 15))
        fault.detail = f"pod {pod} (attempt {attempt}) labelled {LABEL_ATTEMPT}=x"
        return True

    def pod_quota(self, fault: Fault) -> bool:
        namespace = self.rng.choice(self.namespaces)
        quota = {"metadata": {"name": QUOTA}, "spec": {"hard": {"pods": "0"}}}
        self.bench.core.create_namespaced_resource_quota(namespace, quota, _request_timeout=(5, 15))
        held = self.rng.uniform(8, 20)
        fault.target, fault.end = namespace, fault.start + held
        fault.detail = f"ResourceQuota {QUOTA} pods: 0 for {held:.1f} s, pod creates refused: {self.refused(namespace)}"

        def lift() -> None:
            wait_for(
                lambda: self.bench.core.delete_namespaced_resource_quota(QUOTA, namespace, _request_timeout=(5, 15)),
                timeout=60,
                interval=1,
                what=f"the quota in {namespace} to be removed",
            )

        self.undo.append((fault.end, fault, lift))
        return True

    def refused(self, namespace: str) -> bool:
        """Does the API server refuse a pod (a dry run) within a few seconds? Admission enforces a quota
        once the quota controller has filled in its status."""
        pod = {"metadata": {"name": "soak-probe"}, "spec": {"containers": [{"name": "c", "image": "none"}]}}

        def probe() -> bool:
            try:
                self.bench.core.create_namespaced_pod(namespace, pod, dry_run="All", _request_timeout=(5, 15))
            except kubernetes.client.ApiException as error:
                return bool(error.status == 403)
            return False

        with contextlib.suppress(WaitTimeout):
            return wait_for(probe, timeout=5, interval=0.5, what="a pod create to be refused")
        return False

    # ---- services --------------------------------------------------------------------------------
    def operator_kill(self, fault: Fault) -> bool:
        stack = self.bench.stack
        pid = read_pid(stack.run_dir / "operator.pid")
        stack.stop_operator(sig=signal.SIGKILL)
        down = self.rng.uniform(0, 2)
        time.sleep(down)
        ready = self.start_operator()
        fault.end = time.time()
        fault.detail = f"pid {pid}, down {down:.1f} s, " + (
            f"ready again after {fault.end - fault.start:.1f} s" if ready else "DID NOT COME BACK"
        )
        return True

    def start_operator(self, attempts: int = 3) -> bool:
        for _ in range(attempts):
            try:
                self.bench.stack.start_operator()
                return True
            except StackError as error:
                self.log(f"operator not ready: {str(error).splitlines()[0]}")
        self.operator_start_failures += 1
        return False

    def postgres_restart(self, fault: Fault) -> bool:
        stack = self.bench.stack
        # The run pid file names runuser, which does not pass signals on: stop the postmaster itself
        # (SIGINT: fast shutdown, what a failover or `pg_ctl stop -m fast` does).
        postmaster = read_pid(stack.state_dir / "postgres" / "postmaster.pid")
        if postmaster is None:
            return False
        os.kill(postmaster, signal.SIGINT)
        wait_for(lambda: not pid_alive(postmaster), timeout=60, interval=0.1, what="postgres to stop")
        down = self.rng.uniform(1, 5)
        stack.restart("postgres", down_seconds=down)
        fault.end = time.time()
        fault.detail = f"postmaster {postmaster}, down {down:.1f} s, up again after {fault.end - fault.start:.1f} s"
        return True

    def redis_restart(self, fault: Fault) -> bool:
        down = self.rng.uniform(0.5, 3)
        self.bench.stack.restart("redis", down_seconds=down)
        fault.end = time.time()
        fault.detail = f"down {down:.1f} s, started empty after {fault.end - fault.start:.1f} s"
        return True

    def redis_flushall(self, fault: Fault) -> bool:
        client = redis.Redis.from_url(self.bench.stack.redis_url, socket_timeout=5)
        try:
            keys = client.dbsize()
            client.flushall()
        finally:
            client.close()
        fault.detail = f"{keys} keys dropped"
        return True

    def apiserver_restart(self, fault: Fault) -> bool:
        down = self.rng.uniform(1, 3)
        self.bench.stack.restart("kube-apiserver", down_seconds=down)
        fault.end = time.time()
        fault.detail = f"down {down:.1f} s, ready again after {fault.end - fault.start:.1f} s"
        return True


# ---- after the soak: recoveries, attribution, time to recover ------------------------------------
def recovery_events(bench: BenchStack, namespaces: Sequence[str]) -> list[Recovery]:
    """The operator's recovery Events ('<reason>' Warnings on a PoseGeneration, '... as attempt N')."""
    found = []
    for namespace in namespaces:
        for event in bench.core.list_namespaced_event(namespace, _request_timeout=(5, 60)).items:
            involved = event.involved_object
            if involved.kind != "PoseGeneration" or event.reason not in RECOVERY_REASONS:
                continue
            match = EVENT_ATTEMPT.search(event.message or "")
            stamp = event.first_timestamp or event.event_time
            found.append(
                Recovery(
                    f"{namespace}/{involved.name}",
                    int(match.group(1)) if match else None,
                    event.reason,
                    stamp.timestamp() if stamp else None,
                    "event",
                )
            )
    return found


def merge_recoveries(polled: list[Recovery], events: list[Recovery], rows: dict[str, Row]) -> list[Recovery]:
    """One entry per recovery: the polls' (exact times), Events for attempts no poll saw, and
    placeholders for what only a row's counter shows."""
    merged: list[Recovery] = []
    for key in sorted({r.key for r in polled} | {e.key for e in events} | set(rows)):
        mine = [r for r in polled if r.key == key and r.attempt is not None]
        attempts = {r.attempt for r in mine}
        for event in sorted((e for e in events if e.key == key), key=lambda e: e.at or 0):
            if event.attempt not in attempts:
                mine.append(event)
                attempts.add(event.attempt)
        counted = rows[key].recoveries + rows[key].transient_retries if key in rows else len(mine)
        unseen = [r for r in polled if r.key == key and r.attempt is None]
        while len(mine) < counted:
            mine.append(unseen.pop() if unseen else Recovery(key, None, "?", None, "counter"))
        merged += mine
    return sorted(merged, key=lambda r: (r.at or float("inf"), r.key))


def attribute(recoveries: list[Recovery], faults: list[Fault]) -> None:
    """Match each recovery (in time order) to a fault that could cause it; see the module docstring."""
    used_targeted: set[int] = set()
    used_fleet: dict[tuple[int, str], int] = {}
    for recovery in recoveries:
        at = recovery.at
        if at is None:
            continue

        def within(fault: Fault, at: float = at) -> bool:
            return fault.start - EARLY <= at <= fault.end + WINDOW

        candidates = [
            i
            for i, f in enumerate(faults)
            if f.kind in TARGETED and f.target == recovery.key and i not in used_targeted and within(f)
        ]
        if candidates:
            recovery.cause = candidates[0]
            used_targeted.add(candidates[0])
            continue
        for i, fault in enumerate(faults):
            if fault.kind not in FLEET_CAUSES or not within(fault):
                continue
            reasons, limit = FLEET_CAUSES[fault.kind]
            if reasons is not None and recovery.reason not in reasons:
                continue
            count = used_fleet.get((i, recovery.key), 0)
            if limit is None or count < limit:
                used_fleet[(i, recovery.key)] = count + 1
                recovery.cause = i
                break
        if recovery.cause is None:
            near = sorted({f.kind for f in faults if f.affects(recovery.key) and within(f)})
            recovery.suspect = "+".join(near) or "none"


def time_to_recover(
    bench: BenchStack, faults: list[Fault], affected: list[list[str]], ids: dict[str, str]
) -> dict[str, list[float]]:
    """Seconds from each fault's start to each affected generation's next recorded pose, by kind."""
    pairs = [(i, ids[key]) for i, keys in enumerate(affected) for key in keys if key in ids]
    if not pairs:
        return {}
    rows = bench.sql(
        "SELECT k.i, extract(epoch FROM (SELECT min(p.created_at) FROM generated_pose p "
        "WHERE p.generation_id = k.g AND p.created_at > to_timestamp(k.t)))::float8 "
        "FROM unnest(%s::int[], %s::text[], %s::float8[]) AS k(i, g, t)",
        [i for i, _ in pairs],
        [g for _, g in pairs],
        [faults[i].start for i, _ in pairs],
    )
    by_kind: dict[str, list[float]] = {}
    for i, next_pose in rows:
        if next_pose is not None:
            by_kind.setdefault(faults[i].kind, []).append(next_pose - faults[i].start)
    return by_kind


# ---- the run -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"{PYTHON} -m bench.{NAME}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected (default 5)")
    p.add_argument("--seed", type=int, help="random seed (default: one is drawn and printed)")
    p.add_argument("--concurrency", type=int, default=8, help="generations kept in flight (default 8)")
    p.add_argument("--fault-interval", type=float, default=10.0, help="mean seconds between faults (default 10)")
    p.add_argument("--poses", type=int, nargs=2, default=(30, 80), metavar=("MIN", "MAX"), help="variationCount range")
    p.add_argument(
        "--faults", default=",".join(FAULT_KINDS), help="comma-separated fault kinds to inject (default: all)"
    )
    p.add_argument("--skip", default="", help="comma-separated fault kinds not to inject")
    p.add_argument("--drain-seconds", type=float, default=240.0, help="time for every generation to finish")
    p.add_argument("--keep", action="store_true", help="keep the stack's state dir (logs) after the run")
    p.add_argument("--results", default=NAME, help="results file name in bench/results/ (default soak)")
    args = p.parse_args(argv)
    skip = {k for k in args.skip.split(",") if k}
    args.faults = [k for k in args.faults.split(",") if k and k not in skip]
    unknown = sorted(set(args.faults) - set(FAULT_KINDS))
    if unknown or not args.faults:
        p.error(f"unknown or no fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 100_000)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    command = (
        f"{PYTHON} -m bench.{NAME} --minutes {args.minutes:g} --seed {args.seed} --concurrency {args.concurrency} "
        f"--fault-interval {args.fault_interval:g} --poses {args.poses[0]} {args.poses[1]} "
        f"--faults {','.join(args.faults)} --drain-seconds {args.drain_seconds:g}"
    )
    report = Report(args.results, f"{args.minutes:g} min", command)
    report.settings = {
        **{k: v for k, v in vars(args).items() if k not in ("keep", "results")},
        "operator_env": OPERATOR_ENV,
    }
    state = SoakState()
    with BenchStack(NAME, OPERATOR_ENV, keep=args.keep) as bench:
        namespaces = [bench.namespace(f"soak{i}") for i in range(NAMESPACES)]
        rows, load = RowWatch(bench, state, namespaces), Load(bench, state, namespaces, args)
        rows.start()
        load.start()
        # Faults start once the load does: a first generation processing.
        wait_for(
            lambda: any(row.status == "processing" for row in state.rows.values()),
            timeout=120,
            what="the first generation to start",
        )
        nemesis = Nemesis(bench, state, namespaces, args)
        started = nemesis.started
        last_status = [started]

        def status_line() -> None:
            if time.time() - last_status[0] >= 30:
                last_status[0] = time.time()
                with state.lock:
                    done = [t for t in state.tracked.values() if t.finished is not None]
                    recovered = len(state.recoveries)
                nemesis.log(
                    f"status: {len(state.in_flight())} in flight, {len(done)} finished "
                    f"({sum(1 for t in done if t.phase == 'Completed')} completed), {len(state.faults)} faults, "
                    f"{recovered} recoveries seen"
                )

        print(
            f"soak: {args.minutes:g} min of faults (seed {args.seed}, one every ~{args.fault_interval:g} s: "
            f"{', '.join(args.faults)}), {args.concurrency} generations in flight in {', '.join(namespaces)}",
            flush=True,
        )
        try:
            nemesis.run(started + 60 * args.minutes, status_line)
        finally:
            nemesis.undo_all()
        fault_end = time.time()
        load.submitting.clear()
        nemesis.log("faults stopped, submissions stopped; draining")
        operator = read_pid(bench.stack.run_dir / "operator.pid")
        if operator is None or not pid_alive(operator):
            nemesis.start_operator()
        drain_deadline = time.time() + args.drain_seconds
        while state.in_flight() and time.time() < drain_deadline:
            time.sleep(1)
            nemesis.keep_node_running()
            status_line()
        drained = time.time() - fault_end
        load.stopping.set()
        load.join(30)
        rows.stopping.set()
        rows.join(10)
        rows.record({key: Row(*values) for key, *values in bench.sql(ROWS, namespaces)})
        figures = evaluate(bench, state, namespaces, nemesis, drained, report)
        figures["row_polls"] = {"ok": rows.polls, "failed": rows.failed_polls}
        figures["load_errors"] = load.errors
        report.figures = figures
    report.save()
    return figures


def evaluate(
    bench: BenchStack,
    state: SoakState,
    namespaces: Sequence[str],
    nemesis: Nemesis,
    drained: float,
    report: Report,
) -> dict[str, Any]:
    faults, rows = state.faults, state.rows
    recoveries = merge_recoveries(state.recoveries, recovery_events(bench, namespaces), rows)
    attribute(recoveries, faults)
    ledger = audit(bench, namespaces)
    tracked = list(state.tracked.values())
    unfinished = [t.key for t in tracked if t.finished is None]
    outcomes: dict[str, int] = {}
    for t in tracked:
        phase = t.phase if t.finished is not None and t.phase else f"unfinished ({t.phase or 'no phase'})"
        outcomes[phase] = outcomes.get(phase, 0) + 1
    failures: dict[str, int] = {}
    for row in rows.values():
        if row.status == "failed":
            cause = (row.error_message or "?").split(";")[0][:90]
            failures[cause] = failures.get(cause, 0) + 1

    # Time to recover: the targeted generation, or every generation processing when the fault began.
    processing_at: list[list[str]] = []
    for fault in faults:
        if fault.kind in TARGETED:
            processing_at.append([fault.target])
        else:
            processing_at.append(
                [
                    t.key
                    for t in tracked
                    if fault.affects(t.key) and t.submitted < fault.start and (t.finished or 1e18) > fault.end
                ]
            )
    ttr = time_to_recover(bench, faults, processing_at, {key: row.id for key, row in rows.items()})

    false = [r for r in recoveries if r.cause is None]
    by_kind: dict[str, dict[str, Any]] = {}
    table_rows: list[tuple[Any, ...]] = []
    for kind in FAULT_KINDS:
        figures = {
            "injected": sum(1 for f in faults if f.kind == kind),
            "skipped_no_target": state.skipped.get(kind, 0),
            "recoveries_attributed": sum(1 for r in recoveries if r.cause is not None and faults[r.cause].kind == kind),
            "false_recoveries_after": sum(1 for r in false if kind in (r.suspect or "").split("+")),
        }
        s = summary(ttr.get(kind, []))
        by_kind[kind] = {**figures, "ttr": s}
        table_rows.append((kind, *figures.values(), s["n"], s["p50"], s["p99"], s["max"]))
    all_ttr = summary([v for values in ttr.values() for v in values])
    table_rows.append(
        (
            "all",
            len(faults),
            sum(state.skipped.values()),
            len(recoveries) - len(false),
            len(false),
            all_ttr["n"],
            all_ttr["p50"],
            all_ttr["p99"],
            all_ttr["max"],
        )
    )
    print("\nfaults injected, and time to recover (fault -> next recorded pose of an affected generation)")
    print_table(
        ["kind", "injected", "no target", "recoveries", "false after", "ttr n", "p50 s", "p99 s", "max s"], table_rows
    )
    reasons: dict[str, dict[str, int]] = {}
    for r in recoveries:
        entry = reasons.setdefault(r.reason, {"total": 0, "budgeted": 0, "attributed": 0, "false": 0})
        entry["total"] += 1
        entry["budgeted"] += bool(r.budgeted)
        entry["attributed" if r.cause is not None else "false"] += 1
    print("\nrecoveries by reason")
    print_table(
        ["reason", "total", "budgeted", "attributed", "false"],
        [(reason, *v.values()) for reason, v in sorted(reasons.items())],
    )
    false_by: dict[str, int] = {}
    for r in false:
        label = f"{r.reason} after {r.suspect or 'unknown time'}"
        false_by[label] = false_by.get(label, 0) + 1
    if false_by:
        print(f"\nfalse recoveries (reason, after the faults on that generation or the fleet within {WINDOW:g} s)")
        print_table(["false recovery", "count"], sorted(false_by.items(), key=lambda kv: -kv[1]))
    print("\noutcomes")
    print_table(["phase", "generations"], sorted(outcomes.items()))
    if failures:
        print_table(["failed because", "generations"], sorted(failures.items(), key=lambda kv: -kv[1]))
    print(
        f"\nledger: {len(ledger.generations)} generations with rows, {ledger.pose_rows} pose rows, lost {ledger.lost}, "
        f"duplicated {ledger.duplicated}, completed but not exactly once {ledger.inexact}, seed duplicate query rows "
        f"{ledger.seed_duplicates}; drained in {drained:.0f} s; operator restarts that failed "
        f"{nemesis.operator_start_failures}, node runner restarts {nemesis.node_restarts}"
    )
    if unfinished:
        print(f"unfinished: {', '.join(unfinished[:20])}" + (" ..." if len(unfinished) > 20 else ""))
    report.target("generations unfinished after the drain", len(unfinished), 0, "")
    report.target("poses lost", ledger.lost, 0, "")
    report.target("poses duplicated", ledger.duplicated + ledger.seed_duplicates + ledger.inexact, 0, "")
    report.target("false recoveries", len(false), 0, "")
    return {
        "ok": all(t["met"] for t in report.targets),
        "generations": len(tracked),
        "outcomes": outcomes,
        "failures": failures,
        "unfinished": len(unfinished),
        "lost": ledger.lost,
        "duplicated": ledger.duplicated,
        "seed_duplicates": ledger.seed_duplicates,
        "inexact": ledger.inexact,
        "pose_rows": ledger.pose_rows,
        "faults_by_kind": by_kind,
        "faults_injected": len(faults),
        "recoveries": len(recoveries),
        "recoveries_by_reason": reasons,
        "false_recoveries": len(false),
        "false_recoveries_by_kind": false_by,
        "time_to_recover": all_ttr,
        "drain_seconds": drained,
        "operator_start_failures": nemesis.operator_start_failures,
        "node_runner_restarts": nemesis.node_restarts,
        "fault_log": [{**asdict(f), "at": dt.datetime.fromtimestamp(f.start, dt.UTC).isoformat()} for f in faults],
        "recovery_log": [
            {**asdict(r), "cause": faults[r.cause].kind if r.cause is not None else None} for r in recoveries
        ],
    }


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:])["ok"] else 1)
