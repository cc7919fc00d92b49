"""The worker's exit codes and what each means to the operator: one table both sides import.

The operator reads the code from the pod's container state and decides by its ``Fault``: a crash
is recovered (spending the recovery budget), a transient cause is retried with backoff without
spending it, a permanent cause fails the generation at once, and a superseded worker is ignored."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    OK = 0  # completed, or stopped on SIGTERM / suspend with its progress recorded
    FAILED = 1  # unexpected error: a recovery resumes from the checkpoint
    SETTINGS = 2  # the pod's configuration is invalid
    SUPERSEDED = 3  # a newer attempt owns the generation: this worker must not write
    BAD_INPUT = 4  # the generation cannot be produced as asked (bad prompt)
    UPSTREAM_REFUSED = 5  # the image API refused the request or the key
    DEPENDENCY_UNAVAILABLE = 6  # Postgres, Redis or the image API unreachable beyond the retry bound
    DISK_FULL = 7  # the output volume is full
    OUTPUT_DENIED = 8  # the output volume is not writable (permissions, read-only)


class Fault(StrEnum):
    CRASH = "crash"  # recover from the checkpoint, spending one recovery
    TRANSIENT = "transient"  # not the generation's fault: retry with backoff, budget untouched
    PERMANENT = "permanent"  # retrying cannot help: fail the generation at once
    SUPERSEDED = "superseded"  # a replaced worker stepped aside: nothing to do


@dataclass(frozen=True)
class ExitMeaning:
    fault: Fault
    reason: str  # CamelCase, for conditions and Events
    message: str  # what a user can act on


_MEANINGS: dict[int, ExitMeaning] = {
    ExitCode.SETTINGS: ExitMeaning(Fault.PERMANENT, "InvalidConfiguration", "the worker's configuration is invalid"),
    ExitCode.SUPERSEDED: ExitMeaning(Fault.SUPERSEDED, "Superseded", "a newer attempt owns the generation"),
    ExitCode.BAD_INPUT: ExitMeaning(Fault.PERMANENT, "BadInput", "the generation's input was refused (bad prompt)"),
    ExitCode.UPSTREAM_REFUSED: ExitMeaning(
        Fault.PERMANENT, "UpstreamRefused", "the image API refused the request (check the API key and the prompt)"
    ),
    ExitCode.DEPENDENCY_UNAVAILABLE: ExitMeaning(
        Fault.TRANSIENT, "DependencyUnavailable", "Postgres, Redis or the image API stayed unreachable"
    ),
    ExitCode.DISK_FULL: ExitMeaning(Fault.TRANSIENT, "DiskFull", "no space left on the output volume"),
    ExitCode.OUTPUT_DENIED: ExitMeaning(
        Fault.PERMANENT, "OutputNotWritable", "permission denied writing to the output volume (check its ownership)"
    ),
}


def meaning(code: int | None) -> ExitMeaning:
    """What an exit code means; unknown codes and signals (137, 143) are crashes."""
    return _MEANINGS.get(
        code if code is not None else -1, ExitMeaning(Fault.CRASH, "Crashed", f"exited with code {code}")
    )
