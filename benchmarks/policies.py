"""Routing policies judged in the discrete-event simulator, and what one decision costs.

    python -m benchmarks policies [--tasks 2000] [--seed 1] [--arrival waves] [--quick]

Experiments: every workload (uniform, bimodal, data-heavy, delta-mix) on every
endpoint mix (continuum, hpc-heavy, flaky) under every policy, each with two
runtime models: *cold* (starts empty and learns only from this run's results)
and *warm* (trained by an earlier run of the same kind of workload with
another seed, routed round-robin so that every function was measured on every
endpoint: what the hub knows after some use, and what Delta's profiles gave
it). Makespan is reported against the lower bound of scheduler/bounds.py.
"cheapest<=D" is the cheapest policy with a deadline of 1.5x the lower bound;
"eta+rejoin" is smallest-eta on a hub that also reroutes its unsent tasks when
an endpoint comes back online (the hub does not do that yet; it differs from
smallest-eta only where endpoints go offline: the flaky mix).

Decision time: microseconds per task at 10, 100 and 1,000 endpoints, for
`route_batch` on a 1,000-task batch (typical: one function, payloads within
2x; mixed: four functions, payloads 1 KB - 10 MB) and for `route` (one task,
one snapshot; what the hub calls today).

Writes results/policies-<stamp>.json, .md (the tables) and one PNG per
experiment (endpoint mix x model): bars of makespan / lower bound per policy.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import scheduler
from benchmarks.common import machine, save
from scheduler import workloads as W
from scheduler.bounds import lower_bound
from scheduler.simulator import SimResult, Simulator, simulate

POLICIES = ("round-robin", "least-loaded", "fastest", "cheapest", "cheapest<=D", "smallest-eta",
            "eta+rejoin")
DEADLINE_X_BOUND = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per workload")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--arrival", default="waves", choices=("waves", "at-once", "poisson"),
                        help="how tasks reach the hub (waves: 10 equal batches over --span)")
    parser.add_argument("--span", type=float, default=10.0, help="seconds over which tasks arrive")
    parser.add_argument("--quick", action="store_true",
                        help="500 tasks, continuum and hpc-heavy only, fewer timing repeats")


# ------------------------------------------------------------------ simulations

def make(policy: str, bound_s: float) -> scheduler.Policy:
    if policy == "cheapest<=D":
        return scheduler.make_policy("cheapest", deadline_s=DEADLINE_X_BOUND * bound_s)
    if policy == "eta+rejoin":
        return scheduler.make_policy("smallest-eta")
    return scheduler.make_policy(policy)


def experiment(mix: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """One workload on one mix: every policy, cold and warm model."""
    endpoints = W.MIXES[mix]()
    make_workload = W.WORKLOADS[workload]
    n = 500 if args.quick else args.tasks
    tasks = make_workload(n=n if workload != "data-heavy" else n // 2, seed=args.seed,
                          arrival=args.arrival, span_s=args.span)
    bound = lower_bound(endpoints, tasks.tasks)
    history = make_workload(n=len(tasks.tasks), seed=args.seed + 1000, arrival=args.arrival,
                            span_s=args.span)
    trainer = Simulator(endpoints, history, "round-robin", lower_bound_s=1.0)
    trainer.run()
    out: dict[str, Any] = {"lower_bound_s": bound, "tasks": len(tasks.tasks),
                           "description": tasks.description, "cold": {}, "warm": {}}
    for state in ("cold", "warm"):
        for policy in POLICIES:
            model = copy.deepcopy(trainer.model) if state == "warm" else None
            r = simulate(endpoints, tasks, make(policy, bound), model, lower_bound_s=bound,
                         rebalance=policy == "eta+rejoin")
            out[state][policy] = summary(r)
    return out


def summary(r: SimResult) -> dict[str, Any]:
    return {"makespan_s": r.makespan_s, "ratio": r.ratio, "cost": r.cost,
            "utilisation": r.utilisation, "mean_response_s": r.mean_response_s,
            "completed": r.completed, "requeued": r.requeued, "unfinished": r.unfinished,
            "per_endpoint": r.per_endpoint}


# ------------------------------------------------------------------ decision time

def endpoint_views(n: int) -> list[scheduler.EndpointView]:
    return [scheduler.EndpointView(
        e.endpoint_id, e.endpoint_id, True, "3.11", workers=e.workers, credits=e.workers,
        gpus=e.gpus, memory_bytes=e.memory_bytes, latency_s=e.latency_s,
        bandwidth_Bps=e.bandwidth_Bps, relative_speed=e.speed,
        cost_per_core_hour=e.cost_per_core_hour) for e in W.random_mix(n, seed=n)]


def batch(shape: str, rng: random.Random) -> list[scheduler.TaskView]:
    if shape == "typical":
        return [scheduler.TaskView("f0", "3.11", None, rng.randint(50_000, 100_000))
                for _ in range(1000)]
    return [scheduler.TaskView(f"f{rng.randrange(4)}", "3.11", None, rng.randint(1_000, 10**7))
            for _ in range(1000)]


def trained_model(views: list[scheduler.EndpointView], rng: random.Random) -> scheduler.RuntimeModel:
    """A model that has measured each function on the first 50 endpoints."""
    model = scheduler.RuntimeModel()
    for f in ("f0", "f1", "f2", "f3"):
        for v in views[:50]:
            for _ in range(4):
                model.observe(f, v.endpoint_id, rng.uniform(0.5, 2.0), rng.randint(1_000, 10**7))
    return model


def decision_times(repeats: int, route_samples: int) -> list[dict[str, Any]]:
    rows = []
    for n in (10, 100, 1000):
        rng = random.Random(n)
        views = endpoint_views(n)
        model = trained_model(views, rng)
        batches = {shape: batch(shape, rng) for shape in ("typical", "mixed")}
        for name in sorted(scheduler.POLICIES):
            row: dict[str, Any] = {"endpoints": n, "policy": name}
            for shape, tasks in batches.items():
                samples = []
                for _ in range(repeats):
                    policy = scheduler.make_policy(name)
                    t0 = time.perf_counter()
                    scheduler.route_batch(tasks, views, policy, model)
                    samples.append((time.perf_counter() - t0) / len(tasks) * 1e6)
                row[f"batch_{shape}_us"] = statistics.median(samples)
            k = route_samples if n < 1000 else max(10, route_samples // 10)
            policy = scheduler.make_policy(name)
            t0 = time.perf_counter()
            for task in batches["mixed"][:k]:
                scheduler.route(task, views, policy, model)
            row["route_us"] = (time.perf_counter() - t0) / k * 1e6
            rows.append(row)
            print(f"  {n:5} endpoints {name:13} batch typical {row['batch_typical_us']:7.1f} us"
                  f"  mixed {row['batch_mixed_us']:7.1f} us  route {row['route_us']:8.1f} us",
                  flush=True)
    return rows


# ------------------------------------------------------------------ output

def plot(mix: str, state: str, results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    workloads = list(results)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(POLICIES)
    for k, policy in enumerate(POLICIES):
        ratios = [results[w][state][policy]["ratio"] for w in workloads]
        ax.bar([i + k * width for i in range(len(workloads))], ratios, width, label=policy)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(POLICIES) - 1) / 2 for i in range(len(workloads))], workloads)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_ylabel("makespan / lower bound (log)")
    ax.set_title(f"{mix} endpoints, {state} runtime model")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(payload: dict[str, Any]) -> str:
    res = payload["experiments"]
    lines = [f"# Routing policies in the simulator, {payload['when']}", "",
             f"{payload['tasks']} tasks per workload (data-heavy: half), arrival `{payload['arrival']}` "
             f"over {payload['span_s']:g} s, seed {payload['seed']}. Each cell: makespan / lower bound "
             "(1.00 = no schedule could do better). `cheapest<=D`: cheapest with a deadline of "
             f"{DEADLINE_X_BOUND}x the lower bound. Simulated seconds; any machine gives the same numbers.", ""]
    for state in ("warm", "cold"):
        title = ("warm model (trained on an earlier run)" if state == "warm"
                 else "cold model (starts empty)")
        lines += [f"## Makespan / lower bound, {title}", "",
                  "| mix | workload | bound s | " + " | ".join(POLICIES)
                  + " | eta / fastest | eta / round-robin |",
                  "|---|---|---:|" + "---:|" * (len(POLICIES) + 2)]
        for mix, workloads in res.items():
            for workload, r in workloads.items():
                row = r[state]
                cells = [f"{row[p]['ratio']:.2f}" for p in POLICIES]
                best = min(POLICIES, key=lambda p: row[p]["ratio"])
                cells[POLICIES.index(best)] = f"**{cells[POLICIES.index(best)]}**"
                eta = row["smallest-eta"]["makespan_s"]
                lines.append(f"| {mix} | {workload} | {r['lower_bound_s']:.1f} | " + " | ".join(cells)
                             + f" | {eta / row['fastest']['makespan_s']:.2f}"
                             + f" | {eta / row['round-robin']['makespan_s']:.2f} |")
        lines += ["", summary_line(res, state), ""]
    lines += ["## Cost in dollars, warm model", "",
              "| mix | workload | " + " | ".join(POLICIES) + " |", "|---|---|" + "---:|" * len(POLICIES)]
    for mix, workloads in res.items():
        for workload, r in workloads.items():
            lines.append(f"| {mix} | {workload} | "
                         + " | ".join(f"{r['warm'][p]['cost']:.3f}" for p in POLICIES) + " |")
    lines += ["", "## Decision time, microseconds per task", "",
              "route_batch: one 1,000-task batch against one snapshot (typical: one function, "
              "payloads within 2x; mixed: 4 functions, payloads 1 KB-10 MB). route: one task per "
              "call, O(endpoints) each.", "",
              "| endpoints | policy | route_batch typical | route_batch mixed | route |",
              "|---:|---|---:|---:|---:|"]
    for row in payload["decision_time"]:
        lines.append(f"| {row['endpoints']:,} | {row['policy']} | {row['batch_typical_us']:.1f} | "
                     f"{row['batch_mixed_us']:.1f} | {row['route_us']:.1f} |")
    return "\n".join(lines) + "\n"


def summary_line(res: dict[str, Any], state: str) -> str:
    def gmean(xs: list[float]) -> float:
        return math.exp(sum(map(math.log, xs)) / len(xs))

    def line(label: str, rows: list[dict[str, Any]], policy: str) -> str:
        eta = [r[policy]["ratio"] for r in rows]
        vs_fast = [r[policy]["makespan_s"] / r["fastest"]["makespan_s"] for r in rows]
        vs_rr = [r[policy]["makespan_s"] / r["round-robin"]["makespan_s"] for r in rows]
        return (f"- {label} ({len(rows)} experiments): {policy} at {gmean(eta):.2f}x the lower "
                f"bound (range {min(eta):.2f}-{max(eta):.2f}), {gmean(vs_fast):.2f}x fastest's "
                f"makespan, {gmean(vs_rr):.2f}x round-robin's (geometric means).")

    steady = [r[state] for mix, w in res.items() if mix != "flaky" for r in w.values()]
    every = [r[state] for w in res.values() for r in w.values()]
    out = [line("endpoints that stay up", steady, "smallest-eta")] if steady else []
    return "\n".join(out + [line("all mixes", every, "smallest-eta"),
                             line("all mixes, rerouting on rejoin", every, "eta+rejoin")])


def run(args: argparse.Namespace) -> int:
    mixes = ("continuum", "hpc-heavy") if args.quick else tuple(W.MIXES)
    experiments: dict[str, dict[str, Any]] = {}
    for mix in mixes:
        experiments[mix] = {}
        for workload in W.WORKLOADS:
            t0 = time.perf_counter()
            r = experiments[mix][workload] = experiment(mix, workload, args)
            cells = "  ".join(f"{p}={r['warm'][p]['ratio']:.2f}" for p in POLICIES)
            print(f"{mix:10} {workload:11} bound {r['lower_bound_s']:6.1f}s  warm: {cells}  "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    print("decision time per task:", flush=True)
    timing = decision_times(repeats=3 if args.quick else 5, route_samples=100 if args.quick else 300)
    payload = {"scenario": "policies", "machine": machine(), "tasks": args.tasks,
               "seed": args.seed, "arrival": args.arrival, "span_s": args.span,
               "quick": args.quick, "experiments": experiments, "decision_time": timing,
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path = save("policies", payload)
    md = path.with_suffix(".md")
    md.write_text(markdown(payload))
    pngs = []
    for mix, results in experiments.items():
        for state in ("warm", "cold"):
            png = path.with_name(f"{path.stem}-{mix}-{state}.png")
            plot(mix, state, results, png)
            pngs.append(png.name)
    print(markdown(payload))
    print(f"wrote {path}, {md.name} and {', '.join(pngs)}")
    return 0
