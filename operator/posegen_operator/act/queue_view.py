"""The Redis view of the waiting queue: derived from the plan, rewritten only when it differs.
It is only a view (the seed's queue counts): losing it loses nothing, the next pass rebuilds it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from posegen_common import keys

log = logging.getLogger("posegen.operator")


class QueueView:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._written: list[str] | None = None

    def sync(self, queued: list[str]) -> None:
        if queued == self._written:
            return

        def write() -> None:
            pipe = self.redis.pipeline()
            pipe.delete(keys.QUEUE)
            if queued:
                pipe.zadd(keys.QUEUE, {generation_id: rank for rank, generation_id in enumerate(queued)})
            pipe.execute()
            self._written = list(queued)

        self.quietly(write)

    def started(self, generation_id: str) -> None:
        self.quietly(lambda: self.redis.zrem(keys.QUEUE, generation_id))

    @staticmethod
    def quietly(operation: Callable[[], Any]) -> None:
        try:
            operation()
        except redis.RedisError as error:
            log.warning("redis write skipped (%s); it is only a view and is rebuilt later", error)
