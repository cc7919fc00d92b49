"""The background Event sink: a pass hands Events over and goes on; they are posted in order."""

from __future__ import annotations

import logging
import threading

import pytest

from posegen_operator.act.events import EventSink
from posegen_operator.actions import PostEvent
from posegen_operator.metrics import Metrics


def event(name: str, reason: str = "Queued") -> PostEvent:
    return PostEvent(("ns", name), f"uid-{name}", "Normal", reason, "waiting for a worker slot")


class Poster:
    """Records what it posts; blocks while ``gate`` is closed, fails for names in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.gate = threading.Event()
        self.posted: list[str] = []
        self.failing = failing

    def __call__(self, action: PostEvent) -> bool:
        self.gate.wait(10)
        if action.key[1] in self.failing:
            raise ConnectionResetError("connection reset by peer")
        self.posted.append(action.key[1])
        return True


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_submitting_never_waits_for_the_api_and_events_are_posted_in_order() -> None:
    poster = Poster()
    sink = EventSink(poster, Metrics())
    try:
        for name in ("a", "b", "c"):
            assert sink.submit(event(name))  # returns while the poster is blocked
        assert poster.posted == []
        assert not sink.flush(timeout=0.2)

        poster.gate.set()

        assert sink.flush(timeout=10)
        assert poster.posted == ["a", "b", "c"]
    finally:
        poster.gate.set()
        sink.close()


def test_a_full_queue_drops_events_counts_them_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    poster, metrics = Poster(), Metrics()
    sink = EventSink(poster, metrics, limit=2)
    try:
        sink.submit(event("posting"))  # taken by the sink's thread, which blocks on the gate
        assert not sink.flush(timeout=0.2)
        with caplog.at_level(logging.WARNING, logger="posegen.operator"):
            accepted = [sink.submit(event(name)) for name in ("q1", "q2", "d1", "d2")]

        assert accepted == [True, True, False, False]
        assert counter(metrics, "posegen_events_dropped_total") == 2
        assert sum("Event queue is full" in r.getMessage() for r in caplog.records) == 1

        poster.gate.set()
        assert sink.flush(timeout=10)
        assert poster.posted == ["posting", "q1", "q2"]
        assert sink.submit(event("after"))  # drained: accepted again
    finally:
        poster.gate.set()
        sink.close()


def test_an_event_that_fails_is_counted_and_the_next_is_still_posted() -> None:
    poster, metrics = Poster(failing=frozenset({"bad"})), Metrics()
    poster.gate.set()
    sink = EventSink(poster, metrics)
    try:
        sink.submit(event("bad"))
        sink.submit(event("good"))

        assert sink.flush(timeout=10)
        assert poster.posted == ["good"]
        assert counter(metrics, "posegen_action_errors_total", action="PostEvent") == 1
    finally:
        sink.close()


def test_closing_posts_what_is_queued_then_stops() -> None:
    poster = Poster()
    poster.gate.set()
    sink = EventSink(poster, Metrics())
    for name in ("a", "b"):
        sink.submit(event(name))

    sink.close()

    assert poster.posted == ["a", "b"]
    assert not any(t.name == "posegen-events" and t.is_alive() for t in threading.enumerate())
