"""Routing policies on real endpoints of different speeds: makespan per policy.

    fabric bench routing [--policies round-robin,least-loaded,fastest,smallest-eta]
                         [--waves 3] [--per-wave 24] [--quick]

One hub and three endpoints on this machine, as in tests/test_routing.py:
`quick` (2 workers), `steady` (1 worker, `--slowdown 2`: every task takes
twice as long) and `sluggish` (1 worker, `--slowdown 4`). The workload is a
seeded mix of short, medium and long sleeps (--mix-ms, 60/30/10 %) in waves,
each wave submitted with one `batch_run` under the policy and waited for
before the next, so a policy that learns (smallest-ETA learns runtimes per
function and endpoint from every result) can use what the last wave taught.
A first round-robin wave, not counted, gives the model something to learn.

Makespan is compared with a lower bound (each wave: its work over the total
speed 2 + 1/2 + 1/4, or its longest task, whichever is larger) and with the
peers running the same waves on 4 full-speed workers (they have no slow
machines to avoid, so their makespan is what 4 equal workers achieve).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import (SHORT, add_common_arguments, figure, finish, nap, noop,
                               parse_list, progress, ratio, write_report)
from benchmarks.peers import open_engine, peers_arg

#: name -> (workers, slowdown)
ENDPOINTS = {"quick": (2, 1.0), "steady": (1, 2.0), "sluggish": (1, 4.0)}
CAPACITY = sum(w / s for w, s in ENDPOINTS.values())  # in full-speed workers
TOTAL_WORKERS = sum(w for w, _ in ENDPOINTS.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--policies", default="round-robin,least-loaded,fastest,smallest-eta")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--per-wave", type=int, default=24, help="tasks per wave")
    parser.add_argument("--mix-ms", default="20,60,200",
                        help="short, medium and long task durations (60/30/10 %%)")
    parser.add_argument("--seed", type=int, default=1)


def workload(args: argparse.Namespace) -> list[list[float]]:
    short, medium, long = (ms / 1000 for ms in parse_list(args.mix_ms, float))
    rng = random.Random(args.seed)
    return [[rng.choices((short, medium, long), (6, 3, 1))[0] for _ in range(args.per_wave)]
            for _ in range(args.waves)]


def lower_bound(waves: list[list[float]]) -> float:
    return sum(max(sum(w) / CAPACITY, max(w)) for w in waves)


def run_fabric(policies: list[str], waves: list[list[float]], bars: Any) -> list[dict[str, Any]]:
    from fabric.client import Client
    from fabric.launch import LocalFabric

    bar = bars.add_task("fabric (3 endpoints)", total=len(policies))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fabric-routing-") as tmp:
        fab = LocalFabric(tmp, [], workers=1)
        try:
            fab.start()
            for name, (workers, slowdown) in ENDPOINTS.items():
                fab.workers = workers
                fab.start_endpoint(name, "--slowdown", str(slowdown))
            with Client(fab.address) as client:
                client.wait_for_endpoints(len(ENDPOINTS), timeout=60)
                fid = client.register_function(nap)
                client.get_batch_result(client.batch_run(fid, [((d,), {}) for d in waves[0]],
                                                         policy="round-robin"), timeout=300)
                for policy in policies:
                    t0 = time.perf_counter()
                    tids = []
                    for wave in waves:
                        ids = client.batch_run(fid, [((d,), {}) for d in wave], policy=policy)
                        client.get_batch_result(ids, timeout=300)
                        tids += ids
                    makespan = time.perf_counter() - t0
                    info = {t.task_id: t for t in client.tasks(limit=len(tids) + 100)}
                    split = Counter(info[t].endpoint_name for t in tids if t in info)
                    rows.append({"engine": "fabric", "policy": policy, "makespan_s": makespan,
                                 "split": "/".join(str(split.get(n, 0)) for n in ENDPOINTS)})
                    bars.advance(bar)
        finally:
            fab.stop()
    return rows


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.waves, args.per_wave, args.mix_ms = 2, 16, "10,30,100"
    policies = parse_list(args.policies, str)
    waves = workload(args)
    bound = lower_bound(waves)
    engines = peers_arg(args.peers)
    rows: list[dict[str, Any]] = []
    with progress() as bars:
        for name in engines:
            if name == "fabric":
                rows += run_fabric(policies, waves, bars)
                continue
            bar = bars.add_task(f"{name} ({TOTAL_WORKERS} workers)", total=1)
            with open_engine(name, TOTAL_WORKERS) as eng:
                if eng is None:
                    bars.remove_task(bar)
                    continue
                eng.warm_up(noop)
                t0 = time.perf_counter()
                for wave in waves:
                    eng.run_all(nap, [(d,) for d in wave])
                rows.append({"engine": name, "policy": "-",
                             "makespan_s": time.perf_counter() - t0})
                bars.advance(bar)
    peers = {r["engine"]: r["makespan_s"] for r in rows if r["engine"] != "fabric"}
    rr = next((r["makespan_s"] for r in rows if r["policy"] == "round-robin"), None)
    for r in rows:
        r["vs_bound"] = r["makespan_s"] / bound
        if r["engine"] == "fabric":
            r["vs_round_robin"] = ratio(r["makespan_s"], rr)
            for peer, m in peers.items():
                r[f"x_{peer}"] = ratio(m, r["makespan_s"])
    work = sum(map(sum, waves))
    title = (f"Routing on real endpoints: quick 2 workers, steady 1 x 2 slower, sluggish 1 x 4 "
             f"slower; {args.waves} waves x {args.per_wave} tasks ({args.mix_ms} ms)")
    notes = [f"lower bound {bound:.2f} s (work {work:.2f} s over capacity {CAPACITY:g} "
             f"full-speed workers, per wave); split = tasks on quick/steady/sluggish; "
             f"x <peer> = the peer's makespan over Fabric's (the peer ran "
             f"{TOTAL_WORKERS} full-speed workers: no slow machines)"]
    columns = [("engine", "engine", "{}"), ("policy", "policy", "{}"),
               ("makespan_s", "makespan s", "{:.2f}"), ("vs_bound", "/ bound", "{:.2f}"),
               ("vs_round_robin", "/ round-robin", "{:.2f}"), ("split", "split", "{}")]
    columns += [(f"x_{p}", f"x {s}", "{:.2f}") for p, s in SHORT.items() if p in peers]
    write_report("routing", {"args": vars(args), "waves_s": waves, "lower_bound_s": bound},
                 title, columns, rows, notes, lambda p: plot(rows, bound, p), args.out)
    return 0


def plot(rows: list[dict[str, Any]], bound: float, path: Path) -> None:
    fig, (a,) = figure(1, 8)
    labels = [r["policy"] if r["engine"] == "fabric" else f"{r['engine']}\n(4 equal)"
              for r in rows]
    colors = ["tab:blue" if r["engine"] == "fabric" else "tab:grey" for r in rows]
    a.bar(labels, [r["makespan_s"] for r in rows], color=colors)
    a.axhline(bound, ls="--", color="tab:red", label="lower bound")
    a.set_ylabel("makespan (s)")
    a.set_title("makespan per routing policy (blue: Fabric, 3 endpoints of different speeds)")
    a.tick_params(axis="x", labelsize=8)
    a.legend(fontsize=8)
    finish(fig, path)
