"""Warm round-trip latency of one Fabric task at a time, with a per-hop breakdown.

    fabric bench latency [--samples 1000] [--workers 1] [--trace] [--quick]
    (also: python -m benchmarks.latency ...)

Starts a hub and one endpoint as real processes (LocalFabric), warms up, then
runs `samples` sequential `Executor.submit(noop).result()` calls and prints
p50/p90/p99. With --trace every process logs CLOCK_MONOTONIC timestamps per
hop (FABRIC_TRACE, see fabric/worker/trace.py) and the median time between
consecutive hops is printed, so one can see where a round trip goes. Writes
latency-<stamp>.json (every sample), .md and .png (the distribution).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, figure, finish, noop, percentiles, write_report


def run(samples: int = 1000, workers: int = 1, warmup: int = 300,
        trace_dir: str | None = None) -> dict[str, Any]:
    from fabric.client import Client, Executor
    from fabric.launch import LocalFabric

    env = {"FABRIC_TRACE": trace_dir} if trace_dir else None
    clock = time.perf_counter
    with tempfile.TemporaryDirectory(prefix="fabric-lat-") as tmp, \
            LocalFabric(tmp, ["lat"], workers=workers, env=env) as fab:
        with Client(fab.address) as client:
            client.wait_for_endpoints(1, timeout=60)
            with Executor(endpoint_id="lat", client=client) as ex:
                for _ in range(warmup):
                    ex.submit(noop).result(timeout=60)
                rtts, ids = [], []
                for _ in range(samples):
                    t = clock()
                    f = ex.submit(noop)
                    f.result(timeout=60)
                    rtts.append(clock() - t)
                    ids.append(f.task_id)  # type: ignore[attr-defined]
    return {"latency": percentiles(rtts), "task_ids": ids, "samples_s": rtts}


def breakdown(trace_dir: str, task_ids: list[str]) -> list[tuple[str, float, float]]:
    """(hop, median µs, p90 µs) between consecutive stages, in time order."""
    stages: dict[str, dict[str, float]] = defaultdict(dict)
    for f in Path(trace_dir).glob("*.trace"):
        for line in f.read_text().splitlines():
            tid, stage, t = line.split()
            stages[tid].setdefault(stage, float(t))  # first occurrence
    wanted = set(task_ids)
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    orders: dict[tuple[str, ...], int] = defaultdict(int)
    for tid, st in stages.items():
        if tid not in wanted:
            continue
        seq = sorted(st.items(), key=lambda kv: kv[1])
        orders[tuple(s for s, _ in seq)] += 1
        for (a, ta), (b, tb) in zip(seq, seq[1:]):
            gaps[(a, b)].append((tb - ta) * 1e6)
    common = max(orders, key=orders.get)  # type: ignore[arg-type]
    out = []
    for a, b in zip(common, common[1:]):
        xs = sorted(gaps[(a, b)])
        out.append((f"{a} -> {b}", statistics.median(xs), xs[int(0.9 * (len(xs) - 1))]))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--trace", action="store_true", help="per-hop breakdown (FABRIC_TRACE)")
    p.add_argument("--quick", action="store_true", help="200 samples")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")


def run_scenario(args: argparse.Namespace) -> int:
    if args.quick:
        args.samples = min(args.samples, 200)
    trace_dir = tempfile.mkdtemp(prefix="fabric-trace-") if args.trace else None
    if trace_dir:
        os.environ["FABRIC_TRACE"] = trace_dir  # this process (the client) traces too
    r = run(args.samples, args.workers, trace_dir=trace_dir)
    lat = r["latency"]
    rows = [{"hop": "round trip", "p50_us": lat["p50_ms"] * 1000, "p90_us": lat["p90_ms"] * 1000,
             "p99_us": lat["p99_ms"] * 1000}]
    if trace_dir:
        rows += [{"hop": hop, "p50_us": med, "p90_us": p90}
                 for hop, med, p90 in breakdown(trace_dir, r["task_ids"])]
    columns = [("hop", "hop", "{}"), ("p50_us", "p50 us", "{:,.0f}"),
               ("p90_us", "p90 us", "{:,.0f}"), ("p99_us", "p99 us", "{:,.0f}")]
    notes = [f"{lat['n']} sequential Executor.submit(noop).result() calls after a warm-up, "
             f"one endpoint with {args.workers} worker(s); mean {lat['mean_ms']:.3f} ms"]
    if trace_dir:
        notes.append("hops: median (p90) time between consecutive FABRIC_TRACE stamps")
    write_report("latency", {"args": vars(args), "latency": lat, "samples_s": r["samples_s"]},
                 "Warm round trip, one task at a time", columns, rows, notes,
                 lambda path: plot(r["samples_s"], path), args.out)
    return 0


def plot(samples_s: list[float], path: Path) -> None:
    fig, (a, b) = figure(2)
    ms = sorted(x * 1000 for x in samples_s)
    a.hist(ms, bins=50, color="tab:blue")
    a.set_xlabel("round trip (ms)")
    a.set_title("distribution")
    b.plot(ms, [i / len(ms) for i in range(1, len(ms) + 1)], color="tab:blue")
    b.set_xscale("log")
    b.set_xlabel("round trip (ms)")
    b.set_ylabel("fraction of calls at most")
    b.set_title("CDF")
    finish(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    add_arguments(p)
    raise SystemExit(run_scenario(p.parse_args()))


if __name__ == "__main__":
    main()
