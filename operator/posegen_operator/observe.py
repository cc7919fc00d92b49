"""Observe: everything a pass decides on, in a few batched reads.

PoseGenerations and worker pods come from an in-memory cache fed by the kopf watch streams (and
seeded by one list at start-up), so a pass makes no API calls; rows come from a cache of their own
that each pass brings up to date with the rows written since the last (one indexed query), and
heartbeats from one Redis MGET. Finished generations cost nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from posegen_common import checkpoint, keys
from posegen_common.checkpoint import GenerationSpec
from posegen_operator.builders import FINALIZER, LABEL_ATTEMPT, RECOVER_ANNOTATION
from posegen_operator.cache import Body, ObjectCache
from posegen_operator.model import FINAL_PHASES, GenerationView, HeartbeatView, PodView, Policy, Snapshot
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def generation_spec(body: Body) -> GenerationSpec:
    meta, spec = body["metadata"], body.get("spec", {})
    seed = spec.get("seed")
    return GenerationSpec(
        id=meta["uid"],
        namespace=meta["namespace"],
        name=meta["name"],
        project_id=spec["projectId"],
        generation_type=spec["generationType"],
        text_prompt=spec.get("textPrompt"),
        pose_library_ids=spec.get("poseLibraryIds"),
        # Without a seed the uid gives one: stable for this resource, different across resources.
        seed=int(seed) if seed is not None else int(meta["uid"].replace("-", "")[:8], 16),
        total_expected_poses=int(spec.get("variationCount", 50)),
    )


def policy_of(body: Body, settings: Settings) -> Policy:
    overrides = body.get("spec", {}).get("recovery") or {}
    return Policy(
        stall_timeout=float(overrides.get("stallTimeoutSeconds", settings.stall_timeout)),
        deadline=float(overrides.get("deadlineSeconds", settings.deadline)),
        max_recoveries=int(overrides.get("maxRecoveries", settings.max_recoveries)),
    )


def pod_view(body: Body) -> PodView:
    meta, status = body["metadata"], body.get("status") or {}
    container: dict[str, Any] = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    running = state.get("running") or {}
    return PodView(
        name=meta["name"],
        attempt=int(meta.get("labels", {}).get(LABEL_ATTEMPT, 0)),
        phase=status.get("phase", "Pending"),
        deleting=meta.get("deletionTimestamp") is not None,
        exit_code=terminated.get("exitCode"),
        reason=status.get("reason"),
        running_since=parse_time(running.get("startedAt")) or parse_time(status.get("startTime")),
        finished_at=parse_time(terminated.get("finishedAt")),
    )


def needs_attention(body: Body, has_pods: bool) -> bool:
    """Finished generations, and suspended ones whose worker is gone, are left alone unless
    deleted, changed, or asked for a recovery check: an idle operator reads nothing for them."""
    meta, status = body["metadata"], body.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("observedGeneration") != meta.get("generation"):
        return True
    request = (meta.get("annotations") or {}).get(RECOVER_ANNOTATION)
    if request is not None and request != status.get("lastRecoveryRequest"):
        return True
    phase = status.get("phase")
    at_rest = phase == "Suspended" and not has_pods and not status.get("workerPod")
    quiet_suspended = at_rest and (body.get("spec") or {}).get("suspend")
    return phase not in FINAL_PHASES and not quiet_suspended


@dataclass(frozen=True)
class Observation:
    snapshot: Snapshot
    counts: dict[str, int]  # resources by phase, over every cached resource (the generations gauge)
    finalizers: dict[tuple[str, str], tuple[str, list[str]]]  # (resourceVersion, finalizers) of those in play


class RowCache:
    """The rows of the generations in play, kept between passes: a pass reads only the rows written
    since the previous one, and those it has not seen yet. ``None`` marks a row known not to exist
    (yet): its insertion is a write like any other."""

    def __init__(self) -> None:
        self._rows: dict[str, checkpoint.GenerationState | None] = {}
        self._since: int | None = None

    def read(
        self, conn: Connection, ids: list[str], mark: checkpoint.ReadMark, *, refresh: bool
    ) -> dict[str, checkpoint.GenerationState]:
        wanted = set(ids)
        known: dict[str, checkpoint.GenerationState | None] = {}
        if self._since is not None and not refresh:
            known = {i: row for i, row in self._rows.items() if i in wanted}
            known.update((i, row) for i, row in checkpoint.fetch_changed(conn, self._since).items() if i in wanted)
        unseen = [i for i in ids if i not in known]
        fetched = checkpoint.fetch_states(conn, unseen)
        known.update((i, fetched.get(i)) for i in unseen)
        self._rows, self._since = known, mark.xmin
        return {i: row for i, row in known.items() if row is not None}


class Observer:
    def __init__(self, settings: Settings, engine: Engine, redis_client: redis.Redis, cache: ObjectCache) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis_client
        self.cache = cache
        self.rows = RowCache()

    def observe(self, *, first_pass: bool, refresh: bool) -> Observation:
        """The pass's observation; only generations with something to do are looked at closely.
        ``refresh`` (with each re-list) reads every row in play afresh and looks for orphans: rows
        still unfinished whose resource is gone."""
        bodies = self.cache.generations()
        counts: dict[str, int] = {}
        for body in bodies:
            phase = (body.get("status") or {}).get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        active = [body for body in bodies if needs_attention(body, self.cache.has_pods(body["metadata"]["uid"]))]
        pods_by_owner = {
            body["metadata"]["uid"]: [pod_view(pod) for pod in self.cache.pods_of(body["metadata"]["uid"])]
            for body in active
        }
        ids = [body["metadata"]["uid"] for body in active]
        with self.engine.connect() as conn:
            mark = checkpoint.read_mark(conn)
            rows = self.rows.read(conn, ids, mark, refresh=refresh)
            orphans: frozenset[str] = frozenset()
            if refresh:
                known = {body["metadata"]["uid"] for body in bodies}
                orphans = frozenset(checkpoint.fetch_unfinished_ids(conn) - known)
        processing = [(i, rows[i].attempt) for i in ids if i in rows and rows[i].status == "processing"]
        heartbeats, trustworthy = self._heartbeats(processing)
        now = dt.datetime.now(dt.UTC)
        views = tuple(self._view(body, rows.get(body["metadata"]["uid"]), pods_by_owner, heartbeats) for body in active)
        snapshot = Snapshot(
            views,
            now=now,
            db_now=mark.now,
            heartbeats_trustworthy=trustworthy,
            first_pass=first_pass,
            orphan_row_ids=orphans,
        )
        finalizers = {
            (b["metadata"]["namespace"], b["metadata"]["name"]): (
                b["metadata"]["resourceVersion"],
                list(b["metadata"].get("finalizers") or []),
            )
            for b in active
        }
        return Observation(snapshot, counts, finalizers)

    def _view(
        self,
        body: Body,
        row: checkpoint.GenerationState | None,
        pods: dict[str, list[PodView]],
        heartbeats: dict[str, HeartbeatView],
    ) -> GenerationView:
        meta, spec = body["metadata"], body.get("spec", {})
        uid = meta["uid"]
        return GenerationView(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=uid,
            created_at=parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
            spec_generation=int(meta.get("generation", 1)),
            priority=int(spec.get("priority", 0)),
            suspend=bool(spec.get("suspend", False)),
            deleting=meta.get("deletionTimestamp") is not None,
            has_finalizer=FINALIZER in (meta.get("finalizers") or []),
            policy=policy_of(body, self.settings),
            spec=generation_spec(body),
            status=dict(body.get("status") or {}),
            recover_request=(meta.get("annotations") or {}).get(RECOVER_ANNOTATION),
            row=row,
            pods=tuple(sorted(pods.get(uid, []), key=lambda p: p.attempt)),
            heartbeat=heartbeats.get(uid),
        )

    def _heartbeats(self, attempts: list[tuple[str, int]]) -> tuple[dict[str, HeartbeatView], bool]:
        """One MGET. Heartbeats are trusted only if Redis has been up longer than one TTL: right
        after a Redis restart every key is missing, and that must not look like a mass hang."""
        if not attempts:
            return {}, True
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.info("server")
            pipe.mget([keys.heartbeat(i, attempt) for i, attempt in attempts])
            info, values = pipe.execute()
        except redis.RedisError as error:
            log.warning("redis unavailable, hang detection paused: %s", error)
            return {}, False
        trustworthy = int(info.get("uptime_in_seconds", 0)) >= self.settings.heartbeat_ttl
        beats: dict[str, HeartbeatView] = {}
        for (generation_id, _attempt), raw in zip(attempts, values, strict=True):
            if raw is None:
                continue
            try:
                value = json.loads(raw)
                beats[generation_id] = HeartbeatView(int(value["attempt"]), int(value.get("poses", 0)))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed heartbeat for %s", generation_id)
        return beats, trustworthy
