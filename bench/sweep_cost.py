"""Sweep cost: the operator's database reads against 10k, 100k and 1M pose_generation rows.

A scratch database is created in the benchmark stack's Postgres and migrated with the project's
migrations; rows are inserted in bulk with generate_series: 1 % processing, 0.1 % queued, the rest
completed (VACUUM ANALYZE after each step). Then the very functions the operator calls are timed
(p50/p90 over repeats, on an open connection, warm cache).

Every pass (events, and the sweep every POSEGEN_SWEEP_INTERVAL_SECONDS):
  read_mark                  the database clock and snapshot xmin, taken before the reads
  fetch_changed (none / 100 / 1,000 written)  rows written since the previous pass, with none,
                             100 or 1,000 of the rows in play written in between
  fetch_states (100 new ids) rows of generations the operator has not seen yet
  status_summary             the seed's counts (the metrics: queued, processing, stalled, oldest)
  pass total                 a connection checkout, read_mark, the operator's RowCache.read with
                             every row in play cached and none written, status_summary

Every re-list (start-up, then every 5 minutes), not per pass:
  fetch_states (all in play) every row in play read afresh (1.1 % of the table)
  fetch_unfinished_ids       rows still unfinished whose resource may be gone

Each query's SQL, exactly as SQLAlchemy sent it, is run under EXPLAIN (ANALYZE, BUFFERS).
Target: the per-pass reads under 10 ms at 1M rows.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, event, text

from bench.common import BenchStack, Report, command_line, parser, percentile, print_table
from posegen_common import checkpoint
from posegen_common.database import create_db_engine, migrate
from posegen_operator.observe import RowCache

NAME = "sweep_cost"
SCRATCH_DB = "posegen_sweep_bench"
SIZES = (10_000, 100_000, 1_000_000)
STALL_TIMEOUT = 600.0

INSERT = """
INSERT INTO pose_generation (
    id, namespace, name, project_id, generation_type, text_prompt, seed, status, poses_completed,
    total_expected_poses, attempt, recoveries, started_at, last_pose_at, completed_at, created_at, updated_at)
SELECT
    md5('generation-' || i)::uuid::text,
    'bench-' || (mod(i, 50)),
    'gen-' || i,
    'project-' || (mod(i, 1000)),
    'TEXT_DESCRIPTION',
    'a person running in the park',
    i,
    CASE WHEN mod(i, 100) = 0 THEN 'processing' WHEN mod(i, 1000) = 1 THEN 'queued' ELSE 'completed' END,
    CASE WHEN mod(i, 100) = 0 THEN mod(i, 50) WHEN mod(i, 1000) = 1 THEN 0 ELSE 50 END,
    50,
    CASE WHEN mod(i, 1000) = 1 THEN 0 ELSE 1 END,
    0,
    CASE WHEN mod(i, 1000) = 1 THEN NULL ELSE now() - make_interval(secs => mod(i, 7200)) END,
    CASE WHEN mod(i, 1000) = 1 THEN NULL ELSE now() - make_interval(secs => mod(i, 900)) END,
    CASE WHEN mod(i, 100) = 0 OR mod(i, 1000) = 1 THEN NULL ELSE now() - make_interval(secs => mod(i, 3600)) END,
    now() - make_interval(secs => i),
    now()
