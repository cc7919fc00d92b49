"""Why a worker stopped: each known cause gets its exit code (``posegen_common.exit_codes``, which
tells the operator whether to retry, recover or fail) and one line naming it."""

from __future__ import annotations

import logging

from posegen_common.exit_codes import ExitCode
from posegen_worker.generators import PermanentGenerationError, TransientGenerationError, UpstreamRefusedError

log = logging.getLogger("posegen.worker")


class DependencyUnavailable(Exception):
    """Postgres stayed unreachable for longer than the worker's retry bound."""


def classify(error: Exception) -> tuple[ExitCode, str]:
    """The exit code for ``error`` and the cause in one line; anything unknown is a crash."""
    if isinstance(error, DependencyUnavailable):
        return ExitCode.DEPENDENCY_UNAVAILABLE, str(error)
    if isinstance(error, TransientGenerationError):
        return ExitCode.DEPENDENCY_UNAVAILABLE, f"the image generator stayed unavailable after retries ({error})"
    if isinstance(error, UpstreamRefusedError):
        return ExitCode.UPSTREAM_REFUSED, f"the image API refused the request ({error})"
    if isinstance(error, PermanentGenerationError):
        return ExitCode.BAD_INPUT, f"the generation's input was refused ({error})"
    return ExitCode.FAILED, f"unexpected error: {type(error).__name__}: {error}"


def report(code: ExitCode, cause: str) -> None:
    """Say why the worker stops, in one log line."""
    cause = " ".join(cause.split())  # one line, whatever the error's text holds
    log.error("exiting with %s (%d): %s", code.name, code, cause)
