"""What the operator writes is in its cache as soon as the API server has answered: a pass after
it decides from the object as it now is, not from the version before it, however far behind the
watch is (in a burst it was: a phase Event posted twice for one transition)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posegen_operator.act.finalizers import FinalizerActions
from posegen_operator.act.status import StatusActions
from posegen_operator.actions import AddFinalizer, PatchStatus, RemoveFinalizer
from posegen_operator.builders import FINALIZER
from posegen_operator.cache import ObjectCache
from posegen_operator.kube import KubeClient, load_config
from tests.harness import Cluster, create_generation, get_generation, wait_for_phase

pytestmark = pytest.mark.integration


def test_a_status_or_finalizer_the_operator_wrote_is_cached_without_the_watch(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    api = KubeClient(load_config({"KUBECONFIG": str(cluster.stack.kubeconfig)}, tmp_path), connections=1)
    cache = ObjectCache()  # no watch feeds it here: only what the actions put in
    create_generation(cluster, namespace, "written", variationCount=5, suspend=True)
    wait_for_phase(cluster, namespace, "written", "Suspended")  # the running operator is done with it
    created = get_generation(cluster, namespace, "written")
    cache.upsert("generations", created)
    key = (namespace, "written")

    assert StatusActions(api, "test", cache).patch(PatchStatus(key, {"message": "written by this pass"}))
    (cached,) = cache.generations()
    assert cached["status"]["message"] == "written by this pass"
    assert int(cached["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    finalizers = FinalizerActions(api, cache)
    finalizers.observed = {key: (cached["metadata"]["resourceVersion"], [])}
    assert finalizers.add(AddFinalizer(key))
    (cached,) = cache.generations()
    assert cached["metadata"]["finalizers"] == [FINALIZER]
    finalizers.observed = {key: (cached["metadata"]["resourceVersion"], cached["metadata"]["finalizers"])}
    assert finalizers.remove(RemoveFinalizer(key))
    (cached,) = cache.generations()
    assert not cached["metadata"].get("finalizers")
    api.close()
