"""The heartbeat monitor against the real Redis: only the current attempt's key counts, silence
counts only as long as the operator watched it (or Redis reported the key expired), and Redis
losing its data starts every clock afresh."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from posegen_common import keys
from posegen_operator.heartbeats import HeartbeatMonitor
from tests.harness import Cluster

pytestmark = pytest.mark.integration
TTL = 2.0


@pytest.fixture
def client(cluster: Cluster) -> redis.Redis:
    return redis.Redis.from_url(cluster.stack.redis_url)


def beat(client: redis.Redis, generation_id: str, attempt: int) -> None:
    client.set(keys.heartbeat(generation_id, attempt), '{"poses": 3}', px=int(TTL * 1000))


def test_a_zombies_heartbeat_does_not_keep_its_successor_alive(client: redis.Redis) -> None:
    generation = uuid.uuid4().hex
    monitor = HeartbeatMonitor(client, TTL, "test")
    monitor.read([(generation, 2)])  # the sentinel is written by the first read
    beat(client, generation, 1)  # the replaced attempt wakes up and beats

    reading = monitor.read([(generation, 2)])

    assert generation not in reading.beats
    assert generation in reading.silent_for


def test_silence_counts_from_when_the_operator_saw_it(client: redis.Redis) -> None:
    generation = uuid.uuid4().hex
    monitor = HeartbeatMonitor(client, TTL, "test")
    monitor.read([(generation, 1)])

    first = monitor.read([(generation, 1)]).silent_for[generation]
    time.sleep(0.3)
    later = monitor.read([(generation, 1)]).silent_for[generation]

    assert first < TTL and later > first  # missing from the start, yet not taken for a hang


def test_an_expiry_reported_by_redis_counts_a_whole_ttl(client: redis.Redis) -> None:
    generation = uuid.uuid4().hex
    monitor = HeartbeatMonitor(client, TTL, "test")
    monitor.read([(generation, 1)])

    monitor.expired(generation, 1)

    assert monitor.read([(generation, 1)]).silent_for[generation] >= TTL


def test_redis_losing_its_data_makes_missing_heartbeats_prove_nothing(client: redis.Redis) -> None:
    generation = uuid.uuid4().hex
    monitor = HeartbeatMonitor(client, TTL, "test")
    monitor.read([(generation, 1)])
    monitor.expired(generation, 1)

    client.flushall()
    reading = monitor.read([(generation, 1)])

    assert not reading.trustworthy
    assert client.exists(keys.SENTINEL)  # written again: the next read is trusted, clocks afresh
    fresh = monitor.read([(generation, 1)])
    assert fresh.trustworthy and fresh.silent_for[generation] < TTL


def test_a_beating_worker_is_seen(client: redis.Redis) -> None:
    generation = uuid.uuid4().hex
    monitor = HeartbeatMonitor(client, TTL, "test")
    beat(client, generation, 3)

    reading = monitor.read([(generation, 3)])

    assert reading.beats[generation].attempt == 3 and reading.beats[generation].poses == 3
