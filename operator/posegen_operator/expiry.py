"""Hang detection as an event: Redis tells us the moment a heartbeat key expires (keyspace
notifications), so a frozen worker is replaced about one heartbeat TTL after its last beat instead
of waiting for the next sweep. Where Redis refuses the notification setting (some managed Redis
services do), the sweep still catches every hang; this is only the fast path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from posegen_common import keys

log = logging.getLogger("posegen.operator")
RECONNECT_SECONDS = 2.0


class HeartbeatExpiryWatcher:
    def __init__(self, client: redis.Redis, on_expired: Callable[[str, int], None]) -> None:
        self.client = client
        self.on_expired = on_expired
        self.database = int(client.connection_pool.connection_kwargs.get("db", 0))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._enable_notifications()
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(f"__keyevent@{self.database}__:expired")
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    key = message["data"].decode() if isinstance(message["data"], bytes) else str(message["data"])
                    owner = keys.heartbeat_owner(key)
                    if owner is not None:
                        self.on_expired(*owner)
            except redis.RedisError as error:
                log.debug("heartbeat expiry watch interrupted (%s); the sweep covers meanwhile", error)
                self._stopping.wait(RECONNECT_SECONDS)

    def _enable_notifications(self) -> None:
        """Expired-key events on (keeping whatever else is already configured)."""
        try:
            current = str(self.client.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
            if "E" not in current or ("x" not in current and "A" not in current):
                self.client.config_set("notify-keyspace-events", "".join(sorted(set(current) | {"E", "x"})))
        except redis.ResponseError as error:
            log.warning("redis refuses keyspace notifications (%s): hangs are caught by the sweep only", error)
