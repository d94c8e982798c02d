"""What the worker pool decides when a worker dies, overruns a walltime, or is cancelled under.

Pure: no asyncio, no processes. `fabric.endpoint.pool.WorkerPool` feeds in
what it observed (a worker's outstanding tasks, its "tasks started" counter,
its exit status, the clock) and carries out the answers: which results to
deliver, which tasks go back to the queue, whether to kill a worker.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from fabric.serialize import ErrorInfo
from fabric.worker.runtime import WorkItem, WorkResult


def describe_exit(returncode: int | None) -> str:
    """"exit code 3", "signal SIGSEGV": how a worker ended, for error messages."""
    if returncode is None:
        return "exit code unknown"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def running_index(started: int | None, done: int, outstanding: int) -> int | None:
    """Which of a worker's outstanding tasks (in the order sent) it started last, if any.

    The worker takes tasks in the order sent and bumps `started` as it takes
    each; `done` counts results received from it. Outstanding tasks before
    this index finished, but their results are still on the way (or died
    with the worker); those after it have not started."""
    if started is None:
        return None
    i = started - done - 1
    return i if 0 <= i < outstanding else None


@dataclass(slots=True)
class StartClock:
    """When a worker's latest task started, as seen by polling its counter.

    The start is the first poll that saw the counter move, so a task is never
    charged for time spent waiting, and at worst one poll period too little."""

    started: int | None = None
    since: float = 0.0

    def running_for(self, started: int, now: float) -> float:
        """Seconds the task the counter names has been running, by this clock."""
        if started != self.started:
            self.started, self.since = started, now
        return now - self.since


def overran(item: WorkItem, running_s: float) -> bool:
    return 0 < item.walltime_s < running_s


def walltime_error(item: WorkItem, pid: int) -> ErrorInfo:
    return ErrorInfo("WalltimeExceeded", f"the task ran longer than its walltime of "
                     f"{item.walltime_s:g}s; worker pid {pid} was killed", kind="walltime")


@dataclass(frozen=True, slots=True)
class Kill:
    """Why the pool killed a worker: over `task_id`, which then fails with
    `error`; with None, the task was cancelled and gets no result."""

    task_id: str
    error: ErrorInfo | None


def settle_dead_worker(items: list[WorkItem], running: int | None, kill: Kill | None, *,
                       pid: int, returncode: int | None, cancelled: set[str],
                       retries: dict[str, int], default_max_retries: int,
                       ) -> tuple[list[WorkResult], list[WorkItem]]:
    """(results to deliver, tasks to put back at the front of the queue, in order).

    `items` are the worker's outstanding tasks in the order sent. Cancelled
    tasks vanish. When the pool killed the worker (`kill`), only that task
    is settled and nobody else is charged a retry; otherwise the task that
    was running is retried up to its `max_retries` (else the pool's) and
    then fails with WorkerDied. Settled ids leave `cancelled` and `retries`.
    """
    results: list[WorkResult] = []
    requeue: list[WorkItem] = []
    for i, item in enumerate(items):
        tid = item.task_id
        if tid in cancelled:
            cancelled.discard(tid)
            retries.pop(tid, None)
            continue
        if kill is not None:
            if tid == kill.task_id:
                retries.pop(tid, None)
                if kill.error is not None:
                    results.append(WorkResult(tid, False, error=kill.error))
                continue
        elif i == running:
            tries = retries.get(tid, 0)
            limit = default_max_retries if item.max_retries is None else item.max_retries
            if tries >= limit:
                retries.pop(tid, None)
                results.append(WorkResult(tid, False, error=ErrorInfo(
                    "WorkerDied", f"worker pid {pid} died ({describe_exit(returncode)}) while "
                    f"running the task; attempts made: {tries + 1}", kind="worker_died")))
                continue
            retries[tid] = tries + 1
        requeue.append(item)
    return results, requeue
