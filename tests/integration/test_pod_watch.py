"""The worker-pod informer against the real API server: only worker pods ever reach the operator
(the selection happens on the server), and the watch comes back after a dropped connection, a 410
and an API server that is away for a while."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from posegen_devstack.processes import wait_for
from posegen_operator.builders import WORKER_SELECTOR
from posegen_operator.cache import Body, ObjectCache
from posegen_operator.kube import KubeClient
from posegen_operator.pod_watch import PodWatch
from tests.harness import Cluster, pod_manifest

pytestmark = pytest.mark.integration

WORKER = dict(pair.split("=") for pair in WORKER_SELECTOR.split(","))


class RecordingCache(ObjectCache):
    """The real cache, noting the name of every pod delivered to it."""

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[str] = []

    def upsert(self, kind: str, body: Body) -> None:
        self.delivered.append(body["metadata"]["name"])
        super().upsert(kind, body)

    def remove(self, kind: str, body: Body) -> None:
        self.delivered.append(body["metadata"]["name"])
        super().remove(kind, body)

    def replace(self, kind: str, bodies: Any, listed_at: int, namespace: str | None = None) -> None:
        bodies = list(bodies)
        self.delivered += [body["metadata"]["name"] for body in bodies]
        super().replace(kind, bodies, listed_at, namespace)

    def names(self) -> set[str]:
        return {pod["metadata"]["name"] for pod in self.pods()}


def create_pod(cluster: Cluster, namespace: str, name: str, labels: dict[str, str]) -> None:
    manifest = pod_manifest(name, ["sleep", "600"])
    manifest["metadata"]["labels"] = labels
    manifest["spec"]["nodeName"] = "nowhere"  # never run: only its events matter
    cluster.core.create_namespaced_pod(namespace, manifest)


def delete_pod(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def relabel(cluster: Cluster, namespace: str, name: str, labels: dict[str, str | None]) -> None:
    cluster.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}})


@pytest.fixture
def informer(cluster: Cluster, namespace: str) -> Iterator[tuple[PodWatch, RecordingCache]]:
    cache = RecordingCache()
    watch = PodWatch(cluster.operator_api, (namespace,), cache, lambda: None)
    watch.start()
    yield watch, cache
    watch.stop()


def test_only_worker_pods_are_delivered(cluster: Cluster, namespace: str) -> None:
    create_pod(cluster, namespace, "other-before", {"app": "web"})
    create_pod(cluster, namespace, "worker-before", WORKER)
    cache = RecordingCache()
    notified = threading.Event()
    watch = PodWatch(cluster.operator_api, (namespace,), cache, notified.set)
    watch.start()
    try:
        wait_for(lambda: "worker-before" in cache.names(), timeout=20, what="the listed worker pod")
        assert notified.is_set()
        # Churn of pods that are not ours, some close to ours: created, relabelled twice, deleted.
        others = {
            "other-plain": {"app": "web"},
            "other-managed-by-us-only": {"app.kubernetes.io/managed-by": WORKER["app.kubernetes.io/managed-by"]},
            "other-someone-elses-worker": {**WORKER, "app.kubernetes.io/managed-by": "someone-else"},
        }
        for name, labels in others.items():
            create_pod(cluster, namespace, name, labels)
            relabel(cluster, namespace, name, {"round": "1"})
            relabel(cluster, namespace, name, {"round": "2"})
        create_pod(cluster, namespace, "worker-live", WORKER)
        relabel(cluster, namespace, "worker-live", {"round": "1"})
        wait_for(lambda: "worker-live" in cache.names(), timeout=20, what="the new worker pod")
        # A worker pod that stops matching the selector leaves the cache (the server sends DELETED).
        relabel(cluster, namespace, "worker-before", {"app.kubernetes.io/component": None})
        for name in others:
            delete_pod(cluster, namespace, name)
        delete_pod(cluster, namespace, "worker-live")
        wait_for(lambda: not cache.names(), timeout=20, what="both worker pods to leave the cache")
        # A last worker pod: every event before it has been delivered by the time it arrives.
        create_pod(cluster, namespace, "worker-last", WORKER)
        wait_for(lambda: "worker-last" in cache.names(), timeout=20, what="the last worker pod")
    finally:
        watch.stop()

    assert set(cache.delivered) == {"worker-before", "worker-live", "worker-last"}
    assert cache.delivered.count("worker-live") >= 3  # added, relabelled, deleted
    assert watch.lists == 1, "no re-list was needed"


def test_the_watch_resumes_after_a_dropped_connection_without_a_relist(
    cluster: Cluster, namespace: str, informer: tuple[PodWatch, RecordingCache]
) -> None:
    watch, cache = informer
    wait_for(lambda: watch.lists == 1, timeout=20, what="the first list")
    for round_ in range(3):
        watch.interrupt()
        create_pod(cluster, namespace, f"worker-{round_}", WORKER)
        wait_for(lambda r=round_: f"worker-{r}" in cache.names(), timeout=20, what=f"worker-{round_}")  # type: ignore[misc]
    assert watch.lists == 1, "resumed from the last version seen, not re-listed"


class Outage:
    """A TCP relay in front of the real API server that can be taken down and brought back: to the
    informer, the API server goes away (connections reset, then refused) and comes back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._server: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        with self._lock:
            connections, self._connections = [self._server, *self._connections], []
        for sock in connections:  # shutdown wakes the threads blocked on them; close alone would not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # taken down
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            end.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def history_expired(cluster: Cluster, namespace: str, version: str) -> bool:
    """Whether a watch from ``version`` gets 410 Gone: the API server's watch cache keeps the last
    75 s of events at least, and forgets older ones as new events come."""
    response = cluster.core.list_namespaced_pod(
        namespace, watch=True, resource_version=version, timeout_seconds=1, _preload_content=False
    )
    try:
        first = response.readline()
    finally:
        response.release_conn()
    return b'"code":410' in first


