"""Observe: everything a pass decides on, in a few batched reads.

PoseGenerations and worker pods come from an in-memory cache fed by the kopf watch streams (and
seeded by one list at start-up), so a pass makes no API calls; rows come from a cache of their own
that each pass brings up to date with the rows written since the last (one indexed query), and
heartbeats from one Redis MGET. Finished generations cost nothing."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from posegen_common import checkpoint
from posegen_common.contract import GenerationSpec
from posegen_operator.builders import FINALIZER, LABEL_ATTEMPT, RECOVER_ANNOTATION
from posegen_operator.cache import Body, ObjectCache
from posegen_operator.heartbeats import HeartbeatMonitor, HeartbeatReading
from posegen_operator.model import FINAL_PHASES, GenerationView, InvalidGeneration, PodView, Policy, Snapshot
from posegen_operator.poison import PoisonLog
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
    """The recovery policy: the resource's overrides of the defaults, within the admin's limits."""
    overrides = body.get("spec", {}).get("recovery") or {}
    limits = settings.limits
    return Policy(
        stall_timeout=min(float(overrides.get("stallTimeoutSeconds", settings.stall_timeout)), limits.stall_timeout),
        deadline=min(float(overrides.get("deadlineSeconds", settings.deadline)), limits.deadline),
        max_recoveries=min(int(overrides.get("maxRecoveries", settings.max_recoveries)), limits.max_recoveries),
    )


def pod_view(body: Body) -> PodView:
    meta, status = body["metadata"], body.get("status") or {}
    container: dict[str, Any] = next(iter(status.get("containerStatuses") or []), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or {}
    running = state.get("running") or {}
    waiting = state.get("waiting") or {}
    scheduled: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    if not waiting and scheduled.get("status") == "False":
        waiting = scheduled  # Unschedulable, with the scheduler's message
    return PodView(
        name=meta["name"],
        attempt=attempt_of(meta.get("labels") or {}),
        phase=status.get("phase", "Pending"),
        deleting=meta.get("deletionTimestamp") is not None,
        exit_code=terminated.get("exitCode"),
        reason=status.get("reason"),
        running_since=parse_time(running.get("startedAt")) or parse_time(status.get("startTime")),
        finished_at=parse_time(terminated.get("finishedAt")),
        created_at=parse_time(meta.get("creationTimestamp")),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        terminated_reason=terminated.get("reason"),
        terminated_message=terminated.get("message"),
    )


def attempt_of(labels: dict[str, str]) -> int | None:
    """The attempt a worker pod runs, from its label; None unless it is a positive integer."""
    value = labels.get(LABEL_ATTEMPT)
    if not isinstance(value, str) or not value.isdigit() or not value.isascii():
        return None
    attempt = int(value)
    return attempt if attempt > 0 else None


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
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        heartbeats: HeartbeatMonitor,
        cache: ObjectCache,
        poison: PoisonLog,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.heartbeats = heartbeats
        self.cache = cache
        self.poison = poison
        self.rows = RowCache()

    def observe(self, *, first_pass: bool, refresh: bool) -> Observation:
        """The pass's observation; only generations with something to do are looked at closely.
        ``refresh`` (with each re-list) reads every row in play afresh and looks for orphans among
        them: rows still unfinished whose resource is gone."""
        bodies = self.cache.generations()
        counts: dict[str, int] = {}
        for body in bodies:
            phase = (body.get("status") or {}).get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        active = [body for body in bodies if needs_attention(body, self.cache.has_pods(body["metadata"]["uid"]))]
        ids = [body["metadata"]["uid"] for body in active]
        with self.engine.connect() as conn:
            mark = checkpoint.read_mark(conn)
            rows = self.rows.read(conn, ids, mark, refresh=refresh)
            # A generation deleted without our finalizer (one that never had a worker) leaves its
            # row behind: looked up at once among the deletions the watch saw, and with every
            # re-list among all rows in play.
            orphans = frozenset(checkpoint.fetch_unfinished_among(conn, self.cache.deleted("generations")))
            if refresh:
                known = {body["metadata"]["uid"] for body in bodies}
                orphans |= checkpoint.fetch_unfinished_ids(conn, self.settings.namespaces) - known
                self.poison.forget(known | {pod["metadata"]["uid"] for pod in self.cache.pods()})
        processing = [(i, rows[i].attempt) for i in ids if i in rows and rows[i].status == "processing"]
        heartbeats = self.heartbeats.read(processing)
        views: list[GenerationView] = []
        invalid: list[InvalidGeneration] = []
        for body in active:
            meta = body["metadata"]
            try:
                views.append(self._view(body, rows.get(meta["uid"]), heartbeats))
            except Exception as error:  # one object the operator cannot read must not stop the others
                what = f"PoseGeneration {meta.get('namespace')}/{meta.get('name')}"
                self.poison.report("generations", meta["uid"], what, error)
                invalid.append(
                    InvalidGeneration(
                        (meta["namespace"], meta["name"]),
                        meta["uid"],
                        int(meta.get("generation") or 0),
                        dict(body.get("status") or {}),
                        f"the operator cannot read this object: {type(error).__name__}: {error}",
                    )
                )
        snapshot = Snapshot(
            tuple(views),
            now=dt.datetime.now(dt.UTC),
            db_now=mark.now,
            heartbeats_trustworthy=heartbeats.trustworthy,
            redis_reachable=heartbeats.reachable,
            redis_data_lost=heartbeats.data_lost,
            first_pass=first_pass,
            orphan_row_ids=orphans,
            invalid=tuple(invalid),
        )
        finalizers = {
            (b["metadata"]["namespace"], b["metadata"]["name"]): (
                b["metadata"]["resourceVersion"],
                list(b["metadata"].get("finalizers") or []),
            )
            for b in active
        }
        return Observation(snapshot, counts, finalizers)

    def _view(self, body: Body, row: checkpoint.GenerationState | None, heartbeats: HeartbeatReading) -> GenerationView:
        meta, spec = body["metadata"], body.get("spec", {})
        uid = meta["uid"]
        return GenerationView(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=uid,
            created_at=parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
            spec_generation=int(meta.get("generation", 1)),
            priority=min(int(spec.get("priority", 0)), self.settings.limits.priority),
            suspend=bool(spec.get("suspend", False)),
            deleting=meta.get("deletionTimestamp") is not None,
            has_finalizer=FINALIZER in (meta.get("finalizers") or []),
            policy=policy_of(body, self.settings),
            spec=generation_spec(body),
            status=dict(body.get("status") or {}),
            recover_request=(meta.get("annotations") or {}).get(RECOVER_ANNOTATION),
            row=row,
            pods=self._pods_of(meta["namespace"], uid),
            heartbeat=heartbeats.beats.get(uid),
            heartbeat_silent_for=heartbeats.silent_for.get(uid),
        )

    def _pods_of(self, namespace: str, owner_uid: str) -> tuple[PodView, ...]:
        """The generation's worker pods; a pod that cannot be read is skipped, one whose attempt
        label is malformed is kept (attempt None: the rules delete it) and both are reported."""
        pods: list[PodView] = []
        for body in self.cache.pods_of(owner_uid):
            meta = body["metadata"]
            if meta.get("namespace") != namespace:
                continue  # an owner reference across namespaces is dangling, not ours
            what = f"pod {namespace}/{meta.get('name')}"
            try:
                pod = pod_view(body)
            except Exception as error:  # one object the operator cannot read must not stop the others
                self.poison.report("pods", meta["uid"], what, error)
                continue
            if pod.attempt is None:
                label = (meta.get("labels") or {}).get(LABEL_ATTEMPT)
                malformed = ValueError(f"invalid {LABEL_ATTEMPT} label {label!r}")
                self.poison.report("pods", meta["uid"], what, malformed)
            pods.append(pod)
        return tuple(sorted(pods, key=lambda p: (p.attempt is None, p.attempt or 0)))
