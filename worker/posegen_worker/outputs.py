"""A pose's files on the output volume, and who may write them: only the attempt whose row recorded
the pose, and never over files already there.

Each pose is staged under names of its own attempt (``.pose-0007.a3.png.tmp`` and ``.json.tmp``,
fsync'ed), then its row is recorded (fenced), and only if the row is this attempt's are the files
published with hard links, which fail rather than overwrite. A worker that did not record the pose
(superseded, or the pose was already recorded) discards what it staged; one that cannot tell (the
database unreachable) leaves it. A crash between the commit and the links leaves the recording
attempt's staged files behind: the next attempt publishes them, and drops the rest (``repair``).
So a superseded worker (a zombie) never touches published files, and two workers of one generation
never share a file name."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger("posegen.worker")

KINDS = ("png", "json")
_STAGED = re.compile(r"^\.pose-(\d+)\.a(\d+)\.(png|json)\.tmp$")


class OutputError(Exception):
    """The output volume refused a write; ``error.errno`` says why (disk full, permission denied)."""

    def __init__(self, action: str, error: OSError) -> None:
        super().__init__(f"{action}: {error}")
        self.error = error


class PoseFiles:
    """The files of one generation's poses, as written by one attempt."""

    def __init__(self, directory: Path, attempt: int) -> None:
        self.directory = directory
        self.attempt = attempt

    def final(self, index: int, kind: str) -> Path:
        return self.directory / f"pose-{index:04d}.{kind}"

    def staged(self, index: int, kind: str, attempt: int) -> Path:
        return self.directory / f".pose-{index:04d}.a{attempt}.{kind}.tmp"

    def stage(self, index: int, contents: Mapping[str, bytes]) -> None:
        """Write this attempt's files for pose ``index`` under its own names, durably (the commit
        that follows may be the only record that they exist)."""
        with _output("staging pose files"):
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                for kind in KINDS:
                    with open(self.staged(index, kind, self.attempt), "wb") as file:
                        file.write(contents[kind])
                        file.flush()
                        os.fsync(file.fileno())
                _fsync_directory(self.directory)
            except OSError:
                with contextlib.suppress(OutputError):
                    self.discard(index)
                raise

    def publish(self, index: int, attempt: int) -> bool:
        """Give the files ``attempt`` staged for pose ``index`` their final names, never replacing
        a file already there; True if every final file exists afterwards."""
        with _output("publishing pose files"):
            for kind in KINDS:
                staged, final = self.staged(index, kind, attempt), self.final(index, kind)
                # Already there: published by this attempt before a crash, or by a successor's repair.
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    os.link(staged, final)
            complete = all(self.final(index, kind).exists() for kind in KINDS)
            if complete:
                _fsync_directory(self.directory)
                for kind in KINDS:
                    self.staged(index, kind, attempt).unlink(missing_ok=True)
            return complete

    def discard(self, index: int) -> None:
        """Drop what this attempt staged for a pose it does not own; published files stay untouched."""
        with _output("discarding staged pose files"):
            for kind in KINDS:
                self.staged(index, kind, self.attempt).unlink(missing_ok=True)

    def repair(self, recorded: Mapping[int, int]) -> list[int]:
        """On resume: publish the staged files of recorded poses whose final files are missing
        (a crash or a freeze between the commit and the links), drop what superseded attempts
        staged for poses they did not record, and return the recorded poses left without files."""
        staged = list(self._staged_files())
        pending = {index for index, attempt, _ in staged if recorded.get(index) == attempt}
        lost = []
        for index, attempt in sorted(recorded.items()):
            missing = not all(self.final(index, kind).exists() for kind in KINDS)
            if not missing and index not in pending:
                continue
            if not self.publish(index, attempt):
                lost.append(index)
            elif missing:
                log.info("repaired pose %d: published the files attempt %d staged before it stopped", index, attempt)
        with _output("dropping superseded staged files"):
            for index, attempt, kind in staged:
                # Later attempts' files are not ours to judge: this worker is the superseded one then.
                if attempt < self.attempt and recorded.get(index) != attempt:
                    self.staged(index, kind, attempt).unlink(missing_ok=True)
        return lost

    def _staged_files(self) -> Iterator[tuple[int, int, str]]:
        with _output("listing the output directory"):
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                return
        for name in names:
            match = _STAGED.match(name)
            if match:
                yield int(match[1]), int(match[2]), match[3]


def _fsync_directory(directory: Path) -> None:
    """Make the names just created or removed in ``directory`` survive a host crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _output(action: str) -> Iterator[None]:
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(action, error) from error
