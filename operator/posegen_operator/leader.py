"""Leader election on a coordination.k8s.io Lease: of all replicas only the holder acts.

As client-go does it: the lease is renewed on its own schedule by its own thread, whatever a pass
is doing; another holder's lease is judged expired by how long *this* replica has watched its
record stay unchanged, never by comparing another machine's clock; a holder that sees someone
else holding the lease, or cannot renew within the renew deadline, steps down at once; a release
clears the lease only while we still hold it. Even if two replicas ever act at once, attempt
fencing in Postgres keeps every pose written once."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from posegen_operator.kube import ApiError, KubeClient, resource_path

log = logging.getLogger("posegen.operator")
REQUEST_TIMEOUT = (3, 5)
LEASES = "coordination.k8s.io/v1"


def _micro(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Record:
    """What identifies one renewal of the lease: it changes whenever the holder renews."""

    holder: str | None
    renew_time: str | None
    duration: float


class LeaderElector:
    def __init__(
        self,
        api: KubeClient | None,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_seconds: float = 15,
        renew_deadline_seconds: float = 10,
        retry_seconds: float = 2,
        enabled: bool = True,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.api = api if enabled else None
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self.on_change = on_change or (lambda _leading: None)
        self._lock = threading.Lock()
        self._renewed_at = 0.0  # monotonic: our last successful acquire or renewal
        self._leading = False
        self._observed: _Record | None = None
        self._observed_at = 0.0  # monotonic: when this replica saw the record change last
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posegen-lease", daemon=True)

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the lease and renewed it within the renew deadline."""
        if self.api is None:
            return True
        with self._lock:
            return self._leading and time.monotonic() - self._renewed_at < self.renew_deadline

    def start(self) -> None:
        if self.api is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REQUEST_TIMEOUT[1] * 2)
        self.release()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.try_acquire_or_renew()
            self._stopping.wait(self.retry_seconds)

    def try_acquire_or_renew(self) -> bool:
        """One round: acquire the lease, renew it, or watch another holder's. True while leading."""
        try:
            leading = self._try_acquire_or_renew()
        except Exception as error:
            log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, error)
            leading = self.is_leader  # keep leading until the renew deadline passes
        self._set_leading(leading)
        return leading

    def _set_leading(self, leading: bool) -> None:
        with self._lock:
            changed, self._leading = leading != self._leading, leading
        if changed:
            if leading:
                log.info(
                    "became the active replica (lease %s/%s, identity %s)", self.namespace, self.name, self.identity
                )
            else:
                log.warning("lost the lease %s/%s: standing by", self.namespace, self.name)
            self.on_change(leading)

    def release(self) -> None:
        """Hand over at once on a clean shutdown, but only a lease we still hold."""
        if self.api is None or not self.is_leader:
            return
        self._set_leading(False)
        try:
            lease = self._read()
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != self.identity:
                return
            del spec["holderIdentity"]
            spec["leaseDurationSeconds"] = 1
            # replace carries the resourceVersion we read: it fails if anyone took the lease since.
            self._replace(lease)
        except Exception as error:
            log.warning("lease not released: %s", error)

    def _try_acquire_or_renew(self) -> bool:
        assert self.api is not None
        now = dt.datetime.now(dt.UTC)
        try:
            lease = self._read()
        except ApiError as error:
            if error.status != 404:
                raise
            metadata = {"name": self.name, "namespace": self.namespace}
            body = {"metadata": metadata, "spec": self._spec(now, 0, _micro(now))}
            try:
                self.api.request(
                    "POST", resource_path(LEASES, "leases", self.namespace), body=body, timeout=REQUEST_TIMEOUT
                )
            except ApiError as conflict:
                if conflict.status == 409:
                    return False
                raise
            self._renewed(now)
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = _Record(
            holder, spec.get("renewTime") or spec.get("acquireTime"), float(spec.get("leaseDurationSeconds") or 0)
        )
        monotonic = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, monotonic
        if holder and holder != self.identity and monotonic < self._observed_at + record.duration:
            return False  # held by another replica, renewed within its duration as we saw it
        transitions = (spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(now, transitions, acquired or _micro(now))
        try:
            # replace carries the resourceVersion we read: a concurrent writer makes this fail (409).
            self._replace(lease)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        self._renewed(now)
        return True

    def _renewed(self, now: dt.datetime) -> None:
        with self._lock:
            self._renewed_at = time.monotonic()
        self._observed = _Record(self.identity, _micro(now), self.lease_seconds)
        self._observed_at = time.monotonic()

    def _read(self) -> dict[str, Any]:
        assert self.api is not None
        path = resource_path(LEASES, "leases", self.namespace, self.name)
        return self.api.request("GET", path, timeout=REQUEST_TIMEOUT)

    def _replace(self, lease: dict[str, Any]) -> None:
        assert self.api is not None
        path = resource_path(LEASES, "leases", self.namespace, self.name)
        self.api.request("PUT", path, body=lease, timeout=REQUEST_TIMEOUT)

    def _spec(self, now: dt.datetime, transitions: int, acquired: str) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "acquireTime": acquired,
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
