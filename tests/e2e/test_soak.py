"""A short randomized fault soak (bench.soak, `make soak`) as a test: the ledger must balance.

It runs on a stack of its own (the soak restarts the API server, Postgres and Redis, which would
disturb other tests sharing the session's stack). About 2.5 minutes of faults, every kind at least
once (the nemesis draws kinds from a shuffled deck), then up to 3 minutes to drain."""

from __future__ import annotations

import pytest
from bench import soak

pytestmark = pytest.mark.e2e

# Fixed seed; a fault every ~6 s, so the deck's ten kinds all come up within the 2.5 minutes.
SOAK_ARGS = "--minutes 2.5 --seed 14 --fault-interval 6 --drain-seconds 180 --results soak_e2e"


def test_a_short_fault_soak_loses_nothing_and_recovers_only_from_injected_faults() -> None:
    figures = soak.main(SOAK_ARGS.split())
    injected = {kind for kind, found in figures["faults_by_kind"].items() if found["injected"]}
    assert injected == set(soak.FAULT_KINDS), "every fault kind was injected at least once"
    assert figures["unfinished"] == 0, figures["outcomes"]
    assert figures["lost"] == 0
    assert figures["duplicated"] == figures["seed_duplicates"] == figures["inexact"] == 0
    assert figures["false_recoveries"] == 0, figures["false_recoveries_by_kind"]
