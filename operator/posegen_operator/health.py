"""The /health answer, cheap whatever the request rate: computed at most once per ``ttl`` seconds
(concurrent requests share one check), on a one-connection pool and a Redis client of its own, so a
flood of health probes can never take a connection the controller needs."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import text

from posegen_common.database import create_db_engine

# The seed's queue counts, each an index-only count over a partial index (generations in play,
# failed ones): the cost follows those rows, never the finished ones. A short statement timeout
# keeps a slow database from holding the probe.
COUNTS = text(
    "SELECT (SELECT count(*) FROM pose_generation WHERE status = 'queued') AS waiting,"
    " (SELECT count(*) FROM pose_generation WHERE status = 'processing') AS active,"
    " (SELECT count(*) FROM pose_generation WHERE status = 'failed') AS failed"
)
STATEMENT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class HealthAnswer:
    checks: dict[str, Any]
    healthy: bool
    checked_at: str  # when the dependencies were last asked (ISO 8601, microseconds)


class HealthCheck:
    def __init__(self, database_url: str, redis_url: str, *, ttl: float = 1.5) -> None:
        self.engine = create_db_engine(
            database_url,
            application_name="posegen-operator-health",
            pool_size=1,
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        )
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2, max_connections=2)
        self.ttl = ttl
        self._lock = asyncio.Lock()
        self._answer: HealthAnswer | None = None
        self._expires = 0.0

    async def answer(self) -> HealthAnswer:
        async with self._lock:  # the first caller checks; the ones queued behind it get its answer
            if self._answer is None or time.monotonic() >= self._expires:
                self._answer = await asyncio.to_thread(self._check)
                self._expires = time.monotonic() + self.ttl
            return self._answer

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()

    def _check(self) -> HealthAnswer:
        checks: dict[str, Any] = {}
        counts = {"waiting": 0, "active": 0, "failed": 0}
        try:
            with self.engine.connect() as conn:
                counts = dict(conn.execute(COUNTS).one()._mapping)
            checks["database"] = {"status": "connected"}
        except Exception:
            checks["database"] = {"status": "disconnected"}
        try:
            self.redis.ping()
            checks["redis"] = {"status": "connected"}
        except redis.RedisError:
            checks["redis"] = {"status": "disconnected"}
        healthy = all(check["status"] == "connected" for check in checks.values())
        checks["queue"] = {"status": "operational" if healthy else "degraded", "counts": counts}
        checked_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        return HealthAnswer(checks, healthy, checked_at)
