"""Malformed objects (a garbage label, a spec the operator cannot read): each is skipped, logged
and counted once per object and fault, and everything else goes on. A pass never fails for one
object."""

from __future__ import annotations

import logging
import threading

from posegen_operator.metrics import Metrics

log = logging.getLogger("posegen.operator")


class PoisonLog:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str, str]] = set()  # (kind, uid, fault)

    def report(self, kind: str, uid: str, what: str, error: Exception) -> None:
        entry = (kind, uid, f"{type(error).__name__}: {error}")
        with self._lock:
            if entry in self._reported:
                return
            self._reported.add(entry)
        self.metrics.invalid_objects.labels(kind=kind).inc()
        log.warning("skipping %s: %s: %s", what, type(error).__name__, error)

    def forget(self, alive: set[str]) -> None:
        """Drop what was reported of objects that no longer exist (bounded memory)."""
        with self._lock:
            self._reported = {entry for entry in self._reported if entry[1] in alive}
