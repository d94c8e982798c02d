"""python -m benchmarks SCENARIO [options]"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    noop = sub.add_parser("noop", help="no-op throughput and round-trip latency vs peers")
    noop.add_argument("--workers", type=int, default=2)
    noop.add_argument("--tasks", type=int, default=20_000)
    noop.add_argument("--samples", type=int, default=500, help="sequential round trips")
    noop.add_argument("--peers", default="process-pool,fabric,dask,parsl",
                      help="comma-separated: process-pool, fabric, dask, parsl")
    chaos = sub.add_parser("chaos", help="faults mid-run (kills, stalls): nothing lost, "
                                          "nothing twice, time to requeue")
    chaos.add_argument("--tasks", type=int, default=20_000, help="tasks per scenario")
    chaos.add_argument("--workers", type=int, default=2, help="workers per endpoint")
    chaos.add_argument("--task-ms", type=float, default=1.0,
                       help="each task sleeps this long, so faults land mid-run")
    chaos.add_argument("--scenario", default="endpoint-kill,hub-kill,stall,worker-kill",
                       help="comma-separated: endpoint-kill, hub-kill, stall, worker-kill")
    policies = sub.add_parser("policies", help="routing policies in the simulator (makespan / "
                                               "lower bound) and decision time per task")
    from benchmarks.policies import add_arguments

    add_arguments(policies)
    scale = sub.add_parser("scale", help="one hub, 1 to 1,000 simulated endpoint streams: "
                                         "dispatch rate, hub CPU and memory")
    from benchmarks.scale import add_arguments as add_scale_arguments

    add_scale_arguments(scale)
    engines = sub.add_parser("engines", help="no-op throughput and latency through the fabric "
                                             "on each engine vs that engine alone")
    from benchmarks.engines import add_arguments as add_engine_arguments

    add_engine_arguments(engines)
    args = parser.parse_args()
    if args.bench == "noop":
        from benchmarks.noop import main as run

        run(args.workers, args.tasks, args.samples, tuple(args.peers.split(",")))
    elif args.bench == "policies":
        from benchmarks.policies import run as run_policies

        raise SystemExit(run_policies(args))
    elif args.bench == "scale":
        from benchmarks.scale import run as run_scale

        raise SystemExit(run_scale(args))
    elif args.bench == "engines":
        from benchmarks.engines import run as run_engines

        run_engines(args)
    elif args.bench == "chaos":
        from benchmarks.chaos import main as run_chaos

        run_chaos(args.tasks, tuple(s.strip() for s in args.scenario.split(",") if s.strip()),
                  args.workers, args.task_ms)


if __name__ == "__main__":
    main()
