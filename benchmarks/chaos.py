"""Chaos at scale: faults in the middle of a large run, with the books kept.

Each scenario starts a hub and two endpoints (`a`, `b`) as real processes,
submits N tasks, and injects one kind of fault when about a third of them
have run:

- endpoint-kill  SIGKILL endpoint `a` and its workers; `b` must finish the run.
- hub-kill       SIGKILL the hub, restart it on the same store and port; the
                 endpoints and the waiting client reconnect on their own.
- stall          SIGSTOP endpoint `a` until the hub declares it lost (heartbeat
                 0.2 s x 2), then SIGCONT it: it reconnects, its stale results
                 are dropped.
- worker-kill    SIGKILL one worker process after another, inside both endpoints.

Every task appends "<input> <pid>" to a ledger file before it returns, so
executions are counted outside the fabric. Reported per scenario: submitted,
completed, lost (submitted - final), results the client was handed twice with
different contents, executions and re-executions (delivery to workers is
at-least-once), time from the fault until the hub noticed and requeued (from
its counters) and until the first task the victim held completed elsewhere,
and wall time. JSON and a markdown table go to benchmarks/results/.

    python -m benchmarks chaos --tasks 20000 --scenario endpoint-kill,stall
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.common import machine, save
from fabric.testing import Ledger, mark

SCENARIOS = ("endpoint-kill", "hub-kill", "stall", "worker-kill")
FAST_HEARTBEAT = ("--heartbeat", "0.2", "--heartbeat-misses", "2")  # the default threshold, fast
FAULT_AT = 1 / 3  # inject the fault once this share of the tasks has run
FINAL_STATES = (3, 4, 5)  # SUCCESS, FAILED, CANCELLED in protos/fabric.proto
console = Console(width=None if sys.stdout.isatty() else 160)


class Deliveries:
    """Counts the results the client's result stream hands over, per task id; a task
    handed two *different* results (another execution's) is a duplicate."""

    def __init__(self, client: Any) -> None:
        self.results: dict[str, set[tuple[Any, ...]]] = {}
        self.pushes = 0

        def counting(r: Any) -> None:
            self.pushes += 1
            self.results.setdefault(r.task_id, set()).add(
                (r.state, r.value, r.endpoint_id, r.runtime_s))

        client.aio.result_observer = counting

    @property
    def distinct(self) -> int:
        return len(self.results)

    def duplicated(self) -> int:
        return sum(1 for v in self.results.values() if len(v) > 1)


@dataclass
class Outcome:
    scenario: str
    submitted: int = 0
    completed: int = 0  # final and successful
    failed: int = 0  # final with an error (e.g. WorkerDied after its retries)
    lost: int = 0  # submitted - final
    wrong_value: int = 0
    client_differs: int = 0  # results the waiting client got that differ from the hub's record
    duplicated: int = 0  # tasks the client was handed two different results for
    repushed: int = 0  # the same result pushed again (harmless; the client keeps one)
    executions: int = 0
    reexecutions: int = 0
    never_ran: int = 0  # final successes without an execution in the ledger (must be 0)
    detect_s: float | None = None  # fault -> hub counts the link lost
    requeue_s: float | None = None  # fault -> hub counts requeued tasks
    first_elsewhere_s: float | None = None  # fault -> first task the victim held done elsewhere
    recovery_s: float | None = None  # scenario-specific: reconnect / respawn
    wall_s: float = 0.0
    tasks_per_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def counters(client: Any) -> dict[str, int]:
    try:
        return dict(getattr(client.status(), "counters", {}) or {})
    except Exception:  # noqa: BLE001 - the hub may be down right now
        return {}


def watch_until(what: Callable[[], bool], timeout: float, every: float = 0.01) -> float | None:
    """Seconds until `what()` holds (polled), or None at the deadline."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if what():
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - e.g. the hub restarting
            pass
        time.sleep(every)
    return None


# ---------------------------------------------------------------- one run
class Run:
    """A fabric, a client, N tasks in flight, and the books on them."""

    def __init__(self, name: str, tasks: int, workers: int, task_s: float, tmp: Path,
                 hub_args: tuple[str, ...] = (), endpoint_args: tuple[str, ...] = ()) -> None:
        from fabric.client import Client
        from fabric.launch import LocalFabric

        self.out = Outcome(name, submitted=tasks)
        self.tasks = tasks
        self.task_s = task_s
        self.fab = LocalFabric(tmp / "fabric", ["a", "b"], workers, hub_args=hub_args,
                               endpoint_args=endpoint_args)
        self.ledger = Ledger(tmp / "runs.log")
        self.fab.start()
        self.client = Client(self.fab.address, retry_timeout=120)
        try:
            self.client.wait_for_endpoints(2, timeout=60)
        except BaseException:  # e.g. an endpoint that cannot start: leave nothing running
            self.close()
            raise
        self.books = Deliveries(self.client)
        self.results: list[Any] | None = None
        self.error: BaseException | None = None
        self.late: list[tuple[list[str], list[int]]] = []  # acknowledged during the fault

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.fab.stop()

    def submit(self) -> None:
        c = self.client
        self.fid = c.register_function(mark)
        self.t0 = time.perf_counter()
        self.inputs = list(range(self.tasks))
        self.tids = self._batch(self.inputs)
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _batch(self, inputs: list[int]) -> list[str]:
        path = str(self.ledger.path)
        return self.client.batch_run(self.fid, [((path, i, self.task_s), {}) for i in inputs])

    def submit_more(self, inputs: list[int]) -> bool:
        """Submit more tasks (during a fault); they count once the hub acknowledges them."""
        try:
            tids = self._batch(inputs)
        except Exception as exc:  # noqa: BLE001 - not acknowledged, so nothing promised
            self.out.notes.append(f"a submission of {len(inputs)} was refused: {exc!r}")
            return False
        self.late.append((tids, inputs))
        return True

    def _wait(self) -> None:
        try:
            self.results = self.client.get_batch_result(self.tids, timeout=600,
                                                        return_exceptions=True)
        except BaseException as exc:  # noqa: BLE001 - reported in the outcome
            self.error = exc

    def progress_until(self, progress: Progress, bar: Any, done: Callable[[], bool],
                       timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            progress.update(bar, completed=self.books.distinct,
                            ran=self.ledger.count())
            if done():
                return True
            time.sleep(0.05)
        return False

    def held_by(self, name: str) -> list[str]:
        """Task ids the hub believes endpoint `name` holds right now."""
        from fabric.states import TaskState

        return [t.task_id for t in self.client.tasks(limit=10_000, state=TaskState.DISPATCHED)
                if t.endpoint_name == name]

    def first_elsewhere(self, held: list[str], victim: str, since: float,
                        timeout: float = 60.0) -> float | None:
        """Seconds from `since` until one of `held` completes on another endpoint."""
        if not held:
            return None
        c = self.client
        ids = {e.name: e.endpoint_id for e in c.endpoints()}
        victim_id = ids.get(victim, "")

        found: list[float] = []

        def moved_or_settled() -> bool:
            rs = c._call(c.aio.status_of(held))
            final = [r for r in rs if r.state in FINAL_STATES]
            if any(r.endpoint_id and r.endpoint_id != victim_id for r in final):
                found.append(time.monotonic() - since)
                return True
            return len(final) == len(held)  # all of them finished on the victim after all

        watch_until(moved_or_settled, timeout, every=0.01)
        return found[0] if found else None

    def audit(self) -> Outcome:
        from fabric.client import Client

        out = self.out
        out.wall_s = time.perf_counter() - self.t0
        if self.error is not None:
            out.notes.append(f"the waiting client failed: {self.error!r}")
        tids = self.tids + [t for ts, _ in self.late for t in ts]
        inputs = self.inputs + [i for _, xs in self.late for i in xs]
        late = [t for ts, _ in self.late for t in ts]
        # What the client that waited was handed...
        got = (self.results or [None] * len(self.tids)) + (
            self.client.get_batch_result(late, timeout=300, return_exceptions=True) if late else [])
        out.tasks_per_s = len(tids) / (time.perf_counter() - self.t0)
        # ...against the hub's record, read by a fresh client (no cache of its own).
        with Client(self.fab.address) as fresh:
            final = fresh.get_batch_result(tids, return_exceptions=True)
        out.submitted = len(tids)
        out.lost = sum(type(r).__name__ in ("TaskPending", "TaskNotFound") for r in final)
        out.completed = sum(isinstance(r, int) for r in final)
        out.failed = len(final) - out.completed - out.lost
        out.wrong_value = sum(1 for i, r in zip(inputs, final) if isinstance(r, int)
                              and r != 3 * i + 1)
        out.client_differs = sum(1 for a, b in zip(got, final) if _plain(a) != _plain(b))
        kinds = Counter(type(r).__name__ for r in final if not isinstance(r, int))
        if kinds:
            out.notes.append("not successful: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
        if out.client_differs:
            sample = next((a, b) for a, b in zip(got, final) if _plain(a) != _plain(b))
            out.notes.append(f"the waiting client was handed {out.client_differs} results that "
                             f"differ from the hub's record, e.g. {sample[0]!r} vs {sample[1]!r}")
        out.duplicated = self.books.duplicated()
        out.repushed = self.books.pushes - self.books.distinct
        runs = self.ledger.by_input()
        out.executions = sum(map(len, runs.values()))
        out.reexecutions = out.executions - len(runs)
        out.never_ran = sum(1 for i, r in zip(inputs, final) if isinstance(r, int) and i not in runs)
        out.counters = counters(self.client)
        return out


def _plain(r: Any) -> Any:
    """A result as comparable data: the value, or the error's type."""
    return r if isinstance(r, int) or r is None else type(r).__name__


def _detect(run: Run, before: dict[str, int], since: float, held: list[str]) -> None:
    """Fill detect_s / requeue_s from the hub's counters (None where it has none)."""
    out = run.out
    if not before:
        out.notes.append("hub reports no counters; detect/requeue times unavailable")
        return

    def moved(key: str) -> Callable[[], bool]:
        return lambda: counters(run.client).get(key, 0) > before.get(key, 0)

    t = watch_until(moved("links_lost"), 15)
    out.detect_s = None if t is None else time.monotonic() - since
    if held:  # nothing to requeue otherwise
        t = watch_until(moved("requeued"), 15)
        out.requeue_s = None if t is None else time.monotonic() - since


# ---------------------------------------------------------------- faults
def endpoint_kill(run: Run, log: Callable[[str], None]) -> None:
    before = counters(run.client)
    held = run.held_by("a")
    since = time.monotonic()
    run.fab.kill_endpoint("a")
    log(f"SIGKILL endpoint a (held {len(held)} tasks)")
    _detect(run, before, since, held)
    run.out.first_elsewhere_s = run.first_elsewhere(held, "a", since)


def hub_kill(run: Run, log: Callable[[str], None]) -> None:
    # Another thread keeps submitting through the outage: what the hub acknowledged
    # must complete, whichever hub acknowledged it.
    chunk = max(1, run.tasks // 40)
    base = run.tasks

    def submit_through() -> None:
        for k in range(8):
            run.submit_more(list(range(base + k * chunk, base + (k + 1) * chunk)))
            time.sleep(0.1)

    submitter = threading.Thread(target=submit_through, daemon=True)
    submitter.start()
    since = time.monotonic()
    pushed = run.books.pushes
    run.fab.kill_hub()
    log(f"SIGKILL hub (another thread submits 8 x {chunk} tasks meanwhile)")
    run.fab.restart_hub()
    log(f"hub restarted on {run.fab.address} after {time.monotonic() - since:.2f}s")
    submitter.join(300)
    t = watch_until(lambda: all(e.online for e in run.client.endpoints()), 60)
    run.out.recovery_s = None if t is None else time.monotonic() - since
    t = watch_until(lambda: run.books.pushes > pushed, 60)
    run.out.first_elsewhere_s = None if t is None else time.monotonic() - since
    run.out.notes.append("recovery_s: until both endpoints reconnected; first_elsewhere_s: "
                         "until the client got a result again")


def stall(run: Run, log: Callable[[str], None]) -> None:
    before = counters(run.client)
    since = time.monotonic()
    run.fab.pause_endpoint("a")
    held = run.held_by("a")
    log(f"SIGSTOP endpoint a (held {len(held)} tasks)")
    _detect(run, before, since, held)
    run.out.first_elsewhere_s = run.first_elsewhere(held, "a", since, timeout=30)
    run.fab.resume_endpoint("a")
    resumed = time.monotonic()
    log("SIGCONT endpoint a")
    t = watch_until(lambda: {e.name: e.online for e in run.client.endpoints()}["a"], 60)
    run.out.recovery_s = t if t is None else time.monotonic() - resumed
    run.out.notes.append("recovery_s: SIGCONT until a is online again")


def worker_kill(run: Run, log: Callable[[str], None], kills: int = 6) -> None:
    respawns = []
    for k in range(kills):
        name = ("a", "b")[k % 2]
        ep = psutil.Process(run.fab.endpoints[name].pid)
        workers = ep.children()
        if not workers:
            continue
        victim = random.choice(workers)
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            continue
        log(f"SIGKILL worker {victim.pid} of endpoint {name}")

        def replaced() -> bool:
            alive = [p for p in ep.children() if p.pid != victim.pid and p.is_running()
                     and p.status() != psutil.STATUS_ZOMBIE]
            return len(alive) >= len(workers)

        t = watch_until(replaced, 30)
        if t is not None:
            respawns.append(t)
        if not run.waiter.is_alive():
            break
    if respawns:
        run.out.recovery_s = sum(respawns) / len(respawns)
    run.out.notes.append(f"{len(respawns)} workers killed; recovery_s: mean time to a "
                         f"replacement worker")


# The victim endpoint prefetches, so that it holds work when the fault comes.
PREFETCH = ("--prefetch", "32")
FAULTS: dict[str, tuple[Callable[[Run, Callable[[str], None]], None], dict[str, Any]]] = {
    "endpoint-kill": (endpoint_kill, {"endpoint_args": PREFETCH}),
    "hub-kill": (hub_kill, {"endpoint_args": PREFETCH}),
    "stall": (stall, {"hub_args": FAST_HEARTBEAT, "endpoint_args": PREFETCH}),
    "worker-kill": (worker_kill, {}),
}


def run_scenario(name: str, tasks: int, workers: int, task_s: float) -> Outcome:
    fault, kwargs = FAULTS[name]
    with tempfile.TemporaryDirectory(prefix=f"fabric-chaos-{name}-") as tmp:
        run = Run(name, tasks, workers, task_s, Path(tmp), **kwargs)
        try:
            with Progress(TextColumn(f"[bold]{name:<14}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("ran {task.fields[ran]:>7}"), TimeElapsedColumn(),
                          console=console, transient=False) as progress:
                bar = progress.add_task(name, total=tasks, ran=0)

                def log(msg: str) -> None:
                    progress.console.log(f"[yellow]{name}[/]: {msg} "
                                         f"(ran {run.ledger.count()}, "
                                         f"results {run.books.distinct})")

                run.submit()
                log(f"submitted {tasks} tasks")
                run.progress_until(progress, bar, lambda: run.ledger.count() >= tasks * FAULT_AT,
                                   timeout=300)
                fault(run, log)
                if not run.progress_until(progress, bar, lambda: not run.waiter.is_alive(),
                                          timeout=600):
                    run.out.notes.append("gave up waiting for the results after 600s")
                progress.update(bar, completed=run.books.distinct, ran=run.ledger.count())
            return run.audit()
        finally:
            run.close()


# ---------------------------------------------------------------- report
COLUMNS = [("scenario", "scenario", "{}"), ("submitted", "submitted", "{:,}"),
           ("completed", "completed", "{:,}"), ("failed", "failed", "{:,}"),
           ("lost", "lost", "{:,}"), ("duplicated", "dup results", "{:,}"),
           ("client_differs", "client diff", "{:,}"),
           ("executions", "executions", "{:,}"), ("reexecutions", "re-runs", "{:,}"),
           ("detect_s", "detect s", "{:.3f}"), ("requeue_s", "requeue s", "{:.3f}"),
           ("first_elsewhere_s", "1st elsewhere s", "{:.3f}"),
           ("recovery_s", "recovery s", "{:.3f}"), ("wall_s", "wall s", "{:.2f}"),
           ("tasks_per_s", "tasks/s", "{:,.0f}")]


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _broken(o: Outcome) -> bool:
    return bool(o.lost or o.duplicated or o.wrong_value or o.never_ran or o.client_differs)


def markdown(outcomes: list[Outcome], payload: dict[str, Any]) -> str:
    lines = [f"# Chaos: {payload['tasks']:,} tasks of {payload['task_ms']} ms per scenario, "
             f"2 endpoints x {payload['workers']} workers", "",
             f"{payload['when']}, {payload['machine']['cpus']} CPUs, Python {payload['machine']['python']}", "",
             "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for o in outcomes:
        d = asdict(o)
        lines.append("| " + " | ".join(_cell(d[k], f) for k, _, f in COLUMNS) + " |")
    lines += ["", "lost = submitted - final. dup results = tasks the client was handed two "
              "different results for. client diff = results the waiting client was handed that "
              "differ from the hub's record (read afterwards by a fresh client). re-runs = "
              "executions beyond one per task (at-least-once delivery). detect/requeue: from the fault until the hub's "
              "links_lost/requeued counters moved. 1st elsewhere: until the first task the "
              "victim held completed on another endpoint.", ""]
    for o in outcomes:
        for note in o.notes:
            lines.append(f"- {o.scenario}: {note}")
    return "\n".join(lines) + "\n"


def main(tasks: int = 20_000, scenarios: tuple[str, ...] = SCENARIOS,
         workers: int = 2, task_ms: float = 1.0) -> dict[str, Any]:
    unknown = [s for s in scenarios if s not in FAULTS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SCENARIOS)}")
    outcomes = []
    for name in scenarios:
        console.rule(f"{name}: {tasks:,} tasks")
        outcomes.append(run_scenario(name, tasks, workers, task_ms / 1000))
    payload = {"scenario": "chaos", "machine": machine(), "tasks": tasks, "workers": workers,
               "task_ms": task_ms,
               "outcomes": [asdict(o) for o in outcomes],
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    path = save("chaos", payload)
    md = path.with_suffix(".md")
    md.write_text(markdown(outcomes, payload))
    table = Table(title=f"chaos: {tasks:,} tasks per scenario")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "scenario" else "right")
    for o in outcomes:
        d = asdict(o)
        style = "red" if _broken(o) else None
        table.add_row(*(_cell(d[k], f) for k, _, f in COLUMNS), style=style)
    console.print(table)
    for o in outcomes:
        for note in o.notes:
            console.print(f"  {o.scenario}: {note}")
    console.print(f"\nwrote {path} and {md}")
    broken = [o.scenario for o in outcomes if _broken(o)]
    if broken:
        console.print(f"[bold red]promise broken (lost, duplicated or wrong results) in: "
                      f"{', '.join(broken)}")
        raise SystemExit(1)
    return payload
