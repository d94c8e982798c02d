"""One big batch: N no-ops through a single `batch_run` and one `get_batch_result`.

    python -m benchmarks bigbatch [--tasks 200000] [--workers 2] [--repeat 1]

A hub and one endpoint as real processes (LocalFabric); this process submits
every task in one call, then waits for every result. Reports the time to the
last acknowledgement (submit) and to the last result (wall), tasks/s, and the
hub's peak RSS (psutil, sampled every 0.1 s): the hub must stay bounded in
memory however many tasks one call carries.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import RESULTS, noop, write_report

COLUMNS = [("tasks", "tasks", "{:,}"), ("submit_s", "submit s", "{:.1f}"),
           ("wall_s", "wall s", "{:.1f}"), ("tasks_per_s", "tasks/s", "{:,.0f}"),
           ("hub_rss_peak_mib", "hub RSS peak MiB", "{:.0f}")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=200_000, help="tasks in the one batch_run")
    parser.add_argument("--workers", type=int, default=2, help="workers of the endpoint")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh hub")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")


def one_run(tasks: int, workers: int) -> dict[str, Any]:
    from fabric.client import Client
    from fabric.launch import LocalFabric

    with tempfile.TemporaryDirectory() as tmp, \
            LocalFabric(Path(tmp), ["solo"], workers=workers) as fab, Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        fid = c.register_function(noop)
        hub, peak, done = psutil.Process(fab.hub.pid), [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], hub.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        ids = c.batch_run(fid, [((), {})] * tasks, endpoint_id="solo")
        submit_s = time.monotonic() - t0
        results = c.get_batch_result(ids, timeout=1800)
        wall_s = time.monotonic() - t0
        done.set()
        sampler.join()
        assert len(results) == tasks and all(r is None for r in results)
        return {"tasks": tasks, "submit_s": submit_s, "wall_s": wall_s,
                "tasks_per_s": tasks / wall_s, "hub_rss_peak_mib": peak[0] / 2**20}


def run(args: argparse.Namespace) -> int:
    rows = [one_run(args.tasks, args.workers) for _ in range(args.repeat)]
    write_report("bigbatch", {"args": vars(args)}, f"{args.tasks:,} no-ops in one batch_run",
                 COLUMNS, rows, notes=["one endpoint, local engine; hub RSS sampled every 0.1 s"],
                 out=args.out)
    return 0