FROM generate_series(%s, %s) AS i
"""


class Captured:
    """The last statement SQLAlchemy handed to psycopg2, with its parameters."""

    def __init__(self) -> None:
        self.statement = ""
        self.parameters: Any = None

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        self.statement, self.parameters = statement, parameters


def timed(call: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> list[float]:
    """Milliseconds per call (after three warm-up calls); ``setup`` runs untimed before each."""
    samples = []
    for i in range(repeats + 3):
        if setup is not None:
            setup()
        started = time.perf_counter()
        call()
        if i >= 3:
            samples.append(1000 * (time.perf_counter() - started))
    return samples


def explain(conn: Connection, captured: Captured, call: Callable[[], Any]) -> list[str]:
    call()
    statement, parameters = captured.statement, captured.parameters
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        lines = [row[0] for row in cursor.fetchall()]
    finally:
        cursor.close()
    return [line if len(line) <= 150 else line[:140] + " ...)" for line in lines]


class Writes:
    """Between two of the operator's reads, some rows in play are written (as workers recording
    poses would): the setup of a fetch_changed sample."""

    def __init__(self, engine: Any, ids: list[str]) -> None:
        self.engine, self.ids, self.since = engine, ids, 0

    def __call__(self) -> None:
        with self.engine.connect() as conn:
            self.since = checkpoint.read_mark(conn).xmin
        if self.ids:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE pose_generation SET last_pose_at = now() WHERE id = ANY(%s)", (self.ids,))


PER_RELIST = ("fetch_states (all in play)", "fetch_unfinished_ids")


def measure(engine: Any, captured: Captured, rows: int, repeats: int) -> list[dict[str, Any]]:
    results = []
    with engine.connect() as conn:
        in_play = [
            r[0] for r in conn.execute(text("SELECT id FROM pose_generation WHERE status IN ('processing', 'queued')"))
        ]
        nothing, hundred, thousand = Writes(engine, []), Writes(engine, in_play[:100]), Writes(engine, in_play[:1000])
        queries: dict[str, tuple[Callable[[], Any], Writes | None]] = {
            "read_mark": (lambda: checkpoint.read_mark(conn), None),
            "fetch_changed (none written)": (lambda: checkpoint.fetch_changed(conn, nothing.since), nothing),
            "fetch_changed (100 written)": (lambda: checkpoint.fetch_changed(conn, hundred.since), hundred),
            "fetch_changed (1,000 written)": (lambda: checkpoint.fetch_changed(conn, thousand.since), thousand),
            "fetch_states (100 new ids)": (lambda: checkpoint.fetch_states(conn, in_play[-100:]), None),
            "status_summary": (lambda: checkpoint.status_summary(conn, STALL_TIMEOUT), None),
            "fetch_states (all in play)": (lambda: checkpoint.fetch_states(conn, in_play), None),
            "fetch_unfinished_ids": (lambda: checkpoint.fetch_unfinished_ids(conn), None),
        }
        for label, (call, setup) in queries.items():
            samples = timed(call, repeats, setup)
            conn.rollback()
            plan = explain(conn, captured, call) if label != "read_mark" else []
            execution = next((float(line.split()[2]) for line in plan if line.startswith("Execution Time")), None)
            results.append(
                {
                    "rows": rows,
                    "query": label,
                    "ids": len(in_play),
                    "per": "re-list" if label in PER_RELIST else "pass",
                    "p50_ms": statistics.median(samples),
                    "p90_ms": percentile(samples, 90),
                    "server_execution_ms": execution,
                    "explain": plan,
                }
            )
            conn.rollback()

    cache = RowCache()
    with engine.connect() as conn:
        cache.read(conn, in_play, checkpoint.read_mark(conn), refresh=True)

    def one_pass() -> None:
        with engine.connect() as conn:
            cache.read(conn, in_play, checkpoint.read_mark(conn), refresh=False)
            checkpoint.status_summary(conn, STALL_TIMEOUT)

    samples = timed(one_pass, repeats)
    results.append(
        {
            "rows": rows,
            "query": "pass total (checkout, mark, RowCache.read, summary)",
            "ids": len(in_play),
            "per": "pass",
            "p50_ms": statistics.median(samples),
            "p90_ms": percentile(samples, 90),
            "server_execution_ms": None,
            "explain": [],
        }
    )
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__)
    p.add_argument("--sizes", type=int, nargs="+", help="row counts (default 10000 100000 1000000)")
    p.add_argument("--repeats", type=int, help="timed repeats per query (quick 20, full 200)")
    args = p.parse_args(argv)
    sizes = sorted(args.sizes or SIZES)
    repeats = args.repeats or (20 if args.mode == "quick" else 200)
    report = Report(NAME, args.mode, command_line(NAME, argv))
    report.settings = {"sizes": sizes, "repeats": repeats, "processing": "1 %", "queued": "0.1 %"}
    results: list[dict[str, Any]] = []
    inserts: dict[int, float] = {}
    with BenchStack(NAME, {}, keep=args.keep) as bench:
        bench.stack.stop_operator()  # nothing else queries this Postgres while we time it
        _create_database(bench)
        url = bench.stack.database_url.rsplit("/", 1)[0] + "/" + SCRATCH_DB
        migrate(url)
        engine = create_db_engine(url, application_name="posegen-bench-sweep", pool_size=2, statement_timeout_ms=600000)
        captured = Captured()
        event.listen(engine, "before_cursor_execute", captured)
        try:
            present = 0
            for size in sizes:
                started = time.monotonic()
                with engine.begin() as conn:
                    conn.exec_driver_sql(INSERT, (present + 1, size))
                with engine.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                        "VACUUM (ANALYZE) pose_generation"
                    )
                inserts[size] = time.monotonic() - started
                print(f"\n{size:,} rows ({size - present:,} inserted + VACUUM ANALYZE in {inserts[size]:.1f} s)")
                present = size
                measured = measure(engine, captured, size, repeats)
                print_table(
                    ["query", "per", "p50 ms", "p90 ms", "server ms (EXPLAIN)"],
                    [
                        (m["query"], m["per"], m["p50_ms"], m["p90_ms"], m["server_execution_ms"] or float("nan"))
                        for m in measured
                    ],
                )
                for m in measured:
                    if m["explain"]:
                        print(f"  EXPLAIN (ANALYZE, BUFFERS) {m['query']}:")
                        for line in m["explain"]:
                            print(f"    {line}")
                results += measured
        finally:
            engine.dispose()
    largest = max(sizes)
    report.figures = {"insert_seconds": inserts, "queries": results}
    at_largest = {m["query"]: m for m in results if m["rows"] == largest}
    print()
    p50 = {(m["query"], m["rows"]): m["p50_ms"] for m in results}
    print_table(
        ["query (p50 ms)", *(f"{size:,} rows" for size in sizes)],
        [(query, *(p50.get((query, size), float("nan")) for size in sizes)) for query in at_largest],
    )
    in_play = {m["rows"]: m["ids"] for m in results}
    print("ids in play: " + ", ".join(f"{ids:,} at {rows:,} rows" for rows, ids in sorted(in_play.items())))
    for query, m in at_largest.items():
        if m["per"] == "pass":
            report.target(f"{query} at {largest:,} rows (p50)", m["p50_ms"], 10.0, "ms")
    report.save()
    return report.figures


def _create_database(bench: BenchStack) -> None:
    import psycopg2  # noqa: PLC0415 - only needed here

    conn = psycopg2.connect(bench.stack.database_url.rsplit("/", 1)[0] + "/postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB}")
            cur.execute(f"CREATE DATABASE {SCRATCH_DB}")
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
