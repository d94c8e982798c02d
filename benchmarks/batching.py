"""Batch size and prefetch sweeps: throughput of Fabric beside its peers.

    fabric bench batching [--batches 1,10,100,1000] [--prefetch 0,1,4,16] [--quick]

Batch sweep (`nap(0)`: an instant task with one argument, all submitted at
once, then every result): Fabric submits with `Client.batch_run`, B calls per
Submit, each waited for (B = 1: one Submit call per task, which is what
batching saves; the Executor's own coalescing is the row B = 0, `submit` per
call, as every engine has it); ProcessPoolExecutor
with `map(chunksize=B)` (B calls per pickled message to a worker); Dask with
`Client.map(batch_size=B)`. Fabric also runs `Executor.map(chunksize=B)` (B
calls in one task, as PPE's map does; api "map"). Parsl and Ray have no batch
submit: their users
submit per call, so they run B = 0 only, the reference line.

Prefetch sweep (tasks that sleep --task-ms, Executor.submit per task): one
endpoint started with `fabric endpoint start --prefetch P`, which holds P
tasks beyond its free workers, so a worker that finishes starts the next task
without a round trip to the hub. The peers run the same tasks with B = 1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (SHORT, add_common_arguments, figure, finish, nap, noop,
                               parse_list, progress, ratio, write_report)
from benchmarks.peers import open_engine, peers_arg

BATCHED = ("process-pool", "fabric", "dask")  # engines with a batch submit
API = {"process-pool": "map", "dask": "map", "fabric": "batch_run"}  # ... and what it is


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--batches", default="1,10,100,1000", help="calls per batch")
    parser.add_argument("--prefetch", default="0,1,4,16",
                        help="fabric endpoint start --prefetch values")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per batch point")
    parser.add_argument("--task-ms", type=float, default=1.0,
                        help="duration of each task in the prefetch sweep")
    parser.add_argument("--prefetch-tasks", type=int, default=5_000,
                        help="tasks per prefetch point")


def timed(engine: Any, fn: Any, calls: list[tuple[Any, ...]], batch: int) -> float:
    t0 = time.perf_counter()
    engine.run_all(fn, calls, batch=batch)
    return len(calls) / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.batches, args.prefetch = "1,10,100,1000", "0,4"
        args.tasks, args.prefetch_tasks = min(args.tasks, 2000), min(args.prefetch_tasks, 1000)
    batches = parse_list(args.batches)
    prefetch = parse_list(args.prefetch)
    engines = peers_arg(args.peers)
    task = [(args.task_ms / 1000,)] * args.prefetch_tasks
    rows: list[dict[str, Any]] = []
    with progress() as bars:
        for name in engines:
            sweep = [0, *batches] if name in BATCHED else [0]
            plain = name != "fabric" or 0 in prefetch  # the peers' prefetch reference
            bar = bars.add_task(f"{name} ({args.workers} workers)",
                                total=len(sweep) + (1 if plain else 0))
            with open_engine(name, args.workers) as eng:
                if eng is None:
                    bars.remove_task(bar)
                    continue
                eng.warm_up(noop)
                calls = [(0.0,)] * args.tasks
                for b in sweep:
                    rows.append({"sweep": "batch", "engine": name, "batch": b, "prefetch": None,
                                 "api": API[name] if b else "submit", "tasks": args.tasks,
                                 "tasks_per_s": timed(eng, nap, calls, b)})
                    if name == "fabric" and b > 1:  # B calls per task, like PPE's map
                        t0 = time.perf_counter()
                        eng.map_chunked(nap, calls, b)  # type: ignore[attr-defined]
                        rows.append({**rows[-1], "api": "map",
                                     "tasks_per_s": len(calls) / (time.perf_counter() - t0)})
                    bars.advance(bar)
                if plain:
                    rows.append({"sweep": "prefetch", "engine": name, "batch": 0,
                                 "prefetch": 0 if name == "fabric" else None, "api": "submit",
                                 "task_ms": args.task_ms, "tasks": len(task),
                                 "tasks_per_s": timed(eng, nap, task, 0)})
                    bars.advance(bar)
        if "fabric" in engines:
            others = [p for p in prefetch if p != 0]
            bar = bars.add_task("fabric --prefetch", total=len(others))
            for p in others:
                with open_engine("fabric", args.workers,
                                 endpoint_args=("--prefetch", str(p))) as eng:
                    assert eng is not None
                    eng.warm_up(noop)
                    rows.append({"sweep": "prefetch", "engine": "fabric", "batch": 0,
                                 "prefetch": p, "api": "submit", "task_ms": args.task_ms,
                                 "tasks": len(task),
                                 "tasks_per_s": timed(eng, nap, task, 0)})
                bars.advance(bar)
    add_peer_ratios(rows)
    rows.sort(key=lambda r: (r["sweep"], r["engine"] != "fabric", r["engine"]))
    title = (f"Batch size (instant tasks) and endpoint prefetch ({args.task_ms:g} ms tasks) "
             f"sweeps, {args.workers} workers")
    notes = ["batch: calls per Submit (Fabric batch_run), per worker message (PPE "
             "map chunksize), per Dask Client.map batch_size; 0 = submit per call (Fabric: the "
             "Executor, which coalesces a burst); Parsl and Ray only submit per call. "
             "api: batch_run = B tasks per Submit; map = B calls per task (Executor.map / "
             "PPE map chunksize); submit = one call per submit. "
             "x <peer> = Fabric's tasks/s over the peer's: at the same batch size where the "
             "peer batches, else over its per-call rate",
             "prefetch: tasks an endpoint holds beyond its free workers (fabric endpoint start "
             "--prefetch); peers (no such knob) are shown once"]
    columns = [("sweep", "sweep", "{}"), ("engine", "engine", "{}"), ("api", "api", "{}"),
               ("batch", "batch", "{}"),
               ("prefetch", "prefetch", "{}"), ("tasks", "tasks", "{:,}"),
               ("tasks_per_s", "tasks/s", "{:,.0f}")]
    columns += [(f"x_{p}", f"x {s}", "{:.2f}") for p, s in SHORT.items()
                if any(r.get(f"x_{p}") is not None for r in rows)]
    write_report("batching", {"args": vars(args)}, title, columns, rows, notes,
                 lambda p: plot(rows, p), args.out)
    return 0


def add_peer_ratios(rows: list[dict[str, Any]]) -> None:
    def peer_rate(peer: str, sweep: str, batch: int) -> float | None:
        mine = [r for r in rows if r["engine"] == peer and r["sweep"] == sweep]
        same = [r for r in mine if r["batch"] == batch] or [r for r in mine if r["batch"] == 0]
        return same[0]["tasks_per_s"] if same else None

    for r in rows:
        if r["engine"] == "fabric":
            for peer in SHORT:
                r[f"x_{peer}"] = ratio(r["tasks_per_s"], peer_rate(peer, r["sweep"], r["batch"]))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, (a, b) = figure(2)
    style = {"batch_run": "o-", "map": "s-."}
    for i, name in enumerate(dict.fromkeys(r["engine"] for r in rows)):
        color = f"C{i}"
        mine = [r for r in rows if r["engine"] == name and r["sweep"] == "batch"]
        for api in dict.fromkeys(r["api"] for r in mine if r["batch"] >= 1):
            line = [r for r in mine if r["api"] == api and r["batch"] >= 1]
            a.plot([r["batch"] for r in line], [r["tasks_per_s"] for r in line],
                   style.get(api, "o-"), color=color, label=f"{name} {api}")
        for r in mine:
            if r["batch"] == 0:
                a.axhline(r["tasks_per_s"], ls=":", color=color, label=f"{name} submit per call")
        pre = [r for r in rows if r["engine"] == name and r["sweep"] == "prefetch"]
        if name == "fabric":
            b.plot([r["prefetch"] for r in pre], [r["tasks_per_s"] for r in pre], "o-",
                   color=color, label=name)
        elif pre:
            b.axhline(pre[0]["tasks_per_s"], ls=":", color=color, label=name)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("batch size (calls per submit / per task)")
    a.set_title("instant-task throughput vs batch size")
    b.set_xlabel("endpoint --prefetch")
    b.set_title("short-task throughput vs prefetch")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ax.set_ylabel("tasks / s")
        ax.legend(fontsize=7)
    finish(fig, path)
