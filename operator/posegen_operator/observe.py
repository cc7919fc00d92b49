"""Observe: everything a pass decides on, in a few batched reads.

PoseGenerations and worker pods come from an in-memory cache fed by the kopf watch streams (and
seeded by one list at start-up), so a pass makes no API calls; rows come from a cache of their own
that each pass brings up to date with the rows written since the last (one indexed query), and
heartbeats from one Redis MGET. Finished generations cost nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
from sqlalchemy import Connection, Engine

from posegen_common import checkpoint, keys
from posegen_common.checkpoint import GenerationSpec
from posegen_operator.builders import FINALIZER, GROUP, LABEL_ATTEMPT, RECOVER_ANNOTATION
from posegen_operator.planning import FINAL_PHASES, GenerationView, HeartbeatView, Observed, PodView, Policy
from posegen_operator.settings import Settings

log = logging.getLogger("posegen.operator")
Body = dict[str, Any]


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _resource_version(body: Body) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "ownerReferences",
    "labels",
)


def slim(kind: str, body: Body) -> Body:
    """What the operator reads of an object: identity and lifecycle metadata, labels, our own
    annotations, status, and a generation's spec. The rest (managedFields, a last-applied
    configuration, a pod's spec) is most of an object's size, and with thousands of objects cached,
    most of the operator's memory. Strings are interned: the objects repeat each other's keys and
    most values, and each watch event brings its own copies."""
    metadata = body["metadata"]
    kept: Body = {key: metadata[key] for key in _KEPT_METADATA if key in metadata}
    own = {key: value for key, value in (metadata.get("annotations") or {}).items() if key.startswith(f"{GROUP}/")}
    if own:
        kept["annotations"] = own
    read: Body = {"metadata": kept}
    for part in ("spec", "status") if kind == "generations" else ("status",):
        if part in body:
            read[part] = body[part]
    return cast(Body, _interned(read))


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {sys.intern(key): _interned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interned(item) for item in value]
    return value


class ObjectCache:
    """PoseGenerations and worker pods by uid; watch events may arrive late or twice, so only a
    newer resourceVersion replaces what is cached. A re-list is merged, not swapped in: what the
    watch delivered while the list was in flight (a creation, a deletion) is newer than the list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Body]] = {"generations": {}, "pods": {}}
        self._deleted: dict[str, dict[str, int]] = {"generations": {}, "pods": {}}  # uid -> version deleted at
        self._pods_by_owner: dict[str, set[str]] = {}  # owner uid -> pod uids

    def upsert(self, kind: str, body: Body) -> None:
        uid = body["metadata"]["uid"]
        with self._lock:
            if self._deleted[kind].get(uid, -1) >= _resource_version(body):
                return  # a late event for something already deleted
            current = self._objects[kind].get(uid)
            if current is None or _resource_version(body) > _resource_version(current):
                self._objects[kind][uid] = slim(kind, body)
                if kind == "pods":
                    for owner in _owners(body):
                        self._pods_by_owner.setdefault(owner, set()).add(uid)

    def remove(self, kind: str, body: Body) -> None:
        uid = body["metadata"]["uid"]
        with self._lock:
            self._deleted[kind][uid] = _resource_version(body)
            gone = self._objects[kind].pop(uid, None)
            if kind == "pods" and gone is not None:
                for owner in _owners(gone):
                    self._pods_by_owner.get(owner, set()).discard(uid)
                    if not self._pods_by_owner.get(owner):
                        self._pods_by_owner.pop(owner, None)

    def replace(self, kind: str, bodies: Iterable[Body], listed_at: int) -> None:
        """Merge a list taken at resourceVersion ``listed_at``: the list wins over older cached
        versions and drops what it no longer holds, unless the watch has seen it since."""
        with self._lock:
            cached, deleted = self._objects[kind], self._deleted[kind]
            merged: dict[str, Body] = {}
            for body in bodies:
                uid = body["metadata"]["uid"]
                if deleted.get(uid, 0) > listed_at:
                    continue  # deleted after the list was taken
                current = cached.get(uid)
                newer = current is not None and _resource_version(current) > _resource_version(body)
                merged[uid] = current if current is not None and newer else slim(kind, body)
            for uid, current in cached.items():
                if uid not in merged and _resource_version(current) > listed_at:
                    merged[uid] = current  # created after the list was taken
            self._objects[kind] = merged
            self._deleted[kind] = {uid: at for uid, at in deleted.items() if at > listed_at}
            if kind == "pods":
                self._pods_by_owner = {}
                for uid, pod in merged.items():
                    for owner in _owners(pod):
                        self._pods_by_owner.setdefault(owner, set()).add(uid)

    def generations(self) -> list[Body]:
        with self._lock:
            return list(self._objects["generations"].values())

    def has_pods(self, owner_uid: str) -> bool:
        with self._lock:
            return owner_uid in self._pods_by_owner

    def pods_of(self, owner_uid: str) -> list[Body]:
        with self._lock:
            pods = self._objects["pods"]
            return [pods[uid] for uid in self._pods_by_owner.get(owner_uid, ()) if uid in pods]


def _owners(pod: Body) -> list[str]:
    return [owner["uid"] for owner in pod["metadata"].get("ownerReferences") or []]


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
    observed: Observed
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
        observed = Observed(
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
        return Observation(observed, counts, finalizers)

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
