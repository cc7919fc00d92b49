"""Which workers' heartbeats are missing, and for how long, as this operator has seen it.

A heartbeat counts as missing only for as long as this operator has watched it be missing, or for
one TTL when Redis reported that very key expired (it was not renewed for a whole TTL). Nothing is
inferred from silence nobody watched: a key that is simply not there may have been lost with the
rest of Redis's data. Any sign of such a loss (the sentinel key is gone, Redis unreachable or
restarted less than a TTL ago) starts every clock afresh, so FLUSHALL, a restart without
persistence or a failover to an empty replica never looks like a mass hang."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from posegen_common import keys
from posegen_operator.model import HeartbeatView

log = logging.getLogger("posegen.operator")
AttemptKey = tuple[str, int]  # (generation id, attempt)


@dataclass(frozen=True)
class HeartbeatReading:
    beats: dict[str, HeartbeatView] = field(default_factory=dict)  # by generation id
    silent_for: dict[str, float] = field(default_factory=dict)  # seconds seen missing, by generation id
    trustworthy: bool = False  # missing heartbeats may be taken for hangs
    reachable: bool = True
    data_lost: bool = False  # the sentinel was gone: Redis lost its data (and its ACL users)


class HeartbeatMonitor:
    def __init__(self, client: redis.Redis, ttl: float, identity: str) -> None:
        self.redis = client
        self.ttl = ttl
        self.identity = identity
        self._lock = threading.Lock()
        self._missing_since: dict[AttemptKey, float] = {}  # monotonic
        self._expired_at: dict[AttemptKey, float] = {}  # monotonic: when Redis reported the key expired

    def expired(self, generation_id: str, attempt: int) -> None:
        """Redis's keyspace notification: this attempt's key was not renewed for a whole TTL."""
        with self._lock:
            self._expired_at[(generation_id, attempt)] = time.monotonic()

    def read(self, attempts: list[AttemptKey]) -> HeartbeatReading:
        """The heartbeats of these attempts (one round trip), and how long each missing one has been
        seen missing."""
        if not attempts:
            return HeartbeatReading(trustworthy=True)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.info("server")
            pipe.exists(keys.SENTINEL)
            pipe.mget([keys.heartbeat(generation_id, attempt) for generation_id, attempt in attempts])
            info, sentinel, values = pipe.execute()
            if not sentinel:
                self.redis.set(keys.SENTINEL, self.identity)
        except redis.RedisError as error:
            log.warning("redis unavailable, hang detection paused: %s", error)
            self._forget()
            return HeartbeatReading(trustworthy=False, reachable=False)
        if not sentinel:
            log.warning("redis lost its data (the sentinel key is gone): hang detection starts afresh")
            self._forget()
            return HeartbeatReading(_parse(attempts, values), trustworthy=False, data_lost=True)
        if int(info.get("uptime_in_seconds", 0)) < self.ttl:
            self._forget()  # restarted: keys may be missing that the workers have not renewed yet
            return HeartbeatReading(_parse(attempts, values), trustworthy=False)
        beats = _parse(attempts, values)
        now = time.monotonic()
        silent: dict[str, float] = {}
        with self._lock:
            missing_since, expired_at = {}, {}
            for generation_id, attempt in attempts:
                key = (generation_id, attempt)
                if generation_id in beats:
                    continue
                since = missing_since[key] = self._missing_since.get(key, now)
                seen = now - since
                if key in self._expired_at:
                    expired_at[key] = self._expired_at[key]
                    seen = max(seen, self.ttl + now - self._expired_at[key])
                silent[generation_id] = seen
            self._missing_since, self._expired_at = missing_since, expired_at
        return HeartbeatReading(beats, silent, trustworthy=True)

    def _forget(self) -> None:
        with self._lock:
            self._missing_since.clear()
            self._expired_at.clear()


def _parse(attempts: list[AttemptKey], values: list[bytes | None]) -> dict[str, HeartbeatView]:
    beats: dict[str, HeartbeatView] = {}
    for (generation_id, attempt), raw in zip(attempts, values, strict=True):
        if raw is None:
            continue
        try:
            value = json.loads(raw)
            beats[generation_id] = HeartbeatView(attempt, int(value.get("poses", 0)))
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring a malformed heartbeat for %s", generation_id)
    return beats
