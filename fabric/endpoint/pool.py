"""The endpoint's pool of worker processes (asyncio, in the endpoint process).

The endpoint agent (fabric/endpoint/agent.py) calls `submit` with tasks it got
from the hub and gets every outcome back through `on_results`; it grants the
hub `capacity()` credits. Each worker is a `python -m fabric.worker`
subprocess spoken to over stdin/stdout frames (see fabric/worker/main.py),
through a `WorkerProcess` (fabric/endpoint/worker_process.py), which also
sees the worker's death the moment it exits, whoever still holds its pipes.

The pool keeps one FIFO queue and pushes tasks to the worker with the fewest
outstanding, at most `per_worker_cap` each. The cap follows observed runtime
(about 10 ms of queued work per worker and at least one task waiting, so a
worker does not idle while its next task travels from the hub): no-op tasks
travel 64 to a frame; tasks of 100 ms or more go one at a time, so they
spread evenly. When a worker dies, the
task it was running (known from a counter the worker bumps in shared memory
before each task) fails with WorkerDied or is retried; the rest go back to
the front of the queue in order; a new worker replaces it. The pool itself
never crashes.

The pool also kills workers itself: when a task runs past its walltime (a
watchdog polls the counters, only while some task has a walltime) and when
a running task is cancelled. What happens to the tasks of a dead worker is
decided in fabric/endpoint/supervision.py.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import asyncio
import heapq
import logging
import math
import os
import sys
import time
from collections import deque
from typing import Any, Callable, Iterable

from fabric.config import DEFAULT_MAX_PAYLOAD, DEFAULT_OUTPUT_TAIL_BYTES
from fabric.endpoint.engines.base import Engine
from fabric.endpoint.supervision import (Kill, describe_exit, overran, running_index,
                                         settle_dead_worker, walltime_error)
from fabric.endpoint.worker_process import WorkerProcess, kill as _kill, read_frame, spawn_worker
from fabric.serialize import ErrorInfo
from fabric.worker.main import progress_file, read_progress, worker_command, worker_env
from fabric.worker.runtime import WorkItem, WorkResult

log = logging.getLogger("fabric.endpoint.pool")

#: Work (seconds of observed runtime) to keep queued on each worker.
TARGET_QUEUED_S = 0.01  # with 0.002, 1 ms tasks ran at 0.56 efficiency; now 0.85
INITIAL_CAP = 2
ONE_AT_A_TIME_S = 0.1
MAX_CAP = 64
EWMA_ALPHA = 0.1
START_TIMEOUT_S = 60.0
#: How often the watchdog reads the counters of workers running timed tasks.
WATCHDOG_PERIOD_S = 0.05


def per_worker_cap(ewma_runtime_s: float | None, target_s: float = TARGET_QUEUED_S,
                   lo: int = 2, hi: int = MAX_CAP, initial: int = INITIAL_CAP,
                   one_at_a_time_s: float | None = ONE_AT_A_TIME_S) -> int:
    """Tasks to keep outstanding on one worker, given the mean task runtime: about
    `target_s` of work, within lo..hi (`initial` before any runtime is seen), so
    the next task is already there when one ends. Tasks of `one_at_a_time_s` or
    more go one per worker: a round trip is then under 2% of a task, and no task
    waits behind another while a worker idles. The Parsl/Dask engines use it
    too, with their own bounds."""
    if ewma_runtime_s is None:
        return initial
    if ewma_runtime_s <= 0:
        return hi
    if one_at_a_time_s is not None and ewma_runtime_s >= one_at_a_time_s:
        return 1
    return max(lo, min(hi, math.ceil(target_s / ewma_runtime_s)))


class WorkerPool(Engine):
    """The local engine. With `gpus`, worker i sees only GPU gpus[i]
    (CUDA_VISIBLE_DEVICES) and a replacement worker gets the GPU of the one it replaces."""

    kind = "local"

    def __init__(self, workers: int, on_results: Callable[[list[WorkResult]], None], *,
                 max_result_bytes: int = DEFAULT_MAX_PAYLOAD, python: str = sys.executable,
                 env: dict[str, str] | None = None, max_retries: int = 0,
                 gpus: tuple[str, ...] = (), isolated: bool = False,
                 output_tail_bytes: int = DEFAULT_OUTPUT_TAIL_BYTES) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        if gpus and len(gpus) < workers:
            raise ValueError(f"{workers} workers pinned to {len(gpus)} GPUs: one GPU per worker")
        self.workers = workers
        self._gpus = tuple(gpus)
        self._on_results = on_results
        self._max_result_bytes = max_result_bytes
        self._output_tail = output_tail_bytes  # kept of each task's output, in its result
        self._python = python
        # isolated: `env` is the workers' whole environment (a runtime's venv), without
        # this process's import path, which would mix its packages into the runtime's.
        self._env = dict(env or {}) if isolated else worker_env(env)
        self._max_retries = max_retries
        self._queue: deque[WorkItem] = deque()
        self._bodies: dict[str, bytes] = {}
        self._live: list[WorkerProcess] = []
        self._procs: set[asyncio.subprocess.Process] = set()  # every child not yet reaped
        self._progress_fds: set[int] = set()  # open progress files, closed once read
        self._retries: dict[str, int] = {}  # task_id -> reruns so far, after worker deaths
        # Cancelled while on a worker: their results are dropped when they come back.
        self._cancelled: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._ewma: float | None = None
        self._cap = INITIAL_CAP
        self._readers: set[asyncio.Task[None]] = set()
        self._spawners: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._shutdown_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every worker and wait until each says it is ready."""
        if self._started:
            return
        self._started = True
        spawned = await asyncio.gather(*(self._spawn(self._gpu_for(i)) for i in range(self.workers)),
                                       return_exceptions=True)
        for w in spawned:
            if isinstance(w, WorkerProcess):
                self._adopt(w)
        failures = [w for w in spawned if isinstance(w, BaseException)]
        if failures:
            await self.shutdown()
            raise failures[0]
        self._assign()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every worker: ask nicely, then SIGKILL after `timeout`. Idempotent.

        Tasks not finished are dropped without a result: the hub requeues
        what an endpoint held when it goes away."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._shutdown_task)

    async def __aenter__(self) -> "WorkerPool":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    async def _shutdown(self, timeout: float) -> None:
        self._closing = True
        for job in self._spawners:
            job.cancel()  # a half-started worker is killed by its own _spawn
        await asyncio.gather(*self._spawners, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        for w in self._live:
            try:
                w.send(("stop",))
                w.proc.stdin.close()
            except Exception:  # noqa: BLE001 - already dead: the kill below is enough
                pass
        procs = list(self._procs)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
        except asyncio.TimeoutError:
            pass
        stragglers = [p for p in procs if p.returncode is None]
        for p in stragglers:
            log.warning("worker pid %d did not stop within %.1fs; killing it", p.pid, timeout)
            _kill(p)
        await asyncio.gather(*(p.wait() for p in stragglers))
        for job in self._readers:
            job.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._procs.clear()
        self._live.clear()
        for fd in list(self._progress_fds):
            self._close_progress(fd)

    def _close_progress(self, fd: int) -> None:
        if fd in self._progress_fds:
            self._progress_fds.remove(fd)
            os.close(fd)

    # ------------------------------------------------------------ the agent's API
    def add_function(self, function_id: str, body: bytes) -> None:
        self._bodies[function_id] = body

    def submit(self, items: list[WorkItem]) -> None:
        """Queue tasks and hand out what workers have room for; never blocks."""
        self._queue.extend(items)
        self._assign()

    def cancel(self, task_ids: Iterable[str]) -> list[str]:
        """Cancel tasks wherever they are; returns the ids cancelled, none of which
        will ever produce a result.

        A queued task is dropped. A task on a worker that has not started is
        skipped by the worker (or, if it started meanwhile, its result is
        dropped). A running task has its worker killed (SIGKILL, without
        waiting) and replaced; that worker's other tasks are requeued at the
        front. Unknown or already cancelled ids are ignored."""
        wanted = set(task_ids) - self._cancelled
        if not wanted:
            return []
        cancelled: list[str] = []
        if self._queue:
            keep: deque[WorkItem] = deque()
            for item in self._queue:
                if item.task_id in wanted:
                    cancelled.append(item.task_id)
                else:
                    keep.append(item)
            self._queue = keep
        for w in self._live:
            if len(cancelled) == len(wanted):
                break
            hits = [tid for tid in w.outstanding if tid in wanted]
            if hits:
                self._cancel_on_worker(w, hits)
                cancelled += hits
        for tid in cancelled:
            self._retries.pop(tid, None)
        return cancelled

    def _cancel_on_worker(self, w: WorkerProcess, task_ids: list[str]) -> None:
        self._cancelled.update(task_ids)
        if not w.accepting:
            return  # dying: _worker_lost drops cancelled tasks
        running = w.running(read_progress(w.progress_fd))
        if running is not None and running.task_id in self._cancelled:
            self._kill_worker(w, Kill(running.task_id, None), "its running task was cancelled")
            return
        try:
            w.send(("cancel", task_ids))
        except Exception:  # noqa: BLE001 - its reader will see it die and settle its tasks
            pass

    def take_unstarted(self) -> list[WorkItem]:
        """Remove and return the queued tasks, for a draining endpoint to hand back.

        Tasks already sent to a worker stay and finish here: one may start at
        any moment, and handing it back could run it twice."""
        items = list(self._queue)
        self._queue.clear()
        for item in items:
            self._retries.pop(item.task_id, None)
        return items

    @property
    def free_slots(self) -> int:
        return sum(1 for w in self._live if w.accepting and not w.outstanding)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def outstanding(self) -> int:
        return len(self._queue) + sum(len(w.outstanding) for w in self._live)

    @property
    def worker_count(self) -> int:
        return sum(1 for w in self._live if w.accepting)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._live]

    @property
    def per_worker_cap(self) -> int:
        return self._cap

    def capacity(self) -> int:
        """Tasks the endpoint should hold to keep every worker busy."""
        return self.workers * self._cap

    # ------------------------------------------------------------ assignment
    def _assign(self) -> None:
        if not self._queue or not self._live or self._closing:
            return
        cap, queue = self._cap, self._queue
        # Water-fill: each task goes to the worker with the fewest outstanding.
        heap = [(len(w.outstanding), i) for i, w in enumerate(self._live)
                if len(w.outstanding) < cap and w.accepting]
        heapq.heapify(heap)
        batches: dict[int, list[WorkItem]] = {}
        while queue and heap:
            load, i = heap[0]
            batches.setdefault(i, []).append(queue.popleft())
            if load + 1 < cap:
                heapq.heapreplace(heap, (load + 1, i))
            else:
                heapq.heappop(heap)
        for i, batch in batches.items():
            self._send_tasks(self._live[i], batch)

    def _send_tasks(self, w: WorkerProcess, batch: list[WorkItem]) -> None:
        timed = False
        for item in batch:
            w.outstanding[item.task_id] = item
            if item.walltime_s:
                timed = True
        if timed and self._watchdog is None:
            # Started here, not at submit: waiting in the queue costs no walltime.
            self._watchdog = asyncio.ensure_future(self._watch_walltimes())
        missing = {item.function_id for item in batch} - w.functions
        try:
            if missing:
                bodies = [(f, self._bodies[f]) for f in missing if f in self._bodies]
                if bodies:
                    w.send(("functions", bodies))
                    w.functions.update(f for f, _ in bodies)
            w.send(("tasks", [(t.task_id, t.function_id, t.args) for t in batch]))
            if _TON:
                _trace(batch[0].task_id, 'e_to_worker')
        except Exception as exc:  # noqa: BLE001 - its reader will see it die and requeue
            log.warning("could not send tasks to worker pid %d: %r", w.pid, exc)

    # ------------------------------------------------------------ workers
    def _gpu_for(self, i: int) -> str | None:
        return self._gpus[i] if self._gpus else None

    async def _spawn(self, gpu: str | None = None) -> WorkerProcess:
        progress_fd = progress_file()
        self._progress_fds.add(progress_fd)
        env = self._env if gpu is None else {**self._env, "CUDA_VISIBLE_DEVICES": gpu}
        try:
            proc = await spawn_worker(
                worker_command(self._python, self._max_result_bytes, progress_fd,
                               self._output_tail),
                pass_fds=(progress_fd,), env=env)
        except BaseException:
            self._close_progress(progress_fd)
            raise
        self._procs.add(proc)
        try:
            msg = await asyncio.wait_for(read_frame(proc.stdout), START_TIMEOUT_S)
            if not (isinstance(msg, tuple) and msg and msg[0] == "ready"):
                raise RuntimeError(f"expected a ready message, got {msg!r:.200}")
        except BaseException as exc:
            _kill(proc)  # the child watcher reaps it
            self._close_progress(progress_fd)
            if isinstance(exc, (asyncio.CancelledError, RuntimeError)):
                raise
            raise RuntimeError(f"worker pid {proc.pid} ({self._python} -m fabric.worker) "
                               f"failed to start: {exc!r}") from exc
        return WorkerProcess(proc, progress_fd, gpu)

    def _adopt(self, w: WorkerProcess) -> None:
        self._live.append(w)
        job = asyncio.ensure_future(self._read_loop(w))
        self._readers.add(job)
        job.add_done_callback(self._readers.discard)

    async def _read_loop(self, w: WorkerProcess) -> None:
        try:
            while True:
                msg = await w.read_frame()
                if msg[0] == "results":
                    self._on_frame(w, msg[1])
                else:
                    log.warning("worker pid %d sent unknown message %r", w.pid, msg[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # EOF: the worker exited or died
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a garbled stream: this worker cannot be trusted
            log.exception("bad frame from worker pid %d; killing it", w.pid)
            _kill(w.proc)
        await self._worker_lost(w)

    def _on_frame(self, w: WorkerProcess, rows: list[tuple[Any, ...]]) -> None:
        outstanding, ewma = w.outstanding, self._ewma
        w.done += len(rows)
        if self._cancelled:
            rows = self._drop_cancelled(w, rows)
        results = []
        for task_id, ok, value, error, runtime_s, cold, output, output_cut in rows:
            outstanding.pop(task_id, None)
            ewma = runtime_s if ewma is None else ewma + EWMA_ALPHA * (runtime_s - ewma)
            results.append(WorkResult(task_id, ok, value,
                                      None if error is None else ErrorInfo(*error), runtime_s,
                                      cold, output, output_cut))
        if self._retries:
            for r in results:
                self._retries.pop(r.task_id, None)
        self._ewma = ewma
        self._cap = per_worker_cap(ewma)
        if results:
            self._deliver(results)
        self._assign()

    def _drop_cancelled(self, w: WorkerProcess, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        cancelled = self._cancelled
        kept = []
        for row in rows:
            if row[0] in cancelled:
                cancelled.discard(row[0])
                w.outstanding.pop(row[0], None)
            else:
                kept.append(row)
        return kept

    def _deliver(self, results: list[WorkResult]) -> None:
        try:
            self._on_results(results)
        except Exception:  # noqa: BLE001 - the agent's bug must not stop the pool
            log.exception("on_results callback failed")

    async def _worker_lost(self, w: WorkerProcess) -> None:
        # It stays in _live until its tasks are settled, so cancel() still finds them.
        w.accepting = False
        if self._closing:
            return  # shutdown reaps it; unfinished tasks are dropped by design
        w.abandon_stdin()
        try:
            await asyncio.wait_for(w.proc.wait(), 5.0)
        except asyncio.TimeoutError:  # closed its stdout but kept running
            _kill(w.proc)
            await w.proc.wait()
        self._procs.discard(w.proc)
        started = read_progress(w.progress_fd)
        self._close_progress(w.progress_fd)
        if w in self._live:
            self._live.remove(w)
        if self._closing:
            return
        items = list(w.outstanding.values())
        w.outstanding.clear()
        # Tasks before the running one finished, but their batched results
        # died with the worker: they run again.
        running = running_index(started, w.done, len(items))
        if w.kill is None:
            log.warning("worker pid %d died (%s) with %d task(s) outstanding, %s", w.pid,
                        describe_exit(w.proc.returncode), len(items),
                        "none of them running" if running is None
                        else f"running {items[running].task_id}")
        failed, requeue = settle_dead_worker(
            items, running, w.kill, pid=w.pid, returncode=w.proc.returncode,
            cancelled=self._cancelled, retries=self._retries,
            default_max_retries=self._max_retries)
        if failed:
            self._deliver(failed)
        self._queue.extendleft(reversed(requeue))  # at the front, in their order
        job = asyncio.ensure_future(self._replace(w.gpu))
        self._spawners.add(job)
        job.add_done_callback(self._spawners.discard)
        self._assign()

    async def _replace(self, gpu: str | None) -> None:
        delay = 0.1
        while not self._closing:
            try:
                w = await self._spawn(gpu)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep trying: the endpoint is useless without workers
                log.exception("could not start a replacement worker; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._adopt(w)
            self._assign()
            return

    # ------------------------------------------------------------ killing on purpose
    def _kill_worker(self, w: WorkerProcess, kill: Kill, why: str) -> None:
        """SIGKILL a worker now; its reader then settles its tasks and replaces it."""
        log.warning("killing worker pid %d: %s (task %s)", w.pid, why, kill.task_id)
        w.kill, w.accepting = kill, False
        _kill(w.proc)

    async def _watch_walltimes(self) -> None:
        # Runs only while a worker holds a task with a walltime, so plain tasks pay nothing.
        try:
            while not self._closing:
                now = time.monotonic()
                timed = False
                for w in self._live:
                    if not w.accepting or not any(i.walltime_s for i in w.outstanding.values()):
                        continue
                    timed = True
                    started = read_progress(w.progress_fd)
                    if started is None:
                        continue
                    running_s = w.clock.running_for(started, now)
                    item = w.running(started)
                    if item is not None and overran(item, running_s) \
                            and item.task_id not in self._cancelled:
                        self._kill_worker(w, Kill(item.task_id, walltime_error(item, w.pid)),
                                          f"ran past its walltime of {item.walltime_s:g}s")
                if not timed:
                    return  # _send_tasks starts it again
                await asyncio.sleep(WATCHDOG_PERIOD_S)
        finally:
            self._watchdog = None
