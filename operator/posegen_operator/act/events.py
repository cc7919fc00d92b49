"""Events are posted in the background, as client-go's recorder does: a pass never waits on them.

In a burst of new generations a third of the API writes are Events; waiting on them held up the
next resource's status (its phase). Events are advisory, so the queue is bounded: when it is full
an Event is dropped and counted rather than allowed to hold up a pass or grow memory."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from posegen_operator.act.errors import describe
from posegen_operator.actions import PostEvent
from posegen_operator.metrics import Metrics

log = logging.getLogger("posegen.operator")
QUEUE_LIMIT = 2048


class EventSink:
    def __init__(self, post: Callable[[PostEvent], bool], metrics: Metrics, limit: int = QUEUE_LIMIT) -> None:
        self._post = post
        self._metrics = metrics
        self._limit = limit
        self._queue: collections.deque[PostEvent] = collections.deque()
        self._changed = threading.Condition()
        self._posting = False
        self._closed = False
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name="posegen-events", daemon=True)
        self._thread.start()

    def submit(self, event: PostEvent) -> bool:
        """Queue ``event``; False when the queue is full and it is dropped (logged once per run of drops)."""
        with self._changed:
            if len(self._queue) >= self._limit:
                self._metrics.events_dropped.inc()
                if not self._dropping:
                    log.warning("the Event queue is full (%d): Events are dropped until it drains", self._limit)
                self._dropping = True
                return False
            self._dropping = False
            self._queue.append(event)
            self._changed.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until every queued Event has been posted (or given up on); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and not self._posting, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Post what is queued, for up to ``timeout``, then stop."""
        self.flush(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=0.5)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                event = self._queue.popleft()
                self._posting = True
            try:
                self._post(event)
            except Exception as error:
                self._metrics.action_errors.labels(action="PostEvent").inc()
                log.warning("Event %s for %s/%s not posted: %s", event.reason, *event.key, describe(error))
            finally:
                with self._changed:
                    self._posting = False
                    self._changed.notify_all()
