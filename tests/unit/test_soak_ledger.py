"""The soak's judgement of recoveries (bench.soak): which fault explains which recovery, and which
recoveries no fault explains. Pure functions over plain records, no stack."""

from __future__ import annotations

from bench.soak import WINDOW, Fault, Recovery, Row, attribute, merge_recoveries

T0 = 1_000_000.0
KEY = "soak0/s00001"
OTHER = "soak1/s00002"


def fault(kind: str, start: float, end: float | None = None, target: str = "fleet") -> Fault:
    return Fault(kind, T0 + start, T0 + (start if end is None else end), target)


def recovery(reason: str, at: float, key: str = KEY, attempt: int = 2) -> Recovery:
    return Recovery(key, attempt, reason, T0 + at, "row", budgeted=True)


def row(recoveries: int, transient: int = 0) -> Row:
    return Row("id", "completed", recoveries + transient + 1, None, recoveries, transient, None, None, None)


def causes(recoveries: list[Recovery], faults: list[Fault]) -> list[str | None]:
    attribute(recoveries, faults)
    return [faults[r.cause].kind if r.cause is not None else None for r in recoveries]


def test_a_kill_explains_one_recovery_of_its_own_generation_only() -> None:
    faults = [fault("worker_kill", 10, target=KEY)]
    found = [recovery("Crashed", 11), recovery("Hung", 15, attempt=3), recovery("Crashed", 11, key=OTHER)]
    assert causes(found, faults) == ["worker_kill", None, None]


def test_each_targeted_fault_explains_its_own_recovery() -> None:
    faults = [fault("worker_kill", 10, target=KEY), fault("pod_delete", 30, target=KEY)]
    found = [recovery("Crashed", 11), recovery("Evicted", 31, attempt=3)]
    assert causes(found, faults) == ["worker_kill", "pod_delete"]


def test_a_hung_recovery_after_redis_data_loss_is_false_even_right_after_an_operator_kill() -> None:
    faults = [fault("operator_kill", 5, 8), fault("redis_flushall", 10)]
    found = [recovery("Hung", 10.2)]
    assert causes(found, faults) == [None]
    assert found[0].suspect == "operator_kill+redis_flushall"


def test_an_operator_kill_explains_one_orphaned_attempt_per_generation() -> None:
    faults = [fault("operator_kill", 5, 8)]
    found = [
        recovery("OrphanedAfterRestart", 9),
        recovery("OrphanedAfterRestart", 9.5, attempt=3),
        recovery("OrphanedAfterRestart", 9, key=OTHER),
    ]
    assert causes(found, faults) == ["operator_kill", None, "operator_kill"]


def test_a_postgres_outage_explains_any_number_of_recoveries_within_the_window() -> None:
    faults = [fault("postgres_restart", 5, 9)]
    found = [recovery("Crashed", 7), recovery("Stalled", 20, attempt=3), recovery("Crashed", 9 + WINDOW + 1)]
    assert causes(found, faults) == ["postgres_restart", "postgres_restart", None]


def test_quota_and_api_server_restarts_explain_nothing() -> None:
    faults = [fault("pod_quota", 0, 20, target="soak0"), fault("apiserver_restart", 5, 20)]
    found = [recovery("Evicted", 10)]
    assert causes(found, faults) == [None]
    assert found[0].suspect == "apiserver_restart+pod_quota"


def test_a_recovery_before_its_fault_is_not_explained_by_it() -> None:
    found = [recovery("Crashed", 8)]
    assert causes(found, [fault("worker_kill", 10, target=KEY)]) == [None]


def test_events_fill_in_the_attempts_no_poll_saw_and_counters_the_rest() -> None:
    polled = [recovery("Hung", 30, attempt=4)]
    events = [
        Recovery(KEY, 2, "Crashed", T0 + 10, "event"),
        Recovery(KEY, 4, "Hung", T0 + 30, "event"),  # the poll's, with its exact time, is kept
    ]
    merged = merge_recoveries(polled, events, {KEY: row(3, transient=1)})
    assert [(r.attempt, r.reason, r.source) for r in merged] == [
        (2, "Crashed", "event"),
        (4, "Hung", "row"),
        (None, "?", "counter"),
        (None, "?", "counter"),
    ]
    attribute(merged, [fault("worker_kill", 9, target=KEY)])
    assert [r.cause is not None for r in merged] == [True, False, False, False]
