"""What a pass decided to do: the actions ``act`` carries out, each idempotent and fenced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from posegen_common.contract import GenerationSpec, GenerationStatus
from posegen_operator.model import Reason


@dataclass(frozen=True)
class AddFinalizer:
    key: tuple[str, str]


@dataclass(frozen=True)
class RemoveFinalizer:
    key: tuple[str, str]


@dataclass(frozen=True)
class RegisterRow:
    key: tuple[str, str]
    spec: GenerationSpec


@dataclass(frozen=True)
class StartWorker:
    """Claim attempt ``expected_attempt + 1`` (fencing every earlier worker), then create its pod."""

    key: tuple[str, str]
    uid: str
    generation_id: str
    expected_attempt: int
    reason: Reason | None = None
    detail: str = ""
    poses_completed: int = 0
    total: int = 0
    budgeted: bool = True  # a recovery spends one of the generation's recoveries

    @property
    def attempt(self) -> int:
        return self.expected_attempt + 1


@dataclass(frozen=True)
class CreatePod:
    """Create the pod of the current attempt again: its create was refused or never made, so no
    worker of this attempt ever ran and no fencing is needed."""

    key: tuple[str, str]
    uid: str
    generation_id: str
    attempt: int


@dataclass(frozen=True)
class RestoreWorkerAccess:
    """Give a running worker its Redis user back (Redis lost its ACL users with its data)."""

    key: tuple[str, str]
    generation_id: str
    attempt: int


@dataclass(frozen=True)
class RevokeCredentials:
    """The generation is over: no worker of it may log in any more."""

    key: tuple[str, str]
    generation_id: str


@dataclass(frozen=True)
class DeletePod:
    key: tuple[str, str]
    pod: str
    grace_seconds: int | None = None  # None: the pod's own grace period (a graceful stop)


@dataclass(frozen=True)
class SetRowStatus:
    key: tuple[str, str]
    generation_id: str
    status: GenerationStatus
    message: str | None = None


@dataclass(frozen=True)
class PatchStatus:
    key: tuple[str, str]
    patch: dict[str, Any]


@dataclass(frozen=True)
class PostEvent:
    key: tuple[str, str]
    uid: str
    type: str  # Normal or Warning
    reason: str
    message: str


Action = (
    AddFinalizer
    | RemoveFinalizer
    | RegisterRow
    | StartWorker
    | CreatePod
    | RestoreWorkerAccess
    | RevokeCredentials
    | DeletePod
    | SetRowStatus
    | PatchStatus
    | PostEvent
)


@dataclass(frozen=True)
class Recovery:
    """A stuck generation found by this pass, and what was decided for it."""

    generation_id: str
    key: tuple[str, str]
    reason: Reason
    detail: str
    poses_completed: int
    total: int
    outcome: str  # "recover", "backoff" or "fail"


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # generation ids waiting for a slot, in order
    retry_after: float | None = None  # seconds until something time-based is due
    skipped: list[tuple[tuple[str, str], str, Exception]] = field(default_factory=list)  # (key, uid, error)

    def due_in(self, seconds: float) -> None:
        self.retry_after = seconds if self.retry_after is None else min(self.retry_after, seconds)

    def merge(self, other: Plan) -> None:
        self.actions += other.actions
        self.recoveries += other.recoveries
        self.queued += other.queued
        self.skipped += other.skipped
        if other.retry_after is not None:
            self.due_in(other.retry_after)
