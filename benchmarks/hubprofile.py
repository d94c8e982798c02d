"""Where the hub spends its CPU under load: py-spy samples of the hub process.

    python -m benchmarks.hubprofile [--seconds 8] [--endpoints 1] [--simulated 0]

Starts a hub and endpoints as real processes (LocalFabric; with --simulated N,
one `fabric endpoint simulate` process with N endpoint streams instead), keeps
them busy with batches of no-ops from this process, and records the hub with
`py-spy record --format raw` (sampling from outside, non-blocking: the hub is
not slowed by it). The collapsed stacks are summed into the share of samples
per area (gRPC, protobuf, SQLite store, dispatch, asyncio loop, ...) and the
top functions by self time, written as JSON and markdown to
benchmarks/results/. Needs py-spy (`pip install py-spy`) and ptrace rights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, machine, noop

#: Areas, matched in order against a frame's "function (file:line)" text.
AREAS = (
    ("sqlite store", ("fabric/hub/store.py", "sqlite3")),
    ("dispatch + routing", ("fabric/hub/dispatch.py", "scheduler/", "fabric/hub/live.py")),
    ("endpoint links", ("fabric/hub/endpoint_api.py",)),
    ("client API + sessions", ("fabric/hub/client_api.py", "fabric/hub/sessions.py")),
    ("protobuf", ("google/protobuf",)),
    ("gRPC", ("grpc/", "cygrpc", "grpc_")),
    ("asyncio (Python side)", ("asyncio/events.py", "asyncio/tasks.py", "asyncio/locks.py",
                               "asyncio/futures.py", "asyncio/queues.py")),
)


def area_of(stack: list[str]) -> str:
    """The area of the innermost frame that belongs to one (self time goes there).
    `stack[0]` is py-spy's "thread (TID): NAME"; a stack with no known frame is
    time in C under that thread's outermost Python frame: for the main thread,
    the event loop itself (uvloop, and gRPC's C core called back from it)."""
    for frame in reversed(stack[1:]):
        for name, needles in AREAS:
            if any(n in frame for n in needles):
                return name
    thread = stack[0].partition(": ")[2] or stack[0]
    if thread == "MainThread":
        return "event loop, in C (uvloop, gRPC core)"
    return f"thread {thread}, in C"


def summarise(raw: str, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks ("f1;f2;f3 COUNT" per line) -> shares per area and top functions."""
    areas: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        n = int(count_text)
        stack = stack_text.split(";")
        total += n
        areas[area_of(stack)] += n
        self_time[stack[-1]] += n
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total,
            "areas": {a: share(n) for a, n in areas.most_common()},
            "top_self": [(f, share(n)) for f, n in self_time.most_common(top)]}


def drive(address: str, stop: threading.Event, batch: int, counter: list[int]) -> None:
    """Keep the hub busy: batches of no-ops, the next one submitted as the last finishes."""
    from fabric.client import Client

    with Client(address) as c:
        fid = c.register_function(noop)
        while not stop.is_set():
            ids = c.batch_run(fid, [((), {})] * batch)
            c.get_batch_result(ids, timeout=120)
            counter[0] += batch


def run(seconds: float, endpoints: int, simulated: int, workers: int, batch: int,
        rate: int) -> dict[str, Any]:
    from fabric.client import Client
    from fabric.launch import LocalFabric, spawn

    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    names = [] if simulated else [f"ep{i}" for i in range(endpoints)]
    if simulated:
        from fabric.endpoint.simulated import raise_fd_limit

        raise_fd_limit(simulated)  # the hub inherits it: one connection per endpoint
    with tempfile.TemporaryDirectory(prefix="fabric-prof-") as tmp, \
            LocalFabric(tmp, names, workers=workers) as fab:
        sim = None
        if simulated:
            sim = spawn("simulated", "endpoint", "simulate", "--hub", fab.address,
                                "--count", str(simulated), "--workers", str(workers),
                                env=fab.env)  # FABRIC_HOME: where the hub's tokens are
        try:
            with Client(fab.address) as c:
                c.wait_for_endpoints(simulated or endpoints, timeout=120)
            stop, done = threading.Event(), [0]
            driver = threading.Thread(target=drive, args=(fab.address, stop, batch, done))
            driver.start()
            time.sleep(1.0)  # warm: every link has the function, the result stream is open
            out = Path(tmp) / "hub.raw"
            before, t0 = done[0], time.monotonic()
            subprocess.run([spy, "record", "--pid", str(fab.hub.pid), "--format", "raw",
                            "--rate", str(rate), "--duration", str(int(seconds)),
                            "--threads", "--nonblocking", "--output", str(out)],
                           check=True, capture_output=True, timeout=seconds + 60)
            tasks, wall = done[0] - before, time.monotonic() - t0
            stop.set()
            driver.join(180)
            raw = out.read_text()
        finally:
            if sim is not None:
                sim.stop()
    summary = summarise(raw)
    summary.update(tasks_per_s=round(tasks / wall), seconds=seconds)
    return summary


def markdown(r: dict[str, Any], args: dict[str, Any]) -> str:
    what = (f"{args['simulated']} simulated endpoints" if args["simulated"]
            else f"{args['endpoints']} endpoint(s)")
    lines = [f"# Hub profile: {what} x {args['workers']} workers, no-op batches of {args['batch']}",
             "", f"{r['when']}, {r['machine']['cpus']} CPUs, py-spy at {args['rate']} Hz for "
             f"{args['seconds']} s: {r['samples']:,} samples while the hub ran "
             f"{r['tasks_per_s']:,} tasks/s (the profiler is outside the process).", "",
             "| area | % of hub samples |", "|---|---|"]
    lines += [f"| {a} | {p} |" for a, p in r["areas"].items()]
    lines += ["", "| function (self time) | % |", "|---|---|"]
    lines += [f"| `{f}` | {p} |" for f, p in r["top_self"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hubprofile")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--endpoints", type=int, default=1, help="real endpoints")
    p.add_argument("--simulated", type=int, default=0,
                   help="use N simulated endpoints instead of real ones")
    p.add_argument("--workers", type=int, default=2, help="workers per endpoint")
    p.add_argument("--batch", type=int, default=2000, help="no-ops per batch_run")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = p.parse_args()
    r = run(args.seconds, args.endpoints, args.simulated, args.workers, args.batch, args.rate)
    r.update(when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), machine=machine(),
             args=vars(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"hubprofile-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2))
    md = markdown(r, vars(args))
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
