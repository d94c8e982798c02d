"""Scaling in workers per endpoint and in endpoints: throughput beside peers with
the same total workers.

    fabric bench workers [--endpoints 1,2,4] [--workers 1,2,4] [--task-ms 10] [--quick]

Fabric runs E endpoints of W workers each (real processes, one hub), tasks
that sleep --task-ms submitted through one Executor with no endpoint named,
so the hub's policy (--policy, default round-robin) spreads them. Each peer
runs the same tasks with E x W workers. Tasks sleep, so a 2-core machine can
host more workers than cores and the sweep shows dispatch overhead, not core
count: the ideal rate is E x W / task duration. Tasks per point keep the
workers busy about --seconds at the ideal rate.
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
    parser.add_argument("--endpoints", default="1,2,4", help="comma-separated endpoint counts")
    parser.add_argument("--workers", default="1,2,4",
                        help="comma-separated worker counts per endpoint")
    parser.add_argument("--task-ms", type=float, default=10.0, help="duration of each task")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="ideal busy time per point (tasks = E x W x seconds / duration)")
    parser.add_argument("--policy", default="round-robin",
                        help="how the hub spreads tasks over the endpoints")
    parser.add_argument("--prefetch", type=int, default=0,
                        help="fabric endpoint start --prefetch: tasks each endpoint holds "
                             "beyond its free workers (0 = the default)")


def measure(engine: Any, endpoints: int, per_endpoint: int, d: float, seconds: float
            ) -> dict[str, Any]:
    total = endpoints * per_endpoint
    n = max(4 * total, int(total * seconds / d))
    t0 = time.perf_counter()
    engine.run_all(nap, [(d,)] * n)
    elapsed = time.perf_counter() - t0
    rate = n / elapsed
    return {"engine": engine.name, "endpoints": endpoints if engine.name == "fabric" else None,
            "workers_per_endpoint": per_endpoint if engine.name == "fabric" else None,
            "total_workers": total, "tasks": n, "seconds": elapsed, "tasks_per_s": rate,
            "efficiency": ratio(rate, total / d)}


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.endpoints, args.workers, args.seconds = "1,2", "1,2", 1.0
    counts = parse_list(args.endpoints)
    per = parse_list(args.workers)
    d = args.task_ms / 1000
    engines = peers_arg(args.peers)
    totals = sorted({e * w for e in counts for w in per})
    rows: list[dict[str, Any]] = []
    with progress() as bars:
        for name in engines:
            shapes = [(e, w) for e in counts for w in per] if name == "fabric" else \
                [(1, t) for t in totals]
            bar = bars.add_task(name, total=len(shapes))
            for e, w in shapes:
                # A fresh engine per shape: Fabric's endpoints and the peers' pools are sized
                # when they start.
                kwargs = {"endpoints": e, "policy": args.policy,
                          "endpoint_args": ("--prefetch", str(args.prefetch))} \
                    if name == "fabric" else {}
                with open_engine(name, e * w, **kwargs) as eng:
                    if eng is None:
                        bars.remove_task(bar)
                        break
                    eng.warm_up(noop)
                    rows.append(measure(eng, e, w, d, args.seconds))
                bars.advance(bar)
    add_ratios(rows, "total_workers", "tasks_per_s")
    title = (f"Scaling: E endpoints x W workers ({args.task_ms:g} ms tasks, {args.policy}, "
             f"--prefetch {args.prefetch}) "
             f"vs peers with E x W workers")
    notes = ["efficiency = tasks/s over the ideal E x W / task duration; x <peer> = Fabric's "
             "tasks/s over the peer's with the same total workers, same run"]
    write_report("workers", {"args": vars(args)}, title, COLUMNS + ratio_columns(rows), rows,
                 notes, lambda p: plot(rows, p), args.out)
    return 0


COLUMNS = [("engine", "engine", "{}"), ("endpoints", "E", "{}"),
           ("workers_per_endpoint", "W", "{}"), ("total_workers", "E x W", "{}"),
           ("tasks", "tasks", "{:,}"), ("tasks_per_s", "tasks/s", "{:,.0f}"),
           ("efficiency", "efficiency", "{:.2f}")]


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (a, b) = figure(2)
    fabric = [r for r in rows if r["engine"] == "fabric"]
    for e in dict.fromkeys(r["endpoints"] for r in fabric):
        mine = sorted((r for r in fabric if r["endpoints"] == e), key=lambda r: r["total_workers"])
        for ax, key in ((a, "tasks_per_s"), (b, "efficiency")):
            ax.plot([r["total_workers"] for r in mine], [r[key] for r in mine], "o-",
                    label=f"fabric, {e} endpoint{'s' if e > 1 else ''}")
    for name in dict.fromkeys(r["engine"] for r in rows if r["engine"] != "fabric"):
        mine = sorted((r for r in rows if r["engine"] == name), key=lambda r: r["total_workers"])
        for ax, key in ((a, "tasks_per_s"), (b, "efficiency")):
            ax.plot([r["total_workers"] for r in mine], [r[key] for r in mine], "s--", label=name)
    a.set_title("throughput")
    a.set_ylabel("tasks / s")
    b.set_title("efficiency = tasks/s / (workers / duration)")
    b.set_ylim(0, 1.1)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("total workers")
        ax.legend(fontsize=8)
    finish(fig, path)
