"""The worker's heartbeat: a Redis key with a TTL, written by a background thread after every pose
and between poses (so a slow pose is not mistaken for a hang). A frozen process (SIGSTOP, a hung
host) stops renewing it and the key expires: that is how the operator tells hung from slow. Only
that thread talks to Redis, so a slow or frozen Redis never holds up a pose."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading

import redis

from posegen_common import keys

log = logging.getLogger("posegen.worker")


class Heartbeat:
    def __init__(
        self, client: redis.Redis, generation_id: str, attempt: int, pod_name: str, ttl: float, interval: float
    ) -> None:
        self.client = client
        self.key = keys.heartbeat(generation_id, attempt)
        self.attempt = attempt
        self.pod_name = pod_name
        self.ttl_ms = int(ttl * 1000)
        self.interval = interval
        self.poses = 0
        self._failing = False
        self._stop = threading.Event()
        self._due = threading.Event()  # a pose was recorded: renew now, not at the next interval
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self, poses: int) -> None:
        self.poses = poses
        self._thread.start()

    def beat(self, poses: int) -> None:
        """Report progress; the heartbeat thread renews the key at once."""
        self.poses = poses
        self._due.set()

    def renew(self) -> None:
        """Write the key now; a Redis outage is logged once, never fatal: Postgres holds the checkpoint."""
        value = json.dumps(
            {
                "attempt": self.attempt,
                "poses": self.poses,
                "pod": self.pod_name,
                "at": dt.datetime.now(dt.UTC).isoformat(),
            }
        )
        try:
            self.client.set(self.key, value, px=self.ttl_ms)
        except redis.RedisError as error:
            if not self._failing:  # once per outage, not every beat
                log.warning("heartbeat not renewed (redis: %s); retrying every %.1fs", error, self.interval)
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeat renewed again: redis is back")
            self._failing = False

    def stop(self) -> None:
        self._stop.set()
        self._due.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.clear()
            self.renew()
            self._due.wait(self.interval)
