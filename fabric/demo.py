"""`make demo`: a hub and two endpoints on this machine, functions run through them.

Starts real processes (hub on the embedded SQLite store, endpoints `alpha`
and `beta` with two workers each), runs a few functions by every route the
SDK offers, prints results and where each task went, and stops cleanly.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

from fabric.client import Client, Executor
from fabric.errors import TaskFailed
from fabric.launch import LocalFabric

console = Console()


def hypotenuse(a: float, b: float) -> float:
    return math.hypot(a, b)


def where_am_i(i: int) -> tuple[int, int]:
    import os

    return i, os.getpid()


def warm_counter() -> int:
    """Per-function state survives between calls in the same worker."""
    import fabric.worker

    state = fabric.worker.state()
    state["calls"] = state.get("calls", 0) + 1
    return state["calls"]


def divide(a: float, b: float) -> float:
    return a / b


def reverse(data: bytes) -> bytes:
    return data[::-1]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fabric-demo-") as tmp, \
            LocalFabric(tmp, ["alpha", "beta"], workers=2) as fabric:
        console.rule(f"[bold]hub at {fabric.address}, endpoints alpha and beta (2 workers each)")
        with Client(fabric.address) as c:
            c.wait_for_endpoints(2, timeout=60)

            fid = c.register_function(hypotenuse)
            tid = c.run(3, 4, function_id=fid, endpoint_id="alpha")
            console.print(f"run on alpha: hypotenuse(3, 4) = {c.get_result(tid, timeout=30)}")

            tids = c.batch_run(fid, [((i, i), {}) for i in range(1, 6)], endpoint_id="beta")
            values = c.get_batch_result(tids, timeout=30)
            console.print("batch on beta: " + ", ".join(f"{v:.3f}" for v in values))

            bad = c.run(1, 0, function_id=c.register_function(divide), endpoint_id="alpha")
            try:
                c.get_result(bad, timeout=30)
            except TaskFailed as exc:
                console.print(f"a remote exception comes back as TaskFailed: "
                              f"[red]{exc.type_name}: {exc.message}[/]")

            with Executor(client=c) as ex:  # no endpoint named: the hub's default policy (smallest ETA)
                t0 = time.perf_counter()
                squares = list(ex.map(pow, range(1000), [2] * 1000, timeout=60))
                dt = time.perf_counter() - t0
                console.print(f"Executor.map(pow, range(1000)) spread by smallest ETA: sum={sum(squares)} "
                              f"in {dt * 1000:.0f} ms")
                pids = {pid for _, pid in ex.map(where_am_i, range(40), timeout=60)}
                console.print(f"40 calls ran in {len(pids)} worker processes")
            with Executor(endpoint_id="alpha", client=c) as ex:
                counts = [ex.submit(warm_counter).result(timeout=30) for _ in range(4)]
                console.print(f"warm per-function state on alpha: calls seen = {counts}")

            # Over 1 MiB, arguments and results travel as blobs, in chunks: nothing to do.
            data = os.urandom(32 * 2**20)
            t0 = time.perf_counter()
            back = c.get_result(c.run(data, function_id=c.register_function(reverse)), timeout=60)
            assert back == data[::-1]
            console.print(f"a 32 MiB argument out and a 32 MiB result back (as blobs, in 1 MiB "
                          f"chunks): {time.perf_counter() - t0:.2f} s")

            table = Table(title="where the last tasks went")
            for col in ("task", "function", "state", "endpoint", "why"):
                table.add_column(col)
            for t in c.tasks(limit=8):
                table.add_row(t.task_id[:10], t.function_name.rsplit(".", 1)[-1],
                              t.state.name.lower(), t.endpoint_name, t.route_reason)
            console.print(table)
            table = Table(title="endpoints")
            for col in ("name", "online", "workers", "tasks done"):
                table.add_column(col)
            for e in c.endpoints():
                table.add_row(e.name, "yes" if e.online else "no",
                              str(e.capabilities.workers if e.capabilities else "-"),
                              str(e.completed))
            console.print(table)
        console.rule("[bold]stopping hub and endpoints")
    console.print("demo finished cleanly")


if __name__ == "__main__":
    main()
