"""Worker credentials: minted for each attempt's pod, restored in Redis when Redis lost them,
revoked when the generation is over. Without a credential key (POSEGEN_WORKER_CREDENTIAL_KEY)
workers get the pod template's credentials and these actions do nothing."""

from __future__ import annotations

import redis
from sqlalchemy import Connection, Engine

from posegen_common import worker_credentials
from posegen_common.worker_credentials import WorkerCredentials
from posegen_operator.actions import RestoreWorkerAccess, RevokeCredentials
from posegen_operator.settings import Settings


class CredentialActions:
    def __init__(self, settings: Settings, engine: Engine, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis_client
        self.key = settings.worker_credential_key.encode() if settings.worker_credential_key else None

    def mint(self, conn: Connection, generation_id: str, attempt: int) -> WorkerCredentials | None:
        """The attempt's own credentials (committed with ``conn``'s transaction); earlier attempts'
        stop working."""
        if self.key is None:
            return None
        return worker_credentials.mint(
            conn,
            self.redis,
            self.settings.database_url,
            self.settings.redis_url,
            generation_id,
            attempt,
            key=self.key,
        )

    def restore(self, action: RestoreWorkerAccess) -> bool:
        if self.key is None:
            return False
        worker_credentials.restore_redis(self.redis, action.generation_id, action.attempt, key=self.key)
        return True

    def revoke(self, action: RevokeCredentials) -> bool:
        if self.key is None:
            return False
        with self.engine.begin() as conn:
            worker_credentials.revoke(conn, self.redis, action.generation_id)
        return True
