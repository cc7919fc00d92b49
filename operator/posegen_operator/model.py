"""The planning model: what a pass observed, as plain frozen dataclasses the rules decide on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from posegen_common.checkpoint import GenerationState
from posegen_common.contract import GenerationSpec

if TYPE_CHECKING:
    from posegen_operator.actions import Recovery, StartWorker


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    PROCESSING = "Processing"
    RECOVERING = "Recovering"
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})


class Reason(StrEnum):
    """Why a worker was replaced."""

    CRASHED = "Crashed"
    OOM_KILLED = "OOMKilled"
    HUNG = "Hung"
    STALLED = "Stalled"
    EVICTED = "Evicted"
    NOT_STARTED = "NotStarted"
    ORPHANED = "OrphanedAfterRestart"
    MANUAL = "Manual"
    # Not the generation's fault: outside the recovery budget (posegen_common.exit_codes).
    DEPENDENCY_UNAVAILABLE = "DependencyUnavailable"
    DISK_FULL = "DiskFull"


@dataclass(frozen=True)
class Policy:
    stall_timeout: float
    deadline: float
    max_recoveries: int


@dataclass(frozen=True)
class PlanConfig:
    max_concurrent: int
    heartbeat_ttl: float
    worker_startup_grace: float
    backoff_base: float
    backoff_max: float
    worker_start_timeout: float = 300.0  # a worker pod not running by then is replaced or failed
    max_per_namespace: int = 0  # worker slots one namespace may hold at once; 0: no limit


@dataclass(frozen=True)
class PodView:
    name: str
    attempt: int | None  # None: its attempt label is missing or malformed (it is no one's worker)
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool
    exit_code: int | None = None
    reason: str | None = None  # pod.status.reason: Evicted, NodeLost, ...
    running_since: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    # Why the container is not running yet (kubelet's waiting reason, or Unschedulable), and why it
    # ended (terminated reason: OOMKilled, Error, ContainerCannotRun...), with their messages.
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated_reason: str | None = None
    terminated_message: str | None = None

    @property
    def live(self) -> bool:
        return not self.deleting and self.phase in ("Pending", "Running", "Unknown")

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class HeartbeatView:
    attempt: int
    poses: int


@dataclass(frozen=True)
class GenerationView:
    """One PoseGeneration with everything observed about it."""

    namespace: str
    name: str
    uid: str
    created_at: dt.datetime
    spec_generation: int
    priority: int
    suspend: bool
    deleting: bool
    has_finalizer: bool
    policy: Policy
    spec: GenerationSpec
    status: dict[str, Any]
    recover_request: str | None = None
    row: GenerationState | None = None
    pods: tuple[PodView, ...] = ()
    heartbeat: HeartbeatView | None = None
    heartbeat_silent_for: float | None = None  # seconds this operator has seen the heartbeat missing

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def manual_check(self) -> bool:
        return self.recover_request is not None and self.recover_request != self.status.get("lastRecoveryRequest")


@dataclass(frozen=True)
class InvalidGeneration:
    """A PoseGeneration the operator cannot read (skipped; its status says why)."""

    key: tuple[str, str]
    uid: str
    spec_generation: int
    status: dict[str, Any]
    message: str


@dataclass(frozen=True)
class Snapshot:
    generations: tuple[GenerationView, ...]
    now: dt.datetime  # the operator's clock, for pod ages
    db_now: dt.datetime  # the database's clock, for row timestamps
    heartbeats_trustworthy: bool  # missing heartbeats may be taken for hangs (Redis kept its data)
    first_pass: bool  # the start-up sweep after the operator (re)started or became leader
    orphan_row_ids: frozenset[str] = frozenset()  # unfinished rows whose resource is gone
    redis_reachable: bool = True
    redis_data_lost: bool = False  # this pass found Redis emptied (workers' Redis users are gone too)
    invalid: tuple[InvalidGeneration, ...] = ()  # generations the operator cannot read
    database_back_for: float | None = None  # seconds since the database came back from an outage


def worker_pod_name(generation_name: str, attempt: int) -> str:
    return f"{generation_name}-w{attempt}"


@dataclass
class Decision:
    """What the rules decided for one generation; ``status.render`` turns it into its status."""

    view: GenerationView
    row: GenerationState
    phase: Phase | None = None
    message: str = ""
    worker_pod: str | None = None
    holds_slot: bool = False
    wants_slot: bool = False
    recovery: Recovery | None = None
    start: StartWorker | None = None
    degraded: tuple[str, str] | None = None  # (reason, message): something is wrong and being handled
    failure: tuple[str, str] | None = None  # (reason, message) of a Failed generation
