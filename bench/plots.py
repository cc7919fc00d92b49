"""Plots of the benchmarks' results: bench/results/<name>.json -> docs/img/<name>.png.

``make bench`` runs this after the benchmarks (``bench.run_all``); on its own it redraws whatever
results are there: ``.venv/bin/python -m bench.plots``. Each plot names, under it, the command that
produced its figures, when, on which code, and how busy the machine was."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # used without pyplot: no display, no global state

from bench.common import PYTHON, REPO_ROOT, RESULTS_DIR

IMAGES_DIR = REPO_ROOT / "docs" / "img"
DPI = 80
Document = dict[str, Any]


def _figure(columns: int = 1, width: float | None = None) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width or (6.4 * columns if columns > 1 else 7.5), 4.2))
    axes = figure.subplots(1, columns, squeeze=False)
    return figure, list(axes[0])


def _provenance(figure: Figure, document: Document) -> None:
    machine = document["machine"]
    shared = "shared with other work" if machine.get("shared") else "not shared"
    figure.text(
        0.01,
        0.01,
        f"made by: {document['command']}\n{document['started_at'][:16].replace('T', ' ')} UTC, "
        f"code {machine['code']}; {machine['cpus']} cores {shared} "
        f"(load {machine['loadavg_start'].split()[0]}, busy {machine.get('machine_cpu_busy_percent', 0):.0f} %)",
        fontsize=7,
        color="dimgray",
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))


def _ecdf(axes: Axes, values: Sequence[float], label: str, **style: Any) -> None:
    ordered = sorted(values)
    if ordered:
        shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, shares, where="post", label=f"{label} (n={len(ordered)})", **style)


def crash_resume(document: Document) -> Figure:
    """kill -9 -> next recorded pose, as a distribution, per node kind where runs say which."""
    figure, (axes,) = _figure()
    runs = document["figures"]["runs"]
    kinds = sorted({run.get("node", "process node") for run in runs})
    for index, kind in enumerate(kinds):
        mine = [run for run in runs if run.get("node", "process node") == kind]
        color = f"C{index}"
        _ecdf(axes, [run["total"] for run in mine], f"{kind}: kill → next pose", color=color, linewidth=2)
        _ecdf(axes, [run["detection"] for run in mine], f"{kind}: detection (kill → new pod)", color=color, ls=":")
        _ecdf(axes, [run["restart"] for run in mine], f"{kind}: restart (new pod → pose)", color=color, ls="--")
    axes.set_xlabel("seconds after kill -9")
    axes.set_ylabel("share of runs")
    axes.set_title("Crash → resume latency (target p99 ≤ 10 s)")
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    _provenance(figure, document)
    return figure


def sweep_cost(document: Document) -> Figure:
    """Each database read of a pass (and of a re-list) against the table's size."""
    figure, (axes,) = _figure(width=10)
    queries = document["figures"]["queries"]
    names = list(dict.fromkeys(q["query"] for q in queries))
    for index, name in enumerate(names):
        points = sorted((q["rows"], q["p50_ms"], q["p90_ms"]) for q in queries if q["query"] == name)
        rows = [p[0] for p in points]
        whole = name.startswith("pass total")
        relist = points and next(q for q in queries if q["query"] == name)["per"] == "re-list"
        axes.plot(
            rows,
            [p[1] for p in points],
            marker="o",
            color="black" if whole else f"C{index}",
            linewidth=3 if whole else 1.2,
            ls="--" if relist else "-",
            label=("a whole pass" if whole else name) + (" (each re-list)" if relist else ""),
        )
        if whole:
            axes.fill_between(rows, [p[1] for p in points], [p[2] for p in points], color="black", alpha=0.12)
    axes.axhline(10, color="red", ls=":", linewidth=1)
    axes.text(max(q["rows"] for q in queries), 7.5, "target: a pass < 10 ms", color="red", fontsize=8, ha="right")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("pose_generation rows (1 % processing, 0.1 % queued)")
    axes.set_ylabel("ms, p50 (band: p50 to p90 of a whole pass)")
    axes.set_title("A pass's database cost against table size")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _provenance(figure, document)
    return figure