def test_the_watch_rides_out_an_api_server_outage_and_relists_when_history_expired(
    cluster: Cluster, namespace: str
) -> None:
    config = cluster.operator_api.config
    host, port = config.server.removeprefix("https://").rsplit(":", 1)
    outage = Outage((host, int(port)))
    relayed = KubeClient(dataclasses.replace(config, server=f"https://127.0.0.1:{outage.port}"), connections=2)
    cache = RecordingCache()
    watch = PodWatch(relayed, (namespace,), cache, lambda: None)
    watch.start()
    try:
        create_pod(cluster, namespace, "worker-before", WORKER)
        wait_for(lambda: "worker-before" in cache.names(), timeout=20, what="the first worker pod")
        outage.down()
        # While the API server is unreachable for the informer: a pod comes, another goes, and
        # other pods churn until the version the informer would resume from is history.
        create_pod(cluster, namespace, "worker-during", WORKER)
        delete_pod(cluster, namespace, "worker-before")
        create_pod(cluster, namespace, "other", {"app": "web"})
        (scope,) = watch.scopes
        assert scope.version is not None
        churn = iter(range(1_000_000))

        def expired() -> bool:
            for _ in range(50):
                relabel(cluster, namespace, "other", {"churn": str(next(churn))})
            return history_expired(cluster, namespace, str(scope.version))

        wait_for(expired, timeout=240, interval=1, what="the API server to forget the informer's version")
        assert watch.failures >= 3 and all(thread.is_alive() for thread in watch.threads)
        assert watch.lists == 1
        outage.up()
        wait_for(lambda: cache.names() == {"worker-during"}, timeout=60, what="the cache to catch up")
        assert watch.lists == 2, "the expired version was answered by a re-list"
    finally:
        watch.stop()
        outage.down()
    assert not any(thread.is_alive() for thread in watch.threads), "stopped cleanly"
    assert "other" not in cache.delivered
