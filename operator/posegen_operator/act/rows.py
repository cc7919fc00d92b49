"""The operator's writes to the checkpoint rows: registering a generation and moving its status."""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from posegen_common import checkpoint
from posegen_operator.actions import RegisterRow, SetRowStatus

log = logging.getLogger("posegen.operator")


class RowActions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, action: RegisterRow) -> bool:
        with self.engine.begin() as conn:
            checkpoint.register(conn, action.spec)
        return True

    def set_status(self, action: SetRowStatus) -> bool:
        with self.engine.begin() as conn:
            changed = checkpoint.set_status(conn, action.generation_id, action.status, error_message=action.message)
        if changed and action.key == ("", ""):
            log.info("generation %s marked %s: %s", action.generation_id, action.status, action.message)
        return changed
