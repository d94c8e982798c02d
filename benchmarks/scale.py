"""Scaling: one hub, many endpoint streams. Dispatch rate, hub CPU and memory vs endpoints.

    python -m benchmarks scale [--endpoints 1,10,100,1000] [--workers 10] [--tasks 30000]

For each endpoint count N, a fresh hub (a real `fabric hub` process on a
temporary store) and one simulator process (`fabric endpoint simulate --count
N`: N simulated endpoints on the real protocol, one stream and one TCP
connection each, no worker processes, each task a no-op that takes --runtime
seconds on one of --workers slots). Once all N are online:

- idle: hub CPU and RSS for --idle seconds with nothing to do but heartbeats;
- ListEndpoints: how long one call takes with N endpoints;
- run: --tasks no-op tasks submitted by this process through AsyncClient in
  batches of --batch, --in-flight batches at a time, no endpoint named (the
  hub's default policy, smallest ETA, or --policy spreads them over all N). The rate is tasks/s
  from the first Submit to the last result; CPU of the hub, the simulator and
  this process (the client) over the same window, from psutil; hub RSS
  sampled every --sample seconds.

On a small machine the three processes share the cores: each row names the
busiest process and how busy the whole machine was (other users included),
so a rate limited by the client or the simulator is not read as the hub's.
Writes results/scale-<stamp>.json (every sample), .md (the table) and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.common import machine, noop, save

console = Console(width=None if sys.stdout.isatty() else 160)
SATURATED = 85.0  # % of one core: that process is (close to) the bottleneck


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoints", default="1,10,100,1000",
                        help="comma-separated endpoint counts")
    parser.add_argument("--workers", type=int, default=10, help="simulated workers per endpoint")
    parser.add_argument("--runtime", type=float, default=0.0, help="seconds each task takes")
    parser.add_argument("--prefetch", type=int, default=0,
                        help="tasks each endpoint holds beyond its free slots")
    parser.add_argument("--min-grant", type=int, default=1,
                        help="grant credits once this many are wanted (the link's "
                             "min_grant; 1: what real endpoints do)")
    parser.add_argument("--tasks", type=int, default=30_000, help="tasks per endpoint count")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per batch_run")
    parser.add_argument("--policy", default="",
                        help="routing policy for the no-ops (default: the hub's, smallest-eta)")
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight at once")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="hub heartbeat period (s)")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds to measure the idle hub with N streams")
    parser.add_argument("--channels", type=int, default=0,
                        help="simulator: share K connections (0: one per endpoint)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per endpoint count")
    parser.add_argument("--sample", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--quiet", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for other "
                             "processes to use under 30%% of one core (shared machines)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for one batch's results")


# ---------------------------------------------------------------- measuring
@dataclass
class Point:
    """One run at one endpoint count."""

    endpoints: int
    repeat: int = 0
    connect_s: float = 0.0  # simulator started -> all online at the hub
    list_endpoints_ms: float = 0.0
    idle_hub_cpu: float = 0.0  # % of one core, N streams connected, no tasks
    idle_hub_rss_mb: float = 0.0
    idle_sim_cpu: float = 0.0
    tasks: int = 0
    seconds: float = 0.0
    tasks_per_s: float = 0.0
    hub_cpu: float = 0.0  # % of one core over the run, all threads
    hub_loop_cpu: float = 0.0  # the hub's main thread (its event loop) alone
    hub_threads_cpu: dict[str, float] = field(default_factory=dict)  # % of one core per thread
    sim_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0  # % of all cores, everyone on the machine
    others_cpu: float = 0.0  # % of one core used by processes not in this run
    hub_rss_mb: float = 0.0  # at the end of the run
    hub_rss_peak_mb: float = 0.0
    sim_rss_mb: float = 0.0
    busiest: str = ""
    waited_quiet_s: float = 0.0
    # From the simulator, over the run: messages each way and what they carried.
    hub_messages: int = 0  # hub -> endpoints (task batches, acks, heartbeats)
    tasks_per_hub_message: float = 0.0
    tasks_per_task_message: float = 0.0  # only the hub's messages that carry tasks
    ack_only_messages: int = 0  # hub messages that carry nothing but acks
    endpoint_messages: int = 0  # endpoints -> hub (results, credits, heartbeats)
    results_per_endpoint_message: float = 0.0
    failed: int = 0
    unpushed: int = 0  # succeeded at the hub, result never reached the client
    counters: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Meter:
    """CPU (% of one core) and RSS of named processes: over a window from cpu_times,
    and as a time series sampled by a thread."""

    def __init__(self, procs: dict[str, psutil.Process], every: float) -> None:
        self.procs = procs
        self.every = every
        self.samples: list[dict[str, float]] = []
        self.progress: dict[str, float] = {"done": 0}  # set by the driver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cpu_now(self) -> dict[str, float]:
        out = {n: _cpu_s(p) for n, p in self.procs.items()}
        out["hub_loop"] = _main_thread_cpu_s(self.procs["hub"])
        out["_machine"] = _machine_busy_s()
        out["_wall"] = time.perf_counter()
        return out

    @staticmethod
    def percent(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        wall = b["_wall"] - a["_wall"]
        out = {n: 100 * (b[n] - a[n]) / wall for n in a if not n.startswith("_")}
        out["machine"] = 100 * (b["_machine"] - a["_machine"]) / wall / (os.cpu_count() or 1)
        out["others"] = max(0.0, 100 * (b["_machine"] - a["_machine"]) / wall
                            - sum(v for k, v in out.items() if k not in ("machine", "hub_loop")))
        return out

    def rss_mb(self, name: str) -> float:
        try:
            return self.procs[name].memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def start(self, phase: str) -> None:
        self.phase = phase
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        t0 = last = self.cpu_now()
        while not self._stop.wait(self.every):
            now = self.cpu_now()
            row: dict[str, Any] = {"phase": self.phase, "t": now["_wall"] - t0["_wall"],
                                   "done": self.progress["done"]}
            for name, pct in self.percent(last, now).items():
                row[f"{name}_cpu"] = round(pct, 1)
            for name in self.procs:
                row[f"{name}_rss_mb"] = round(self.rss_mb(name), 1)
            self.samples.append(row)
            last = now


def traffic(sim: Any) -> dict[str, int] | None:
    """The simulator's message counts so far (it prints them on SIGUSR1)."""
    since = len(sim.lines)
    sim.signal(signal.SIGUSR1)
    try:
        return json.loads(sim.wait_for(r"^traffic (\{.*\})$", 10, since).group(1))
    except TimeoutError:
        return None


