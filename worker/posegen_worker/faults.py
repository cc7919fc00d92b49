"""Why a worker stopped: each known cause gets its exit code (``posegen_common.exit_codes``, which
tells the operator whether to retry, recover or fail) and one line naming it, logged and written as
the container's termination message (shown in the pod's status and by ``kubectl describe``)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from posegen_common.exit_codes import ExitCode
from posegen_worker.generators import PermanentGenerationError, TransientGenerationError, UpstreamRefusedError
from posegen_worker.outputs import OutputError
from posegen_worker.settings import SettingsError

log = logging.getLogger("posegen.worker")

# Where Kubernetes reads a container's termination message unless the pod says otherwise.
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
MAX_MESSAGE_BYTES = 4096  # what the kubelet keeps
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class DependencyUnavailable(Exception):
    """Postgres stayed unreachable for longer than the worker's retry bound."""


def classify(error: Exception) -> tuple[ExitCode, str]:
    """The exit code for ``error`` and the cause in one line; anything unknown is a crash."""
    if isinstance(error, OutputError):
        if error.error.errno in DISK_FULL:
            return ExitCode.DISK_FULL, f"no space left on the output volume ({error})"
        if error.error.errno in DENIED:
            return ExitCode.OUTPUT_DENIED, f"the output volume is not writable ({error})"
        return ExitCode.FAILED, f"output volume error ({error})"
    if isinstance(error, DependencyUnavailable):
        return ExitCode.DEPENDENCY_UNAVAILABLE, str(error)
    if isinstance(error, TransientGenerationError):
        return ExitCode.DEPENDENCY_UNAVAILABLE, f"the image generator stayed unavailable after retries ({error})"
    if isinstance(error, UpstreamRefusedError):
        return ExitCode.UPSTREAM_REFUSED, f"the image API refused the request ({error})"
    if isinstance(error, PermanentGenerationError):
        return ExitCode.BAD_INPUT, f"the generation's input was refused ({error})"
    if isinstance(error, SettingsError):
        return ExitCode.SETTINGS, f"invalid configuration: {error}"
    return ExitCode.FAILED, f"unexpected error: {type(error).__name__}: {error}"


def report(code: ExitCode, cause: str, environ: Mapping[str, str] | None = None) -> None:
    """Say why the worker stops: one log line, and the termination message when there is a place
    for it (``POSEGEN_TERMINATION_MESSAGE_PATH``, else the kubelet's file if it exists)."""
    cause = " ".join(cause.split())  # one line, whatever the error's text holds
    log.error("exiting with %s (%d): %s", code.name, code, cause)
    path = termination_message_path(os.environ if environ is None else environ)
    if path is None:
        return
    try:
        path.write_bytes(cause.encode()[:MAX_MESSAGE_BYTES])
    except OSError as error:
        log.warning("termination message not written to %s: %s", path, error)


def termination_message_path(environ: Mapping[str, str], default: Path = DEFAULT_TERMINATION_LOG) -> Path | None:
    configured = environ.get("POSEGEN_TERMINATION_MESSAGE_PATH")
    if configured:
        return Path(configured)
    # Only inside a container, where the kubelet created the file: never create it on a host.
    return default if default.is_file() and os.access(default, os.W_OK) else None
