"""kopf glue, and nothing else: each handler is one line into the typed modules.

Only event handlers are used: they feed the controller's cache and wake it. kopf keeps no state
on our objects (no progress annotations); the controller decides from observed state alone.
Worker pods are not watched through kopf, whose label filter runs on the client (every pod in the
served namespaces would be listed, watched and decoded): see pod_watch.py."""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from posegen_operator.builders import GROUP, PLURAL, VERSION
from posegen_operator.observe import needs_attention
from posegen_operator.runtime import Runtime

KOPF_FINALIZER = "posegen.io/kopf"


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    runtime = Runtime.build(memo["settings"])
    memo["runtime"] = runtime
    await runtime.start()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def generation_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    # async: a cache update is quick, and kopf would hand a sync handler to a thread for every
    # event (a restart lists thousands).
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    body = cast(dict[str, Any], event["object"])
    cache = runtime.controller.cache
    if event["type"] == "DELETED":
        cache.remove("generations", body)
        runtime.controller.notify()  # one that never ran has no finalizer: its row is cancelled now
        return
    cache.upsert("generations", body)
    # Only if it has something to do: a re-list brings thousands of finished ones.
    if needs_attention(body, cache.has_pods(body["metadata"]["uid"])):
        runtime.controller.notify()


@kopf.on.probe(id="controller")
def controller_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The liveness probe: fails when the controller loop is wedged, so Kubernetes restarts us."""
    controller = memo["runtime"].controller
    if not controller.alive():
        raise kopf.PermanentError("the controller loop has not come round for several sweeps")
    return {"leader": controller.elector.is_leader, "lastPassOk": controller.last_pass_ok}


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per watch event
    # kopf strips its own finalizer from objects with no deletion handlers: it must not be ours.
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.peering.standalone = True  # one active replica is chosen by our Lease, not kopf peering
    settings.posting.level = 30  # only warnings become Kubernetes Events
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Per-object workers hold their object's queued bodies until they exit; our handler is a quick
    # cache update, so idle workers go at once (docs/BENCHMARKS.md §4 has the measurements). No
    # limit on them: kopf queues the objects over a limit with their full bodies (no backpressure
    # on the watch), so a limit of 50 held ~8,000 bodies at once when a restart listed 10,000.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = 0.1
    settings.watching.chunk_size = 500  # kopf's start-up list in pages, not thousands decoded at once
