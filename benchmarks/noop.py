"""No-op throughput and round-trip latency: Fabric beside ProcessPoolExecutor (and
Parsl / Dask / Ray when installed), same worker count, same run.

    fabric bench noop [--workers 2] [--tasks 20000] [--samples 500] [--peers ...]

Fabric is measured end to end: client -> hub -> endpoint -> workers -> back,
with the hub and the endpoint as real processes on loopback (benchmarks/peers.py
starts every engine). Throughput: `tasks` no-ops submitted at once, then every
result; latency: `samples` sequential round trips; Fabric also through the
batch API (one `batch_run` of all tasks, one `get_batch_result`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import (RESULTS, figure, finish, noop, percentiles, progress, ratio,
                               write_report)
from benchmarks.peers import Engine, open_engine, peers_arg


def measure(eng: Engine, tasks: int, samples: int, warmup: int = 200) -> dict[str, Any]:
    """Throughput of `tasks` no-ops submitted at once, then `samples` sequential round trips."""
    eng.warm_up(noop, warmup)
    t0 = time.perf_counter()
    eng.run_all(noop, [()] * tasks, timeout=300)
    elapsed = time.perf_counter() - t0
    rtts = []
    for _ in range(samples):
        t = time.perf_counter()
        eng.submit(noop).result(timeout=60)
        rtts.append(time.perf_counter() - t)
    out = {"tasks": tasks, "seconds": elapsed, "tasks_per_s": tasks / elapsed,
           "latency": percentiles(rtts), "latency_samples_s": rtts}
    if eng.name == "fabric":  # the batch API too: one Submit for all, one wait for all
        t0 = time.perf_counter()
        eng.run_all(noop, [()] * tasks, batch=tasks, timeout=300)
        elapsed = time.perf_counter() - t0
        out["batch_api"] = {"tasks": tasks, "seconds": elapsed, "tasks_per_s": tasks / elapsed}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    names = [n for n, r in results.items() if r]
    fig, (a, b) = figure(2, 5)
    a.bar(names, [results[n]["tasks_per_s"] for n in names], color="tab:blue")
    a.set_ylabel("no-op tasks / s")
    a.set_title("throughput")
    for n in names:
        lat = results[n]["latency"]
        b.bar([f"{n}\np50", f"{n}\np99"], [lat["p50_ms"], lat["p99_ms"]],
              color=["tab:green", "tab:red"])
    b.set_ylabel("round trip (ms)")
    b.set_title("latency, one task at a time")
    b.tick_params(axis="x", labelsize=7)
    finish(fig, path)


def main(workers: int = 2, tasks: int = 20_000, samples: int = 500,
         peers: tuple[str, ...] = ("process-pool", "fabric", "dask", "parsl"),
         out: Path = RESULTS) -> dict[str, Path]:
    results: dict[str, Any] = {}
    with progress() as bars:
        for name in peers_arg(",".join(peers)):
            bar = bars.add_task(f"{name} ({workers} workers)", total=1)
            with open_engine(name, workers) as eng:
                if eng is None:
                    bars.remove_task(bar)
                    continue
                results[name] = measure(eng, tasks, samples)
            bars.advance(bar)
    base = results.get("process-pool")
    ratios = {}
    rows = []
    for name, r in results.items():
        if not r:
            continue
        if base:
            ratios[name] = {
                "throughput_vs_process_pool": r["tasks_per_s"] / base["tasks_per_s"],
                "p50_vs_process_pool": r["latency"]["p50_ms"] / base["latency"]["p50_ms"],
            }
        rows.append({"engine": name, "tasks_per_s": r["tasks_per_s"], **r["latency"],
                     "x_ppe": ratios.get(name, {}).get("throughput_vs_process_pool")})
        if "batch_api" in r:
            rate = r["batch_api"]["tasks_per_s"]
            rows.append({"engine": f"{name} batch_run", "tasks_per_s": rate,
                         "x_ppe": ratio(rate, base["tasks_per_s"] if base else None)})
    for row in rows:  # the peers as Fabric's multiple: > 1 means Fabric is ahead
        row["fabric_x"] = ratio(results["fabric"]["tasks_per_s"], row["tasks_per_s"]) \
            if results.get("fabric") else None
    columns = [("engine", "engine", "{}"), ("tasks_per_s", "tasks/s", "{:,.0f}"),
               ("p50_ms", "p50 ms", "{:.3f}"), ("p90_ms", "p90 ms", "{:.3f}"),
               ("p99_ms", "p99 ms", "{:.3f}"), ("x_ppe", "tasks/s x PPE", "{:.2f}"),
               ("fabric_x", "Fabric's tasks/s x this", "{:.2f}")]
    notes = [f"{tasks:,} no-ops submitted at once, then every result; {samples} sequential "
             "round trips for the latency columns; batch_run = one Submit of all tasks"]
    return write_report("noop", {"workers": workers, "tasks": tasks, "samples": samples,
                                  "results": results, "ratios": ratios},
                         f"No-op throughput and round trip, {workers} workers", columns, rows,
                         notes, lambda p: plot(results, p), out)
