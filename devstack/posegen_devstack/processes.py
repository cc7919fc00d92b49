"""Background processes of the local stack: started detached with a pid file and a log, stopped by
that pid file only (never by name), so `make down` stops what `make up` started and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from posegen_devstack.pki import Pki

T = TypeVar("T")


class StackError(RuntimeError):
    """A component of the local stack could not be started."""


class WaitTimeout(Exception):
    """Something polled for did not come true in time."""


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 30, interval: float = 0.1, what: str = "a condition"
) -> T:
    """Poll ``probe`` until it returns something truthy (the local stack, tests and benchmarks all
    wait this way); exceptions count as 'not yet' and the last one is named on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:
            last_error = error
        time.sleep(interval)
    raise WaitTimeout(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else "")
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path) -> int | None:
    pid = read_pid(pid_file)
    return pid if pid is not None and pid_alive(pid) else None


def start_detached(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start ``argv`` in its own session (it outlives the caller) unless its pid file names a live
    process already; returns the pid."""
    pid_file = run_dir / f"{name}.pid"
    pid = running_pid(pid_file)
    if pid is not None:
        return pid
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    command = list(argv)
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    with open(log_dir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def stop(pid_file: Path, *, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
    """Signal the process group the pid file names, wait, then SIGKILL; True if something was stopped."""
    pid = read_pid(pid_file)
    stopped = False
    if pid is not None and pid_alive(pid):
        stopped = True
        _signal_group(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None) -> None:
    """Wait for a component, naming it and showing the end of its log if it never comes up."""
    try:
        wait_for(check, timeout=timeout, interval=0.2, what=f"{what} to become ready")
    except WaitTimeout as error:
        tail = ""
        if log is not None and log.exists():
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise StackError(f"{error}{tail}") from None


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bytes(response.read())


def https_get(url: str, pki: Pki) -> bytes:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bytes(response.read())
