"""Task duration sweep: throughput and efficiency of Fabric beside its peers.

    fabric bench durations [--durations-ms 0,1,10,100] [--workers 2] [--seconds 5] [--quick]

Each engine (same worker count) runs, for each duration d, as many tasks that
sleep d as keep its workers busy for about --seconds at the ideal rate, all
submitted at once (the no-op point runs a fixed --noop-tasks). Efficiency is
the measured rate over the ideal workers / d: how much of the workers' time
the engine's own overhead costs. Tasks sleep rather than spin, so on a small
machine the engine's processes, not the tasks, compete for the cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (add_common_arguments, add_ratios, figure, finish, nap, noop,
                               parse_list, progress, ratio, ratio_columns, write_report)
from benchmarks.peers import open_engine, peers_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--durations-ms", default="0,1,10,100",
                        help="comma-separated task durations in milliseconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="ideal busy time per point (tasks = workers x seconds / d)")
    parser.add_argument("--noop-tasks", type=int, default=20_000, help="tasks at d = 0")
    parser.add_argument("--max-tasks", type=int, default=20_000, help="cap per point")
    parser.add_argument("--prefetch", type=int, default=0,
                        help="fabric endpoint start --prefetch: tasks each endpoint holds "
                             "beyond its free workers (0 = the default)")


def plan(args: argparse.Namespace) -> list[tuple[float, int]]:
    """(duration s, tasks) per point."""
    if args.quick:
        args.seconds, args.noop_tasks, args.max_tasks = 1.0, 2000, 2000
    out = []
    for ms in parse_list(args.durations_ms, float):
        d = ms / 1000
        n = args.noop_tasks if d == 0 else int(args.workers * args.seconds / d)
        out.append((d, max(args.workers * 4, min(n, args.max_tasks))))
    return out


def measure(engine: Any, d: float, n: int) -> dict[str, Any]:
    fn, calls = (noop, [()] * n) if d == 0 else (nap, [(d,)] * n)
    t0 = time.perf_counter()
    engine.run_all(fn, calls)
    seconds = time.perf_counter() - t0
    ideal = engine.workers / d if d else None
    rate = n / seconds
    return {"engine": engine.name, "workers": engine.workers, "duration_ms": d * 1000,
            "tasks": n, "seconds": seconds, "tasks_per_s": rate, "ideal_tasks_per_s": ideal,
            "efficiency": ratio(rate, ideal)}


def run(args: argparse.Namespace) -> int:
    points = plan(args)
    engines = peers_arg(args.peers)
    rows: list[dict[str, Any]] = []
    with progress() as bars:
        for name in engines:
            bar = bars.add_task(f"{name} ({args.workers} workers)", total=len(points))
            with open_engine(name, args.workers,
                             endpoint_args=("--prefetch", str(args.prefetch))) as eng:
                if eng is None:
                    bars.remove_task(bar)
                    continue
                eng.warm_up(noop)
                for d, n in points:
                    rows.append(measure(eng, d, n))
                    bars.advance(bar)
    add_ratios(rows, "duration_ms", "tasks_per_s")
    title = (f"Task duration sweep: {args.workers} workers, tasks sleep d, Fabric endpoint "
             f"--prefetch {args.prefetch}")
    notes = ["efficiency = tasks/s over the ideal workers / d (1.00: the engine costs nothing); "
             "x PPE / x parsl / x dask = Fabric's tasks/s over that peer's at the same d, "
             "same run"]
    write_report("durations", {"args": vars(args)}, title, COLUMNS + ratio_columns(rows), rows,
                 notes, lambda p: plot(rows, p), args.out)
    return 0


COLUMNS = [("engine", "engine", "{}"), ("duration_ms", "d ms", "{:g}"),
           ("tasks", "tasks", "{:,}"), ("tasks_per_s", "tasks/s", "{:,.0f}"),
           ("efficiency", "efficiency", "{:.2f}")]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (a, b) = figure(2)
    for name in dict.fromkeys(r["engine"] for r in rows):
        mine = [r for r in rows if r["engine"] == name]
        xs = [max(r["duration_ms"], 0.1) for r in mine]  # d = 0 drawn at 0.1 ms (log axis)
        a.plot(xs, [r["tasks_per_s"] for r in mine], "o-", label=name)
        timed = [r for r in mine if r["efficiency"] is not None]
        b.plot([r["duration_ms"] for r in timed], [r["efficiency"] for r in timed], "o-",
               label=name)
    a.set_title("throughput (d = 0 drawn at 0.1 ms)")
    a.set_ylabel("tasks / s")
    b.set_title("efficiency = tasks/s / (workers / d)")
    b.axhline(1.0, ls=":", color="grey")
    b.set_ylim(0, 1.1)
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("task duration (ms)")
        ax.legend(fontsize=8)
    a.set_yscale("log")
    finish(fig, path)
