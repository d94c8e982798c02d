"""Overhead of the fabric on each engine: no-op throughput and round-trip latency
through client -> hub -> endpoint -> engine -> workers, beside the same engine
used directly, same worker count, same run.

    local   Fabric's own worker pool      vs  ProcessPoolExecutor
    parsl   Fabric on Parsl HTEX (local)  vs  Parsl python_app on HTEX
    dask    Fabric on a Dask LocalCluster vs  Dask client.submit

The ratios are what to read (the machine is shared, absolute numbers wander).
Writes results/engines-<stamp>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import machine, save
from benchmarks.noop import measure
from benchmarks.peers import open_engine

ENGINES = ("local", "parsl", "dask")
DIRECT = {"local": "process-pool", "parsl": "parsl", "dask": "dask"}  # benchmarks.peers names
DIRECT_NAME = {"local": "ProcessPoolExecutor", "parsl": "Parsl HTEX", "dask": "Dask"}


def run_direct(engine: str, workers: int, tasks: int, samples: int) -> dict[str, Any] | None:
    """The engine used on its own (None, with a message, when it is not installed)."""
    with open_engine(DIRECT[engine], workers) as eng:
        return measure(eng, tasks, samples, warmup=min(200, tasks)) if eng else None


def run_fabric_on(engine: str, workers: int, tasks: int, samples: int) -> dict[str, Any] | None:
    """The same calls through client -> hub -> an endpoint whose engine is `engine`."""
    with open_engine("fabric", workers, endpoint_args=("--engine", engine)) as eng:
        return measure(eng, tasks, samples, warmup=min(200, tasks)) if eng else None


def markdown(payload: dict[str, Any]) -> str:
    lines = [f"# Fabric on each engine vs the engine alone ({payload['when']})", "",
             f"{payload['workers']} workers, {payload['tasks']} no-ops at once, "
             f"{payload['samples']} sequential round trips; {payload['machine']['cpus']} cores.", "",
             "| engine | direct tasks/s | fabric tasks/s | fabric batch_run tasks/s | "
             "throughput ratio | direct p50 ms | fabric p50 ms | p50 ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for engine, row in payload["engines"].items():
        d, f = row["direct"], row["fabric"]
        if not d or not f:
            continue
        lines.append(
            f"| {engine} (vs {DIRECT_NAME[engine]}) | {d['tasks_per_s']:.0f} | "
            f"{f['tasks_per_s']:.0f} | {f['batch_api']['tasks_per_s']:.0f} | "
            f"{row['throughput_ratio']:.2f} | {d['latency']['p50_ms']:.2f} | "
            f"{f['latency']['p50_ms']:.2f} | {row['p50_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {e: r for e, r in payload["engines"].items() if r["direct"] and r["fabric"]}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(rows))
    a.bar([i - 0.2 for i in x], [r["direct"]["tasks_per_s"] for r in rows.values()], 0.4,
          label="engine alone")
    a.bar([i + 0.2 for i in x], [r["fabric"]["tasks_per_s"] for r in rows.values()], 0.4,
          label="through the fabric")
    a.set_xticks(list(x), list(rows))
    a.set_yscale("log")
    a.set_ylabel("no-op tasks / s")
    a.legend()
    b.bar([i - 0.2 for i in x], [r["direct"]["latency"]["p50_ms"] for r in rows.values()], 0.4,
          label="engine alone")
    b.bar([i + 0.2 for i in x], [r["fabric"]["latency"]["p50_ms"] for r in rows.values()], 0.4,
          label="through the fabric")
    b.set_xticks(list(x), list(rows))
    b.set_ylabel("round trip p50 (ms)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(workers: int, tasks: int, samples: int, engines: tuple[str, ...]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for engine in engines:
        print(f"{engine}: the engine alone ({workers} workers, {tasks} no-ops)...", flush=True)
        direct = run_direct(engine, workers, tasks, samples)
        print(f"{engine}: through the fabric...", flush=True)
        fabric = run_fabric_on(engine, workers, tasks, samples)
        row: dict[str, Any] = {"direct": direct, "fabric": fabric}
        if direct and fabric:
            row["throughput_ratio"] = fabric["tasks_per_s"] / direct["tasks_per_s"]
            row["batch_throughput_ratio"] = (fabric["batch_api"]["tasks_per_s"]
                                             / direct["tasks_per_s"])
            row["p50_ratio"] = fabric["latency"]["p50_ms"] / direct["latency"]["p50_ms"]
        rows[engine] = row
    payload = {"scenario": "engines", "machine": machine(), "workers": workers, "tasks": tasks,
               "samples": samples, "engines": rows,
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path = save("engines", payload)
    md = path.with_suffix(".md")
    md.write_text(markdown(payload))
    png = str(path.with_suffix(".png"))
    plot(payload, png)
    print(markdown(payload))
    print(f"wrote {path}, {md} and {png}")
    return payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=100, help="sequential round trips")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated: local, parsl, dask")


def run(args: argparse.Namespace) -> None:
    main(args.workers, args.tasks, args.samples,
         tuple(e.strip() for e in args.engines.split(",") if e.strip()))