def idle_cost(document: Document) -> Figure:
    """Operator RSS and CPU against the number of generations present, live and after a restart."""
    figure, (rss, cpu) = _figure(columns=2)
    levels = document["figures"]["levels"]
    for restarted, marker, label in ((False, "o", "created live"), (True, "s", "after a restart")):
        chosen = sorted((r for r in levels if bool(r.get("restarted")) == restarted), key=lambda r: r["generations"])
        if not chosen:
            continue
        counts = [r["generations"] for r in chosen]
        rss.plot(counts, [r["rss_mib_max"] for r in chosen], marker=marker, label=label)
        cpu.plot(counts, [r["cpu_percent_of_core"] for r in chosen], marker=marker, label=label)
    rss.axhline(200, color="red", ls=":", linewidth=1, label="target 200 MiB")
    cpu.axhline(1, color="red", ls=":", linewidth=1, label="target 1 % of a core")
    for axes, unit, title in ((rss, "RSS, MiB (window max)", "Operator memory"), (cpu, "% of one core", "CPU")):
        axes.set_xscale("log")
        axes.set_xlabel("PoseGenerations present (idle: suspended)")
        axes.set_ylabel(unit)
        axes.set_title(f"{title} against the number of generations")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    _provenance(figure, document)
    return figure


def mass_crash(document: Document) -> Figure:
    """N workers killed at once: how many were reported, replaced and resumed, against time."""
    scenarios = document["figures"]["scenarios"]
    figure, axes_list = _figure(columns=len(scenarios))
    for axes, scenario in zip(axes_list, scenarios, strict=True):
        samples = scenario.get("samples")
        if not samples:
            axes.text(0.5, 0.5, "no raw samples in this result", ha="center", transform=axes.transAxes)
            continue
        for (label, values), style in zip(samples.items(), (":", "--", "-"), strict=True):
            axes.step([0, *values], range(len(values) + 1), where="post", ls=style, label=label)
        restart = scenario.get("operator_restart") or {}
        if restart:
            start = restart["operator_killed_after"]
            axes.axvspan(start, start + restart["down_for"], color="gray", alpha=0.2, label="operator down")
        axes.axhline(scenario["workers"], color="black", linewidth=0.5)
        axes.set_xlabel("seconds after kill -9 of all")
        axes.set_ylabel("generations")
        axes.set_title(
            f"{scenario['workers']} workers killed at once: all resumed in {scenario['resume']['max']:.1f} s"
        )
        axes.set_xlim(left=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    _provenance(figure, document)
    return figure


def foreign_pods(document: Document) -> Figure:
    """The operator's CPU and RSS over time, with the foreign pods' churn shaded."""
    figure, (cpu, rss) = _figure(columns=2)
    figures = document["figures"]
    samples = figures["samples"]
    step = 60  # CPU as a rate over 60 samples (30 s): /proc counts in 10 ms ticks
    times = [samples[i][0] for i in range(step, len(samples))]
    rates = [
        100 * (samples[i][1] - samples[i - step][1]) / (samples[i][0] - samples[i - step][0])
        for i in range(step, len(samples))
    ]
    cpu.plot(times, rates, linewidth=1)
    rss.plot([s[0] for s in samples], [s[2] for s in samples], linewidth=1)
    rss.set_ylim(0, 1.15 * max(s[2] for s in samples))
    for axes, unit in ((cpu, "operator CPU, % of one core (30 s rate)"), (rss, "operator RSS, MiB")):
        axes.axvspan(figures["churn_started_at"], figures["churn_ended_at"], color="orange", alpha=0.2)
        axes.set_xlabel("seconds (shaded: foreign pods created, relabelled twice, deleted)")
        axes.set_ylabel(unit)
        axes.grid(alpha=0.3)
    cpu.set_ylim(bottom=0)
    cpu.set_title(f"{figures['foreign_pods']:,} pods not ours: CPU x{figures['cpu_ratio']:.2f} of quiet")
    before, during, after = (w["rss_mib_max"] for w in figures["windows"])
    rss.set_title(f"RSS {max(during, after) - before:+.1f} MiB from the churn on")
    _provenance(figure, document)
    return figure


PLOTS: dict[str, Callable[[Document], Figure]] = {
    "crash_resume": crash_resume,
    "sweep_cost": sweep_cost,
    "idle_cost": idle_cost,
    "mass_crash": mass_crash,
    "foreign_pods": foreign_pods,
}


def draw(name: str, results: Path = RESULTS_DIR, images: Path = IMAGES_DIR) -> Path | None:
    source = results / f"{name}.json"
    if not source.exists():
        print(f"plots: no {source.relative_to(REPO_ROOT)}, skipping {name}")
        return None
    figure = PLOTS[name](json.loads(source.read_text()))
    images.mkdir(parents=True, exist_ok=True)
    target = images / f"{name}.png"
    figure.savefig(target, dpi=DPI)
    print(f"plots: {target.relative_to(REPO_ROOT)}")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"{PYTHON} -m bench.plots", description=__doc__)
    p.add_argument("--only", nargs="+", choices=list(PLOTS), help="draw only these")
    args = p.parse_args(argv)
    for name in args.only or PLOTS:
        draw(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
