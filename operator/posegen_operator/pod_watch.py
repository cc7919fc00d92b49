"""The worker-pod informer: the API server sends us our worker pods and nothing else.

kopf's ``labels=`` filter is applied on the client: it lists and watches every pod in the served
namespaces and decodes each event before dropping it, which in a busy cluster is most of the
operator's work. Here the list and the watch carry ``labelSelector`` (client-go's informer, in one
thread per watched scope: the whole cluster, or each served namespace): list, then watch from the
list's resourceVersion (with bookmarks, so a reconnect resumes where it was), re-list on 410 Gone,
reconnect with capped backoff while the API server is away. Every event goes into the cache and
wakes the controller, exactly as kopf's handler did."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3

from posegen_operator.builders import WORKER_SELECTOR
from posegen_operator.cache import Body, ObjectCache, slim
from posegen_operator.kube import ApiError, KubeClient, lines, release, resource_path

log = logging.getLogger("posegen.operator")
PAGE_SIZE = 500
WATCH_SECONDS = 300  # the server ends each watch after this; we resume from the last version seen
CONNECT_SECONDS = 10
BACKOFF_SECONDS = (0.5, 10.0)  # first delay after a failure, doubling up to the cap


class Gone(Exception):
    """The version we would resume from is no longer in the API server's history (410): re-list."""


@dataclass
class Scope:
    """One list-and-watch: the whole cluster (``namespace`` None) or one namespace."""

    namespace: str | None
    version: str | None = None  # where the watch resumes; None: list first
    failures: int = 0  # in a row

    def __str__(self) -> str:
        return f" in {self.namespace}" if self.namespace else ""


class PodWatch:
    """One list-and-watch thread per scope; ``start`` and ``stop`` from the runtime."""

    def __init__(
        self,
        api: KubeClient,
        namespaces: tuple[str, ...],
        cache: ObjectCache,
        on_change: Callable[[], None],
        *,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.api = api
        self.cache = cache
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self._stopping = threading.Event()
        self._responses: set[urllib3.BaseHTTPResponse] = set()
        self._lock = threading.Lock()
        self.lists = 0  # how many (re-)lists ran: one per scope at start, then one per 410
        self.failures = 0  # failed requests (the API server away), all scopes together
        self.scopes = [Scope(namespace) for namespace in namespaces or (None,)]
        self.threads = [
            threading.Thread(target=self._run, args=(scope,), name=f"pod-watch{scope}", daemon=True)
            for scope in self.scopes
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Ends every open request (a watch may otherwise block for minutes) and joins."""
        self._stopping.set()
        self.interrupt()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout)

    def interrupt(self) -> None:
        """Cuts the open lists and watches, as a dropped connection would: each thread resumes."""
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()  # urllib3 >= 2.3: wakes a read blocked in another thread

    # ---- one scope -----------------------------------------------------------------------------
    def _run(self, scope: Scope) -> None:
        while not self._stopping.is_set():
            try:
                if scope.version is None:
                    self._list(scope)
                self._watch(scope)
            except Gone:
                log.info("pod watch%s: history expired (410), re-listing", scope)
                scope.version = None
            except Exception as error:  # the API server away, a reset, a bad reply: never fatal
                if self._stopping.is_set():
                    break
                scope.failures += 1
                self.failures += 1
                first, cap = BACKOFF_SECONDS
                delay = min(cap, first * 2 ** (scope.failures - 1))
                log.log(
                    logging.WARNING if scope.failures == 1 else logging.DEBUG,
                    "pod watch%s failed (%d in a row; retry in %.1fs): %s",
                    scope,
                    scope.failures,
                    delay,
                    error,
                )
                self._stopping.wait(delay)  # then resume from the last version seen

    def _list(self, scope: Scope) -> None:
        """Every worker pod in scope, in pages, merged into the cache; the watch resumes from the
        list's resourceVersion."""
        bodies: list[Body] = []
        token: str | None = None
        listed_at: str | None = None
        while True:
            try:
                page = self._page(scope.namespace, token)
            except ApiError as error:
                if error.status == 410:  # the continue token expired mid-list: start over
                    bodies, token, listed_at = [], None, None
                    continue
                raise
            listed_at = listed_at or page["metadata"]["resourceVersion"]  # later pages share its snapshot
            bodies += [slim("pods", body) for body in page["items"]]
            token = page["metadata"].get("continue")
            if not token:
                break
        assert listed_at is not None
        self.cache.replace("pods", bodies, listed_at=int(listed_at), namespace=scope.namespace)
        self.lists += 1
        scope.version = listed_at
        self.on_change()

    def _watch(self, scope: Scope) -> None:
        """Events from the last version seen until the server ends the watch (after
        ``watch_seconds``)."""
        try:
            response = self._open(
                scope.namespace,
                {
                    "watch": True,
                    "resourceVersion": scope.version,
                    "allowWatchBookmarks": True,
                    "timeoutSeconds": self.watch_seconds,
                },
                read_timeout=self.watch_seconds + 30,
            )
        except ApiError as error:
            if error.status == 410:
                raise Gone() from error
            raise
        if scope.failures:
            log.info("pod watch%s is back after %d failed attempts", scope, scope.failures)
            scope.failures = 0
        try:
            for event in _events(response):
                kind, body = event["type"], event["object"]
                if kind == "ERROR":
                    if body.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error {body.get('code')}: {body.get('message')}")
                scope.version = body["metadata"]["resourceVersion"]
                if kind == "DELETED":
                    self.cache.remove("pods", body)
                elif kind in ("ADDED", "MODIFIED"):
                    self.cache.upsert("pods", body)
                else:
                    continue  # BOOKMARK: only the version to resume from
                self.on_change()
        finally:
            self._release(response)

    def _open(
        self, namespace: str | None, query: dict[str, str | int | bool | None], read_timeout: float = 30
    ) -> urllib3.BaseHTTPResponse:
        """A list or watch request on worker pods only, kept open for ``interrupt``."""
        response = self.api.open(
            resource_path("v1", "pods", namespace),
            query={**query, "labelSelector": WORKER_SELECTOR},
            timeout=(CONNECT_SECONDS, read_timeout),
        )
        with self._lock:
            self._responses.add(response)
        if self._stopping.is_set():  # stop() ran while this request was being made
            self._release(response)
            raise RuntimeError("stopping")
        return response

    def _page(self, namespace: str | None, token: str | None) -> dict[str, Any]:
        response = self._open(namespace, {"limit": PAGE_SIZE, "continue": token})
        try:
            page: dict[str, Any] = json.loads(response.data)
        finally:
            self._release(response)
        return page

    def _release(self, response: urllib3.BaseHTTPResponse) -> None:
        with self._lock:
            self._responses.discard(response)
        release(response)


def _events(response: urllib3.BaseHTTPResponse) -> Iterator[dict[str, Any]]:
    for line in lines(response):
        if line:
            event: dict[str, Any] = json.loads(line)
            yield event
