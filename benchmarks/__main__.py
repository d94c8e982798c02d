"""python -m benchmarks SCENARIO [options]   (or: fabric bench SCENARIO [options])"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Sequence

from benchmarks.common import RESULTS

# Scenarios with `add_arguments(parser)` and `run(args) -> exit code`, in help order.
SCENARIOS = {
    "latency": ("benchmarks.latency", "warm round trip p50/p90/p99 through one endpoint, "
                                      "per-hop breakdown with --trace"),
    "durations": ("benchmarks.durations", "task duration sweep (0-100 ms): throughput and "
                                          "efficiency vs peers"),
    "sizes": ("benchmarks.sizes", "argument/result size sweep (1 KB-100 MB): round trip and "
                                  "MB/s vs peers"),
    "batching": ("benchmarks.batching", "client batch size and endpoint prefetch sweeps: "
                                        "throughput vs peers"),
    "workers": ("benchmarks.workers", "workers per endpoint x endpoints: throughput vs peers "
                                      "with the same total workers"),
    "routing": ("benchmarks.routing", "routing policies on real endpoints of different "
                                      "speeds: makespan per policy"),
    "policies": ("benchmarks.policies", "routing policies in the simulator (makespan / lower "
                                        "bound) and decision time per task"),
    "scale": ("benchmarks.scale", "one hub, 1 to 1,000 simulated endpoint streams: dispatch "
                                  "rate, hub CPU and memory"),
    "bigbatch": ("benchmarks.bigbatch", "200,000 no-ops in one batch_run: time to the last "
                                        "ack and result, hub peak RSS"),
    "engines": ("benchmarks.engines", "no-op throughput and latency through the fabric on each "
                                      "engine (local, parsl, dask) vs that engine alone"),
}


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    noop = sub.add_parser("noop", help="no-op throughput and round-trip latency vs peers")
    noop.add_argument("--workers", type=int, default=2)
    noop.add_argument("--tasks", type=int, default=20_000)
    noop.add_argument("--samples", type=int, default=500, help="sequential round trips")
    noop.add_argument("--peers", default="process-pool,fabric,dask,parsl,ray",
                      help="comma-separated: process-pool, fabric, dask, parsl, ray")
    noop.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    chaos = sub.add_parser("chaos", help="faults mid-run (kills, stalls): nothing lost, "
                                          "nothing twice, time to requeue")
    chaos.add_argument("--tasks", type=int, default=20_000, help="tasks per scenario")
    chaos.add_argument("--workers", type=int, default=2, help="workers per endpoint")
    chaos.add_argument("--task-ms", type=float, default=1.0,
                       help="each task sleeps this long, so faults land mid-run")
    chaos.add_argument("--scenario", default="endpoint-kill,hub-kill,stall,worker-kill",
                       help="comma-separated: endpoint-kill, hub-kill, stall, worker-kill")
    for name, (module, text) in SCENARIOS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=text))
    args = parser.parse_args(argv)
    if args.bench == "noop":
        from benchmarks.noop import main as run

        run(args.workers, args.tasks, args.samples, tuple(args.peers.split(",")), args.out)
    elif args.bench == "chaos":
        from benchmarks.chaos import main as run_chaos

        run_chaos(args.tasks, tuple(s.strip() for s in args.scenario.split(",") if s.strip()),
                  args.workers, args.task_ms)
    else:
        module = importlib.import_module(SCENARIOS[args.bench][0])
        raise SystemExit(getattr(module, "run_scenario", module.run)(args))


if __name__ == "__main__":
    main()
