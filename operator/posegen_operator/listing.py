"""The re-list: seeds the watch-fed cache at start-up and heals it now and then, one list per kind."""

from __future__ import annotations

from typing import Any

from posegen_operator.builders import GROUP, PLURAL, VERSION, WORKER_SELECTOR
from posegen_operator.cache import Body, ObjectCache, slim
from posegen_operator.kube import KubeClient, resource_path

PAGE_SIZE = 500


def relist(api: KubeClient, namespaces: tuple[str, ...], cache: ObjectCache) -> None:
    """List generations and worker pods (in every served namespace, or cluster-wide) and merge the
    lists into the cache. Pages are slimmed as they arrive, so thousands of objects are never held
    decoded at once (the process keeps its memory high-water mark)."""
    listed: dict[str, list[Body]] = {"generations": [], "pods": []}
    versions: list[int] = []  # each list's resourceVersion: the cache keeps what the watch saw later

    def page(kind: str, namespace: str | None, token: str | None) -> dict[str, Any]:
        query: dict[str, str | int | None] = {"limit": PAGE_SIZE, "continue": token}
        if kind == "pods":
            path = resource_path("v1", "pods", namespace)
            query["labelSelector"] = WORKER_SELECTOR
        else:
            path = resource_path(f"{GROUP}/{VERSION}", PLURAL, namespace)
        return api.request("GET", path, query=query, timeout=(5, 30))

    for namespace in namespaces or (None,):
        for kind, bodies in listed.items():
            listing = page(kind, namespace, None)
            versions.append(int(listing["metadata"]["resourceVersion"]))  # later pages share its snapshot
            while True:
                bodies += [slim(kind, body) for body in listing["items"]]
                token = listing["metadata"].get("continue")
                if not token:
                    break
                listing = page(kind, namespace, token)
    for kind, bodies in listed.items():
        cache.replace(kind, bodies, listed_at=min(versions))
