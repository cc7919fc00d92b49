"""The re-list: seeds the watch-fed cache at start-up and heals it now and then, one list per kind."""

from __future__ import annotations

import json
from typing import Any

import kubernetes

from posegen_operator.builders import GROUP, PLURAL, VERSION, WORKER_SELECTOR
from posegen_operator.cache import Body, ObjectCache, slim

PAGE_SIZE = 500


def relist(api: kubernetes.client.ApiClient, namespaces: tuple[str, ...], cache: ObjectCache) -> None:
    """List generations and worker pods (in every served namespace, or cluster-wide) and merge the
    lists into the cache. Pages are slimmed as they arrive, so thousands of objects are never held
    decoded at once (the process keeps its memory high-water mark)."""
    custom = kubernetes.client.CustomObjectsApi(api)
    core = kubernetes.client.CoreV1Api(api)
    listed: dict[str, list[Body]] = {"generations": [], "pods": []}
    versions: list[int] = []  # each list's resourceVersion: the cache keeps what the watch saw later

    def page(kind: str, namespace: str | None, token: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "limit": PAGE_SIZE,
            "_continue": token,
            "_preload_content": False,
            "_request_timeout": (5, 30),
        }
        if kind == "pods":
            options["label_selector"] = WORKER_SELECTOR
            if namespace is None:
                response = core.list_pod_for_all_namespaces(**options)
            else:
                response = core.list_namespaced_pod(namespace, **options)
        elif namespace is None:
            response = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)
        else:
            response = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **options)
        result: dict[str, Any] = json.loads(response.data)
        return result

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
