"""Run every benchmark in sequence and print a summary (``make bench`` / ``make bench-full``).

Each benchmark runs as its own process (``python -m bench.<name> --quick|--full``) with a time
limit, starts and stops its own stack, and writes bench/results/<name>.json; a failing one is
reported and the rest still run. The summary goes to the console and to
bench/results/summary.json, the plots to docs/img/ (bench/plots.py). ``--only`` picks some of them.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import plots
from bench.common import PYTHON, RESULTS_DIR, machine_info, print_table

# name -> time limit in seconds (quick); the full counts get three times as long.
BENCHMARKS: dict[str, float] = {
    "crash_resume": 900,
    "hang": 900,
    "mass_crash": 1800,
    "idle_cost": 900,
    "sweep_cost": 1200,
    "checkpoint_overhead": 600,
    "admission": 900,
    "foreign_pods": 900,
}


def _crash(d: dict[str, Any]) -> str:
    s = d["figures"]["summary"]
    return (
        f"kill->next pose p50 {s['total']['p50']:.2f} s, p99 {s['total']['p99']:.2f} s (detection p50 "
        f"{s['detection']['p50']:.2f} s, restart p50 {s['restart']['p50']:.2f} s); 1800 s/p99 = "
        f"x{d['figures']['ratio_seed_threshold_to_p99']:.0f}"
    )


def _hang(d: dict[str, Any]) -> str:
    parts = [f"{kind} p50 {s['p50']:.1f} s max {s['max']:.1f} s" for kind, s in d["figures"]["by_kind"].items()]
    return "SIGSTOP->replacement: " + "; ".join(parts) + f" (TTL {d['settings']['heartbeat_ttl_s']:g} s)"


def _mass(d: dict[str, Any]) -> str:
    return "; ".join(
        f"{s['workers']}: all resumed {s['all_resumed_seconds']:.1f} s"
        + (" (operator SIGKILLed)" if s["operator_restart"] else "")
        + f", lost {s['lost']}, dup {s['duplicated'] + s['seed_duplicates']}"
        for s in d["figures"]["scenarios"]
    )


def _idle(d: dict[str, Any]) -> str:
    return "; ".join(
        f"{r['generations']}: CPU {r['cpu_percent_of_core']:.2f} %, RSS {r['rss_mib_max']:.0f} MiB, "
        f"writes {r['operator_writes_per_min']:.1f}/min"
        for r in d["figures"]["levels"]
    )


def _sweep(d: dict[str, Any]) -> str:
    largest = max(q["rows"] for q in d["figures"]["queries"])
    return f"at {largest:,} rows p50: " + ", ".join(
        f"{q['query']} {q['p50_ms']:.1f} ms" for q in d["figures"]["queries"] if q["rows"] == largest
    )


def _checkpoint(d: dict[str, Any]) -> str:
    loops = "; ".join(
        f"{f['pose_seconds']:g} s poses +{f['checkpoint_ms_per_pose']:.1f} ms ({f['overhead_percent']:.2f} %)"
        for f in d["figures"]["loops"]
    )
    alone = d["figures"]["checkpoint_alone"]
    record, beat = alone["record_pose_ms"]["p50"], alone["heartbeat_ms"]["p50"]
    return f"{loops}; record_pose p50 {record:.2f} ms, heartbeat {beat:.2f} ms"


def _admission(d: dict[str, Any]) -> str:
    f = d["figures"]
    return (
        f"{f['count']} applied: all with a phase after {f['all_phased_seconds']:.1f} s "
        f"({f['resources_per_second']:.0f}/s), {f['operator_requests_per_resource']:.1f} operator requests each"
    )


def _foreign(d: dict[str, Any]) -> str:
    f = d["figures"]
    return (
        f"{f['foreign_pods']:,} foreign pods created, relabelled twice, deleted: operator CPU "
        f"{f['cpu_percent_churn']:.2f} % of a core vs {f['cpu_percent_quiet']:.2f} % quiet (x{f['cpu_ratio']:.2f}), "
        f"RSS {f['rss_mib_delta']:+.1f} MiB"
    )


HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "crash_resume": _crash,
    "hang": _hang,
    "mass_crash": _mass,
    "idle_cost": _idle,
    "sweep_cost": _sweep,
    "checkpoint_overhead": _checkpoint,
    "admission": _admission,
    "foreign_pods": _foreign,
}


class _Stop(BaseException):
    pass


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(name: str, mode: str, limit: float) -> dict[str, Any]:
    result_file = RESULTS_DIR / f"{name}.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    argv = [sys.executable, "-m", f"bench.{name}", f"--{mode}"]
    process = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1])
    try:
        code = process.wait(timeout=limit)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        process.terminate()  # its SIGTERM handler tears its stack down
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        status = f"timed out after {limit:.0f} s"
    except BaseException:
        process.terminate()
        process.wait(timeout=120)
        raise
    entry: dict[str, Any] = {
        "benchmark": name,
        "status": status,
        "seconds": time.monotonic() - started,
        "command": f"{PYTHON} -m bench.{name} --{mode}",
    }
    if status == "ok" and result_file.exists():
        document = json.loads(result_file.read_text())
        entry["headline"] = HEADLINES[name](document)
        entry["targets"] = document["targets"]
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"{PYTHON} -m bench.run_all", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    p.set_defaults(mode="quick")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    args = p.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    names = args.only or list(BENCHMARKS)
    scale = 1 if args.mode == "quick" else 3
    started = time.monotonic()
    entries = []
    try:
        for name in names:
            entries.append(run(name, args.mode, BENCHMARKS[name] * scale))
    except (_Stop, KeyboardInterrupt):
        print("interrupted: the running benchmark has torn its stack down", file=sys.stderr)
        return 130
    total = time.monotonic() - started
    print(f"\n==== summary ({args.mode}, {total / 60:.1f} min) ====")
    print_table(
        ["benchmark", "status", "min", "targets met"],
        [
            (
                e["benchmark"],
                e["status"],
                e["seconds"] / 60,
                f"{sum(t['met'] for t in e.get('targets', []))}/{len(e.get('targets', []))}",
            )
            for e in entries
        ],
    )
    for e in entries:
        print(f"\n{e['benchmark']}: {e.get('headline', e['status'])}")
        for t in e.get("targets", []):
            verdict = "met" if t["met"] else "MISSED"
            print(f"  {verdict:<6} {t['target']}: {t['measured']:.4g} {t['unit']} (limit {t['limit']:g})")
        print(f"  reproduce: {e['command']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary = {"mode": args.mode, "minutes": total / 60, "machine": machine_info(), "benchmarks": entries}
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    plots.main([])  # docs/img/*.png from the results just written (and any older ones still there)
    return 0 if all(e["status"] == "ok" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
