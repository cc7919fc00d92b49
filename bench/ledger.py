"""Was every pose recorded exactly once? The audit shared by the fault benchmarks and the soak.

One query per audit: each generation of the given namespaces with its row (status, counters,
recoveries) and what ``generated_pose`` holds for it (rows, distinct indexes, lowest and highest
index), plus the seed's own duplicate query over the whole table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import SEED_DUPLICATE_QUERY, BenchStack


@dataclass(frozen=True)
class GenerationLedger:
    generation_id: str
    namespace: str
    name: str
    status: str
    total: int
    completed: int
    recoveries: int
    last_recovery_reason: str | None
    rows: int
    distinct: int
    low: int
    high: int

    @property
    def lost(self) -> int:
        """Poses promised but not recorded: all of them once completed, else as many as counted."""
        expected = self.total if self.status == "completed" else self.completed
        return max(0, expected - self.distinct)

    @property
    def duplicated(self) -> int:
        return self.rows - self.distinct

    @property
    def exactly_once(self) -> bool:
        """Completed with poses 0..total-1 each recorded once and counted once."""
        return (
            self.status == "completed"
            and self.completed == self.total == self.rows == self.distinct
            and self.low == 0
            and self.high == self.total - 1
        )


@dataclass(frozen=True)
class Ledger:
    generations: list[GenerationLedger]
    seed_duplicates: int

    @property
    def lost(self) -> int:
        return sum(g.lost for g in self.generations)

    @property
    def duplicated(self) -> int:
        return sum(g.duplicated for g in self.generations)

    @property
    def pose_rows(self) -> int:
        return sum(g.rows for g in self.generations)

    @property
    def inexact(self) -> int:
        """Completed generations whose poses are not exactly 0..total-1 once each."""
        return sum(1 for g in self.generations if g.status == "completed" and not g.exactly_once)

    def recoveries(self) -> dict[str, int]:
        """How many generations ended with each '<count>x <last reason>'."""
        found: dict[str, int] = {}
        for g in self.generations:
            key = f"{g.recoveries}x {g.last_recovery_reason}"
            found[key] = found.get(key, 0) + 1
        return found


def audit(bench: BenchStack, namespaces: Sequence[str]) -> Ledger:
    rows = bench.sql(
        "SELECT g.id, g.namespace, g.name, g.status, g.total_expected_poses, g.poses_completed, g.recoveries, "
        "g.last_recovery_reason, count(p.id), count(DISTINCT p.pose_index), coalesce(min(p.pose_index), -1), "
        "coalesce(max(p.pose_index), -1) "
        "FROM pose_generation g LEFT JOIN generated_pose p ON p.generation_id = g.id "
        "WHERE g.namespace = ANY(%s) GROUP BY g.id",
        list(namespaces),
    )
    return Ledger([GenerationLedger(*row) for row in rows], len(bench.sql(SEED_DUPLICATE_QUERY)))
