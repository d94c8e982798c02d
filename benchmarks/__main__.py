"""python -m benchmarks SCENARIO [options]"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    noop = sub.add_parser("noop", help="no-op throughput and round-trip latency vs peers")
    noop.add_argument("--workers", type=int, default=2)
    noop.add_argument("--tasks", type=int, default=20_000)
    noop.add_argument("--samples", type=int, default=500, help="sequential round trips")
    noop.add_argument("--peers", default="process-pool,fabric,dask,parsl",
                      help="comma-separated: process-pool, fabric, dask, parsl")
    args = parser.parse_args()
    if args.scenario == "noop":
        from benchmarks.noop import main as run

        run(args.workers, args.tasks, args.samples, tuple(args.peers.split(",")))


if __name__ == "__main__":
    main()
