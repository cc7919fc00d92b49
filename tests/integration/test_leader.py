"""Leader election against the real API server: expiry judged by this replica's own observation
(another machine's clock may be skewed), stepping down the moment another holder appears, and a
release that never clears somebody else's lease."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from posegen_operator.leader import LeaderElector
from tests.harness import Cluster

pytestmark = pytest.mark.integration


def elector(cluster: Cluster, namespace: str, identity: str, lease_seconds: float = 15) -> LeaderElector:
    return LeaderElector(
        cluster.operator_api, name="posegen-test", namespace=namespace, identity=identity, lease_seconds=lease_seconds
    )


def hold(cluster: Cluster, namespace: str, holder: str, renewed: dt.datetime, duration: int = 15) -> None:
    """Write the lease as another replica would (created, or taken over)."""
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    spec = {"holderIdentity": holder, "leaseDurationSeconds": duration, "acquireTime": stamp, "renewTime": stamp}
    coordination = cluster.coordination
    try:
        lease = coordination.read_namespaced_lease("posegen-test", namespace)
    except Exception:
        coordination.create_namespaced_lease(namespace, {"metadata": {"name": "posegen-test"}, "spec": spec})
        return
    lease.spec.holder_identity, lease.spec.renew_time = holder, renewed
    lease.spec.lease_duration_seconds = duration
    coordination.replace_namespaced_lease("posegen-test", namespace, lease)


def test_a_lease_renewed_by_a_skewed_clock_is_not_taken_over(cluster: Cluster, namespace: str) -> None:
    # The holder's clock is an hour behind: by comparing clocks its lease looks long expired.
    hold(cluster, namespace, "other", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    me = elector(cluster, namespace, "me")

    assert me.try_acquire_or_renew() is False
    hold(cluster, namespace, "other", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, seconds=-2))  # a renewal
    assert me.try_acquire_or_renew() is False
    assert not me.is_leader


def test_a_lease_nobody_renews_is_taken_after_its_duration_as_observed_here(cluster: Cluster, namespace: str) -> None:
    # The holder's clock is an hour ahead: by comparing clocks its lease would never expire.
    hold(cluster, namespace, "other", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), duration=2)
    me = elector(cluster, namespace, "me")

    assert me.try_acquire_or_renew() is False
    time.sleep(2.5)
    assert me.try_acquire_or_renew() is True
    assert me.is_leader
    assert cluster.coordination.read_namespaced_lease("posegen-test", namespace).spec.holder_identity == "me"


def test_the_leader_steps_down_the_moment_another_holder_is_seen(cluster: Cluster, namespace: str) -> None:
    me = elector(cluster, namespace, "me")
    assert me.try_acquire_or_renew() is True

    hold(cluster, namespace, "other", dt.datetime.now(dt.UTC))

    assert me.try_acquire_or_renew() is False
    assert not me.is_leader


def test_release_leaves_a_lease_someone_else_took_alone(cluster: Cluster, namespace: str) -> None:
    me = elector(cluster, namespace, "me")
    assert me.try_acquire_or_renew() is True
    hold(cluster, namespace, "other", dt.datetime.now(dt.UTC))  # taken while we still believe we lead

    me.release()

    assert cluster.coordination.read_namespaced_lease("posegen-test", namespace).spec.holder_identity == "other"


def test_release_hands_over_a_lease_we_hold(cluster: Cluster, namespace: str) -> None:
    me = elector(cluster, namespace, "me")
    assert me.try_acquire_or_renew() is True

    me.release()

    assert cluster.coordination.read_namespaced_lease("posegen-test", namespace).spec.holder_identity is None
    other = elector(cluster, namespace, "other")
    assert other.try_acquire_or_renew() is True
