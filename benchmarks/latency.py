"""Warm round-trip latency of one Fabric task at a time, with a per-hop breakdown.

    python -m benchmarks.latency [--samples 1000] [--workers 1] [--trace]

Starts a hub and one endpoint as real processes (LocalFabric), warms up, then
runs `samples` sequential `Executor.submit(noop).result()` calls and prints
p50/p90/p99. With --trace every process logs CLOCK_MONOTONIC timestamps per
hop (FABRIC_TRACE, see fabric/worker/trace.py) and the median time between
consecutive hops is printed, so one can see where a round trip goes.
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

from benchmarks.common import noop, percentiles


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
    return {"latency": percentiles(rtts), "task_ids": ids}


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


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--trace", action="store_true", help="per-hop breakdown (FABRIC_TRACE)")
    args = p.parse_args()
    trace_dir = tempfile.mkdtemp(prefix="fabric-trace-") if args.trace else None
    if trace_dir:
        os.environ["FABRIC_TRACE"] = trace_dir  # this process (the client) traces too
    r = run(args.samples, args.workers, trace_dir=trace_dir)
    lat = r["latency"]
    print(f"round trip, {lat['n']} samples: p50 {lat['p50_ms']:.3f} ms  p90 {lat['p90_ms']:.3f} ms"
          f"  p99 {lat['p99_ms']:.3f} ms  mean {lat['mean_ms']:.3f} ms")
    if trace_dir:
        total = 0.0
        print(f"\n{'hop':<34}{'p50 us':>9}{'p90 us':>9}")
        for hop, med, p90 in breakdown(trace_dir, r["task_ids"]):
            total += med
            print(f"{hop:<34}{med:>9.0f}{p90:>9.0f}")
        print(f"{'sum of medians':<34}{total:>9.0f}")


if __name__ == "__main__":
    main()
