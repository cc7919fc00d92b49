"""Redis key names, in one place. Redis holds only what may be lost: heartbeats (with a TTL), the
waiting-queue view and recovery run stats. Losing them never loses or duplicates a pose: Postgres
is the checkpoint, and the operator rebuilds the queue view from the resources."""

from __future__ import annotations

PREFIX = "posegen"
QUEUE = f"{PREFIX}:queue"
LAST_RECOVERY_RUN = f"{PREFIX}:recovery:last_run"
RECOVERY_TOTALS = f"{PREFIX}:recovery:totals"


def heartbeat(generation_id: str) -> str:
    return f"{PREFIX}:heartbeat:{generation_id}"
