"""Redis key names, in one place. Redis holds only what may be lost: heartbeats (with a TTL), the
waiting-queue view and recovery run stats. Losing them never loses or duplicates a pose: Postgres
is the checkpoint, and the operator rebuilds the queue view from the resources."""

from __future__ import annotations

PREFIX = "posegen"
QUEUE = f"{PREFIX}:queue"
LAST_RECOVERY_RUN = f"{PREFIX}:recovery:last_run"
RECOVERY_TOTALS = f"{PREFIX}:recovery:totals"
# Written by the operator; its absence tells that Redis lost its data (restart without
# persistence, failover to an empty replica, FLUSHALL), so missing heartbeats prove nothing.
SENTINEL = f"{PREFIX}:sentinel"
HEARTBEAT_PREFIX = f"{PREFIX}:heartbeat:"


def heartbeat(generation_id: str, attempt: int) -> str:
    """One key per attempt: a superseded worker that wakes up can neither mask its successor's
    death nor make its successor look hung."""
    return f"{HEARTBEAT_PREFIX}{generation_id}:{attempt}"


def heartbeat_owner(key: str) -> tuple[str, int] | None:
    """(generation id, attempt) of a heartbeat key; None for any other key."""
    if not key.startswith(HEARTBEAT_PREFIX):
        return None
    generation_id, _, attempt = key[len(HEARTBEAT_PREFIX) :].rpartition(":")
    return (generation_id, int(attempt)) if generation_id and attempt.isdigit() else None
