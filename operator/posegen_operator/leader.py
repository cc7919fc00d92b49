"""Leader election on a coordination.k8s.io Lease: of all replicas only the holder acts. The lease
is renewed well inside its duration; a holder that cannot renew in time steps down before another
replica may take over. Even if two replicas ever act at once, attempt fencing in Postgres keeps
every pose written once."""

from __future__ import annotations

import datetime as dt
import logging
import time

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("posegen.operator")
REQUEST_TIMEOUT = (3, 5)
# Where the holder serves its admin API: a standby forwards the recovery trigger there.
API_URL_ANNOTATION = "posegen.io/api-url"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: kubernetes.client.ApiClient | None,
        *,
        name: str,
        namespace: str,
        identity: str,
        lease_seconds: float = 15,
        renew_seconds: float = 5,
        enabled: bool = True,
        advertise_url: str | None = None,
    ) -> None:
        self.coordination = kubernetes.client.CoordinationV1Api(api) if enabled else None
        self.advertise_url = advertise_url
        self.leader_url: str | None = None  # the active replica's admin API, as its lease says
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self._held_until = 0.0  # monotonic: when our last successful renewal expires
        self._renewed_at = 0.0
        self.retry_seconds = 2.0

    @property
    def is_leader(self) -> bool:
        return self.coordination is None or time.monotonic() < self._held_until - 2

    def ensure(self) -> bool:
        """Acquire or renew as needed; True while this replica may act."""
        if self.coordination is None:
            return True
        if self.is_leader and time.monotonic() - self._renewed_at < self.renew_seconds:
            return True
        was_leader = self.is_leader
        try:
            acquired = self._try_acquire_or_renew()
        except Exception as error:
            log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, error)
            acquired = False
        if acquired:
            started = time.monotonic()
            self._renewed_at, self._held_until = started, started + self.lease_seconds
            if not was_leader:
                log.info(
                    "became the active replica (lease %s/%s, identity %s)", self.namespace, self.name, self.identity
                )
        elif was_leader and not self.is_leader:
            log.warning("lost the lease %s/%s: standing by", self.namespace, self.name)
        return self.is_leader

    def release(self) -> None:
        """Hand over at once on a clean shutdown instead of making the standby wait out the lease."""
        if self.coordination is None or not self.is_leader:
            return
        try:
            self.coordination.patch_namespaced_lease(
                self.name,
                self.namespace,
                {"spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro(_now())}},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except Exception as error:
            log.warning("lease not released: %s", error)
        self._held_until = 0.0

    def _try_acquire_or_renew(self) -> bool:
        assert self.coordination is not None
        now = _now()
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 404:
                raise
            body = {
                "metadata": {"name": self.name, "namespace": self.namespace, "annotations": self._annotations({})},
                "spec": self._spec(now, 0, now),
            }
            try:
                self.coordination.create_namespaced_lease(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        holder = spec.holder_identity
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or self.lease_seconds
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            self.leader_url = (lease.metadata.annotations or {}).get(API_URL_ANNOTATION)
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity and spec.acquire_time else now
        lease.spec = self._spec(now, transitions, acquired)
        lease.metadata.annotations = self._annotations(lease.metadata.annotations or {})
        try:
            # replace carries the resourceVersion we read: a concurrent writer makes this fail (409).
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def _annotations(self, existing: dict[str, str]) -> dict[str, str]:
        if self.advertise_url is None:
            return existing
        return {**existing, API_URL_ANNOTATION: self.advertise_url}

    def _spec(self, now: dt.datetime, transitions: int, acquired: dt.datetime) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "acquireTime": _micro(acquired),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