def wait_quiet(max_wait: float, exclude: tuple[int, ...], threshold: float = 30.0,
               quiet_for: int = 3) -> float:
    """Wait (up to `max_wait` s) until processes other than ours and `exclude` have used
    under `threshold`% of one core for `quiet_for` seconds in a row. Returns the seconds
    waited. (Someone else's benchmark can still start mid-run: see `others_cpu`.)"""
    mine = [psutil.Process(), *(psutil.Process(pid) for pid in exclude)]
    t0 = time.perf_counter()
    calm = 0
    while calm < quiet_for and time.perf_counter() - t0 < max_wait:
        a_m, a_own, w0 = _machine_busy_s(), sum(map(_cpu_s, mine)), time.perf_counter()
        time.sleep(1.0)
        wall = time.perf_counter() - w0
        others = 100 * ((_machine_busy_s() - a_m) - (sum(map(_cpu_s, mine)) - a_own)) / wall
        calm = calm + 1 if others < threshold else 0
    return time.perf_counter() - t0


def thread_cpu_s(p: psutil.Process) -> dict[str, float]:
    """CPU seconds per thread of `p`, keyed "name/tid" (names from /proc, where there)."""
    out = {}
    try:
        for t in p.threads():
            try:
                name = Path(f"/proc/{p.pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                name = "?"
            out[f"{'main' if t.id == p.pid else name}/{t.id}"] = t.user_time + t.system_time
    except psutil.Error:
        pass
    return out


def _main_thread_cpu_s(p: psutil.Process) -> float:
    """CPU seconds of the process's main thread: the hub's event loop runs there."""
    try:
        return next((t.user_time + t.system_time for t in p.threads() if t.id == p.pid), 0.0)
    except psutil.Error:
        return 0.0


def _cpu_s(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + \
        getattr(t, "steal", 0)


async def drive(address: str, tasks: int, batch: int, in_flight: int, warmup: int,
                policy: str, progress: dict[str, float], timeout: float,
                mark: Callable[[str], None]) -> tuple[float, int, int, dict[str, int]]:
    """Warm up, then `tasks` no-ops in batches, `in_flight` batches at a time; calls
    `mark("start")` and `mark("end")` around the timed part. Returns (seconds, tasks
    that did not succeed, tasks that succeeded at the hub but whose result never
    reached this client within `timeout`, hub counters)."""
    from fabric import errors
    from fabric._proto import fabric_pb2 as pb
    from fabric.client import AsyncClient

    async with AsyncClient(address, retry_timeout=120) as client:
        fid = await client.register_function(noop)
        # Every link gets the function body and the result stream is open before timing.
        ids = await client.batch_run(fid, [((), {})] * warmup, policy=policy)
        try:
            await client.wait(ids, timeout)
        except errors.TaskTimeout:
            pass  # counted below if it happens again in the timed run
        sizes = [min(batch, tasks - k) for k in range(0, tasks, batch)]
        failed = unpushed = 0
        progress["done"] = 0

        async def lane() -> None:
            nonlocal failed, unpushed
            while sizes:
                n = sizes.pop()
                ids = await client.batch_run(fid, [((), {})] * n, policy=policy)
                try:
                    results = await client.wait(ids, timeout)
                except errors.TaskTimeout:
                    # Final at the hub but never pushed to this client, or never final?
                    results = await client.status_of(ids)
                    final = sum(1 for r in results if r.state == pb.SUCCESS)
                    unpushed += final
                    failed += n - final
                    continue
                failed += sum(1 for r in results if r.state != pb.SUCCESS)
                progress["done"] += n

        mark("start")
        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        elapsed = time.perf_counter() - t0
        mark("end")
        status = await client.status()
        return elapsed, failed, unpushed, dict(status.counters)


def measure(n: int, args: argparse.Namespace, repeat: int, progress: Progress) -> Point:
    from fabric.client import Client
    from fabric.launch import spawn, start_hub, stop_all

    point = Point(n, repeat)
    bar = progress.add_task(f"{n} endpoints", total=args.tasks, phase="hub")
    with tempfile.TemporaryDirectory(prefix="fabric-scale-") as tmp:
        hub, address = start_hub(Path(tmp) / "hub.db", "--heartbeat", str(args.heartbeat),
                                 env={"FABRIC_HOME": tmp})
        sim = None
        try:
            progress.update(bar, phase="connecting")
            t0 = time.perf_counter()
            sim = spawn("simulator", "endpoint", "simulate", "--hub", address, "--count", str(n),
                        "--workers", str(args.workers), "--runtime", str(args.runtime),
                        "--prefetch", str(args.prefetch), "--channels", str(args.channels),
                        "--min-grant", str(args.min_grant),
                        "--connect-timeout", str(60 + n / 10), env={"FABRIC_HOME": tmp})
            sim.wait_for("simulated endpoints connected", 90 + n / 10)
            with Client(address) as client:
                client.wait_for_endpoints(n, timeout=60 + n / 10)
                point.connect_s = time.perf_counter() - t0
                lists = []
                for _ in range(5):
                    t = time.perf_counter()
                    client.endpoints()
                    lists.append(time.perf_counter() - t)
                point.list_endpoints_ms = 1000 * statistics.median(lists)
            meter = Meter({"hub": psutil.Process(hub.pid), "sim": psutil.Process(sim.pid),
                           "client": psutil.Process()}, args.sample)
            progress.update(bar, phase="idle")
            meter.start("idle")
            a = meter.cpu_now()
            time.sleep(args.idle)
            idle = meter.percent(a, meter.cpu_now())
            meter.stop()
            point.idle_hub_cpu, point.idle_sim_cpu = idle["hub"], idle["sim"]
            point.idle_hub_rss_mb = meter.rss_mb("hub")

            progress.update(bar, phase="quiet?")
            point.waited_quiet_s = wait_quiet(args.quiet, exclude=(hub.pid, sim.pid))
            progress.update(bar, phase="run")
            meter.start("run")
            done = threading.Event()
            marks: dict[str, Any] = {}

            def mark(at: str) -> None:
                """Snapshots at the edges of the timed part (not the warm-up)."""
                if at == "start":
                    marks["traffic_a"] = traffic(sim)
                    marks["a"], marks["threads_a"] = meter.cpu_now(), thread_cpu_s(hub_proc)
                else:
                    marks["b"], marks["threads_b"] = meter.cpu_now(), thread_cpu_s(hub_proc)
                    marks["traffic_b"] = traffic(sim)

            def show() -> None:
                while not done.wait(0.1):
                    progress.update(bar, completed=meter.progress["done"])

            shower = threading.Thread(target=show, daemon=True)
            shower.start()
            hub_proc = meter.procs["hub"]
            from fabric.loop import run as run_loop

            try:
                seconds, failed, unpushed, counters = run_loop(drive(
                    address, args.tasks, args.batch, args.in_flight,
                    warmup=max(2000, 2 * n * max(1, args.workers // 10)), policy=args.policy,
                    progress=meter.progress, timeout=args.timeout, mark=mark))
            finally:
                done.set()
                shower.join()
                meter.stop()
            a, b = marks["a"], marks["b"]
            threads_a, threads_b = marks["threads_a"], marks["threads_b"]
            run = meter.percent(a, b)
            before, after = marks["traffic_a"], marks["traffic_b"]
            if before and after:
                d = {k: after[k] - before[k] for k in after}
                point.hub_messages, point.endpoint_messages = d["messages_in"], d["messages_out"]
                point.tasks_per_hub_message = d["tasks_in"] / max(1, d["messages_in"])
                point.tasks_per_task_message = d["tasks_in"] / max(1, d["task_messages"])
                point.ack_only_messages = d["ack_only_messages"]
                point.results_per_endpoint_message = d["results_out"] / max(1, d["messages_out"])
            point.tasks, point.seconds, point.failed = args.tasks, seconds, failed
            point.unpushed = unpushed
            point.tasks_per_s = args.tasks / seconds
            point.hub_cpu, point.sim_cpu, point.client_cpu = run["hub"], run["sim"], run["client"]
            point.hub_loop_cpu = run["hub_loop"]
            wall = b["_wall"] - a["_wall"]
            point.hub_threads_cpu = {k: round(100 * (v - threads_a.get(k, 0.0)) / wall, 1)
                                     for k, v in threads_b.items()
                                     if v - threads_a.get(k, 0.0) > 0.005 * wall}
            point.machine_cpu, point.others_cpu = run["machine"], run["others"]
            point.hub_rss_mb, point.sim_rss_mb = meter.rss_mb("hub"), meter.rss_mb("sim")
            point.hub_rss_peak_mb = max([s["hub_rss_mb"] for s in meter.samples] +
                                        [point.hub_rss_mb, point.idle_hub_rss_mb])
            point.counters = counters
            point.samples = meter.samples
            busiest = max(("hub", "sim", "client"), key=lambda k: run[k])
            point.busiest = f"{busiest} {run[busiest]:.0f}%"
            if run[busiest] >= SATURATED:
                # A Python process's threads share one GIL: about one core is its ceiling.
                point.notes.append(f"{busiest} near one full core ({run[busiest]:.0f}%, all "
                                   "threads; they share one GIL)")
            if point.machine_cpu >= 90:
                point.notes.append(f"machine saturated ({point.machine_cpu:.0f}% of "
                                   f"{os.cpu_count()} cores, others {point.others_cpu:.0f}%)")
            if unpushed:
                point.notes.append(f"{unpushed} tasks succeeded at the hub but their results "
                                   f"never reached the waiting client ({args.timeout:.0f}s); "
                                   "the rate is not valid")
            if counters.get("links_lost") or counters.get("requeued"):
                point.notes.append(f"links lost {counters.get('links_lost')}, requeued "
                                   f"{counters.get('requeued')}")
            progress.update(bar, completed=args.tasks, phase="done")
        finally:
            stop_all([c for c in (sim,) if c is not None], timeout=30)
            hub.stop(30)
    return point


# ---------------------------------------------------------------- report
COLUMNS = [("endpoints", "endpoints", "{:,}"), ("tasks_per_s", "tasks/s", "{:,.0f}"),
           ("ratio", "x 1st", "{:.2f}"), ("hub_cpu", "hub CPU %", "{:.0f}"),
           ("hub_loop_cpu", "hub loop %", "{:.0f}"),
           ("hub_rss_mb", "hub RSS MB", "{:.0f}"), ("hub_rss_peak_mb", "peak MB", "{:.0f}"),
           ("sim_cpu", "sim CPU %", "{:.0f}"), ("client_cpu", "client CPU %", "{:.0f}"),
           ("machine_cpu", "machine %", "{:.0f}"), ("others_cpu", "others %", "{:.0f}"),
           ("idle_hub_cpu", "idle hub CPU %", "{:.1f}"),
           ("idle_hub_rss_mb", "idle RSS MB", "{:.0f}"),
           ("tasks_per_hub_message", "tasks / hub msg", "{:.1f}"),
           ("tasks_per_task_message", "tasks / task msg", "{:.1f}"),
           ("results_per_endpoint_message", "results / ep msg", "{:.1f}"),
           ("list_endpoints_ms", "ListEndpoints ms", "{:.1f}"),
           ("connect_s", "connect s", "{:.1f}"),
           ("busiest", "busiest", "{}")]


CONSOLE = {"endpoints", "tasks_per_s", "ratio", "hub_cpu", "hub_loop_cpu", "hub_rss_peak_mb",
           "sim_cpu", "client_cpu", "others_cpu", "tasks_per_task_message", "list_endpoints_ms"}


def rows(points: list[Point]) -> list[dict[str, Any]]:
    base = points[0].tasks_per_s if points else 0.0
    out = []
    for p in points:
        d = asdict(p)
        d["ratio"] = p.tasks_per_s / base if base else float("nan")
        out.append(d)
    return out


def markdown(points: list[Point], payload: dict[str, Any]) -> str:
    a = payload["args"]
    lines = [f"# Scale: one hub, N simulated endpoints x {a['workers']} workers, "
             f"{a['tasks']:,} no-op tasks ({a['batch']} per batch, {a['in_flight']} in flight, "
             f"policy {a.get('policy') or 'smallest-eta (default)'}), "
             f"runtime {a['runtime']} s, heartbeat {a['heartbeat']} s", "",
             f"{payload['when']}, {payload['machine']['cpus']} CPUs, Python "
             f"{payload['machine']['python']}, grpcio {payload['machine']['versions']['grpcio']}",
             "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for d in rows(points):
        lines.append("| " + " | ".join(_cell(d[k], f) for k, _, f in COLUMNS) + " |")
    lines += ["", "CPU in % of one core over the run (client = this benchmark process); hub "
              "loop = the hub's main thread (its event loop; the rest is its SQLite writer "
              "and gRPC poller threads, all under one GIL); machine = all cores, everyone; "
              "others = processes not in this run. x 1st = tasks/s over the first row's. "
              f"idle = N streams connected, no tasks ({a['idle']} s). Messages as the "
              "simulator counted them during the run: tasks / hub msg over every hub -> "
              "endpoint message (acks and heartbeats included), tasks / task msg over "
              "those that carried tasks, results / ep msg over every endpoint -> hub message.",
              ""]
    for p in points:
        for note in p.notes:
            lines.append(f"- {p.endpoints} endpoints (run {p.repeat}): {note}")
    return "\n".join(lines) + "\n"


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.endpoints for p in points]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    a.plot(xs, [p.tasks_per_s for p in points], "o-", color="tab:blue")
    if points:
        a.axhline(0.8 * points[0].tasks_per_s, ls="--", color="grey", label="0.8 x first")
        a.legend()
    a.set_ylabel("no-op tasks / s (end to end)")
    a.set_title("dispatch rate")
    for name, color in (("hub_cpu", "tab:red"), ("hub_loop_cpu", "tab:brown"),
                        ("sim_cpu", "tab:green"),
                        ("client_cpu", "tab:purple"), ("idle_hub_cpu", "tab:orange")):
        b.plot(xs, [getattr(p, name) for p in points], "o-", color=color,
               label=name.replace("_cpu", "").replace("_", " "))
    b.axhline(100, ls=":", color="grey")
    b.set_ylabel("CPU (% of one core)")
    b.set_title("CPU per process during the run")
    b.legend(fontsize=8)
    c.plot(xs, [p.hub_rss_peak_mb for p in points], "o-", color="tab:red", label="hub peak")
    c.plot(xs, [p.idle_hub_rss_mb for p in points], "o--", color="tab:orange", label="hub idle")
    c.plot(xs, [p.sim_rss_mb for p in points], "o-", color="tab:green", label="simulator")
    c.axhline(500, ls=":", color="grey", label="500 MB")
    c.set_ylabel("RSS (MB)")
    c.set_title("memory")
    c.legend(fontsize=8)
    for ax in (a, b, c):
        ax.set_xscale("log")
        ax.set_xlabel("endpoint streams")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    counts = [int(x) for x in str(args.endpoints).split(",") if x.strip()]
    from fabric.endpoint.simulated import raise_fd_limit

    raise_fd_limit(max(counts))  # the hub inherits it
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the hub and the simulator stop too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    points: list[Point] = []
    console.rule(f"scale: {', '.join(map(str, counts))} endpoints x {args.workers} workers, "
                 f"{args.tasks:,} tasks each, {args.policy or 'default policy'}")
    with Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[phase]:<10}"), TimeElapsedColumn(),
                  console=console) as progress:
        for n in counts:
            for r in range(args.repeat):
                p = measure(n, args, r, progress)
                points.append(p)
                progress.console.log(
                    f"{n:>5} endpoints: {p.tasks_per_s:,.0f} tasks/s, hub {p.hub_cpu:.0f}% CPU "
                    f"{p.hub_rss_peak_mb:.0f} MB, sim {p.sim_cpu:.0f}%, client "
                    f"{p.client_cpu:.0f}%, machine {p.machine_cpu:.0f}%"
                    + (f" [red]{p.failed} failed" if p.failed else "")
                    + (f" [red]{p.unpushed} results never pushed" if p.unpushed else ""))
    best = _best(points)
    payload = {"scenario": "scale", "machine": machine(), "args": vars(args),
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "points": [asdict(p) for p in points]}
    if len(best) >= 2:
        first, last = best[0], best[-1]
        payload["ratio_last_to_first"] = last.tasks_per_s / first.tasks_per_s
        payload["hub_rss_peak_mb_at_last"] = last.hub_rss_peak_mb
    path = save("scale", payload)
    md, png = path.with_suffix(".md"), path.with_suffix(".png")
    md.write_text(markdown(points, payload))
    plot(best, png)
    table = Table(title="scale (all columns in the .md)")
    shown = [c for c in COLUMNS if c[0] in CONSOLE]
    for _, header, _ in shown:
        table.add_column(header, justify="left" if header == "busiest" else "right")
    for d in rows(points):
        table.add_row(*(_cell(d[k], f) for k, _, f in shown))
    console.print(table)
    for p in points:
        for note in p.notes:
            console.print(f"  {p.endpoints} endpoints (run {p.repeat}): {note}")
    if len(best) >= 2:
        console.print(f"rate({best[-1].endpoints}) / rate({best[0].endpoints}) = "
                      f"[bold]{payload['ratio_last_to_first']:.2f}[/]; hub RSS peak at "
                      f"{best[-1].endpoints} endpoints: [bold]{best[-1].hub_rss_peak_mb:.0f} MB")
    console.print(f"\nwrote {path}, {md} and {png}")
    return 1 if any(p.failed or p.unpushed for p in points) else 0


def _best(points: list[Point]) -> list[Point]:
    """The median run per endpoint count (the lower of two), in count order (for the plot
    and the ratio)."""
    by: dict[int, list[Point]] = {}
    for p in points:
        by.setdefault(p.endpoints, []).append(p)
    out = []
    for n, ps in by.items():
        ps = sorted(ps, key=lambda p: p.tasks_per_s)
        out.append(ps[(len(ps) - 1) // 2])
    return out
