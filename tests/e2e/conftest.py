"""Fixtures of the end-to-end tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Cluster


@pytest.fixture
def slow_poses(cluster: Cluster) -> Iterator[None]:
    """Poses at a pace where a kill lands mid-generation."""
    cluster.stack.stop_operator()
    cluster.stack.start_operator(POSEGEN_POSE_SECONDS="0.15")
    yield
    cluster.stack.stop_operator()
    cluster.stack.start_operator()
