"""Why a worker stops: known causes get their own exit code (and so the operator's verdict:
retry, fail at once) and a one-line cause, written where Kubernetes shows it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from posegen_common.exit_codes import ExitCode, Fault, meaning
from posegen_worker import faults
from posegen_worker.generators import PermanentGenerationError, TransientGenerationError, UpstreamRefusedError
from posegen_worker.outputs import OutputError
from posegen_worker.settings import SettingsError


def on_output(number: int) -> OutputError:
    return OutputError("staging pose files", OSError(number, "injected", "/outputs/ns/g/.pose-0001.a1.png.tmp"))


@pytest.mark.parametrize(
    ("error", "code", "fault", "words"),
    [
        (on_output(errno.ENOSPC), ExitCode.DISK_FULL, Fault.TRANSIENT, "no space left"),
        (on_output(errno.EDQUOT), ExitCode.DISK_FULL, Fault.TRANSIENT, "no space left"),
        (on_output(errno.EACCES), ExitCode.OUTPUT_DENIED, Fault.PERMANENT, "not writable"),
        (on_output(errno.EPERM), ExitCode.OUTPUT_DENIED, Fault.PERMANENT, "not writable"),
        (on_output(errno.EROFS), ExitCode.OUTPUT_DENIED, Fault.PERMANENT, "not writable"),
        (on_output(errno.EIO), ExitCode.FAILED, Fault.CRASH, "output volume error"),
        (
            faults.DependencyUnavailable("Postgres unreachable for 600s"),
            ExitCode.DEPENDENCY_UNAVAILABLE,
            Fault.TRANSIENT,
            "Postgres",
        ),
        (
            TransientGenerationError("503 after 5 tries"),
            ExitCode.DEPENDENCY_UNAVAILABLE,
            Fault.TRANSIENT,
            "after retries",
        ),
        (UpstreamRefusedError("401 invalid key"), ExitCode.UPSTREAM_REFUSED, Fault.PERMANENT, "refused"),
        (PermanentGenerationError("prompt too long"), ExitCode.BAD_INPUT, Fault.PERMANENT, "input was refused"),
        (SettingsError("REDIS_URL must be set"), ExitCode.SETTINGS, Fault.PERMANENT, "invalid configuration"),
        (KeyError("surprise"), ExitCode.FAILED, Fault.CRASH, "unexpected error: KeyError"),
    ],
)
def test_each_known_cause_has_its_code_and_says_what_it_is(
    error: Exception, code: ExitCode, fault: Fault, words: str
) -> None:
    classified, cause = faults.classify(error)
    assert classified == code
    assert meaning(classified).fault == fault
    assert words in cause and str(error) in cause


def test_the_cause_is_one_line_in_the_log_and_in_the_termination_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    message = tmp_path / "termination-log"
    faults.report(
        ExitCode.DISK_FULL, "no space left\non the output volume", {"POSEGEN_TERMINATION_MESSAGE_PATH": str(message)}
    )
    assert message.read_text() == "no space left on the output volume"
    assert [r.getMessage() for r in caplog.records] == [
        "exiting with DISK_FULL (7): no space left on the output volume"
    ]
    faults.report(ExitCode.FAILED, "x" * 10000, {"POSEGEN_TERMINATION_MESSAGE_PATH": str(message)})
    assert len(message.read_bytes()) == faults.MAX_MESSAGE_BYTES, "what the kubelet keeps"


def test_the_termination_message_goes_to_the_kubelets_file_only_where_it_exists(tmp_path: Path) -> None:
    assert faults.termination_message_path({"POSEGEN_TERMINATION_MESSAGE_PATH": "/m"}) == Path("/m")
    kubelets = tmp_path / "termination-log"
    assert faults.termination_message_path({}, kubelets) is None, "never created on a host"
    kubelets.touch()
    assert faults.termination_message_path({}, kubelets) == kubelets


def test_an_unwritable_termination_message_path_is_only_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    faults.report(ExitCode.OUTPUT_DENIED, "denied", {"POSEGEN_TERMINATION_MESSAGE_PATH": "/nonexistent/dir/log"})
    assert any("termination message not written" in r.getMessage() for r in caplog.records)
