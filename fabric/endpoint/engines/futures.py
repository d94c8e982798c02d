"""What the Parsl and Dask engines share: each task is one future of the engine.

The engine's own scheduler queues tasks and picks workers; this class keeps
the bookkeeping Fabric needs on top: results collected into batches for the
agent, reruns of a task whose worker died (the same per-task `max_retries`
as the local pool, then WorkerDied), cancellation, and a watcher that asks
the engine how many workers are connected, so credits follow the real
capacity as blocks come and go.

Subclasses implement `_start_engine`, `_stop_engine`, `_call` (run one task,
return its result row), `_probe` (workers connected, blocks that may still
be added) and `_is_worker_lost`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Any, Iterable

from fabric.endpoint.engines import EngineConfig, EngineContext
from fabric.endpoint.engines.base import Engine
from fabric.endpoint.pool import per_worker_cap
from fabric.errors import EngineUnavailable, FabricError
from fabric.serialize import ErrorInfo
from fabric.worker.runtime import WorkItem, WorkResult, result_from_row

log = logging.getLogger("fabric.endpoint.engines")

#: How often the watcher asks the engine how many workers it has.
WATCH_PERIOD_S = 0.25
#: Tasks handed to the engine per connected worker: enough that a worker never
#: idles while results travel back through the engine (milliseconds for Parsl and
#: Dask), few enough that long tasks spread evenly. Follows the observed runtime:
#: about TARGET_QUEUED_S of work per worker, within MIN..MAX.
TARGET_QUEUED_S = 0.05
MIN_TASKS_PER_WORKER = 2
MAX_TASKS_PER_WORKER = 32
EWMA_ALPHA = 0.1


def tasks_per_worker(ewma_runtime_s: float | None) -> int:
    return per_worker_cap(ewma_runtime_s, TARGET_QUEUED_S, MIN_TASKS_PER_WORKER,
                          MAX_TASKS_PER_WORKER, initial=MIN_TASKS_PER_WORKER,
                          one_at_a_time_s=None)


def engine_capacity(workers: int, can_grow: bool, workers_per_block: int,
                    per_worker: int = MIN_TASKS_PER_WORKER) -> int:
    """Tasks an endpoint on a scaling engine should hold.

    Enough to keep each connected worker busy; while the autoscaler may still
    add a block, one block's worth more, so the engine sees the backlog it
    scales out for (Parsl's strategy and Dask's adaptive both scale on queued
    work). With no workers and no room to grow it is 0: the hub never floods
    an endpoint whose blocks have not started."""
    return workers * per_worker + (workers_per_block if can_grow else 0)


class FutureEngine(Engine):
    def __init__(self, cfg: EngineConfig, ctx: EngineContext) -> None:
        self.config = cfg
        self.ctx = ctx
        self._bodies: dict[str, bytes] = {}
        self._tasks: dict[str, tuple[WorkItem, asyncio.Task[None]]] = {}
        self._retries: dict[str, int] = {}
        self._done: list[WorkResult] = []
        self._slots = 0  # workers connected now
        self._can_grow = False  # the autoscaler may still add a block
        self._ewma: float | None = None  # mean task runtime seen here
        self._watcher: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    async def _start_engine(self) -> None: ...

    @abc.abstractmethod
    async def _stop_engine(self) -> None: ...

    @abc.abstractmethod
    async def _call(self, item: WorkItem, body: bytes, attempt: int) -> tuple[Any, ...]:
        """Run one task on the engine; return its result row."""

    @abc.abstractmethod
    async def _probe(self) -> tuple[int, bool]:
        """(workers connected, whether the autoscaler may add a block)."""

    @abc.abstractmethod
    def _is_worker_lost(self, exc: BaseException) -> bool: ...

    @property
    def workers_per_block(self) -> int:
        return self.ctx.workers * self.config.nodes_per_block

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            await self._start_engine()
            await self._refresh()
        except BaseException as exc:
            await self.shutdown()
            if isinstance(exc, Exception) and not isinstance(exc, FabricError):
                raise EngineUnavailable(f"the {self.kind} engine could not start: "
                                        f"{exc!r}") from exc
            raise
        self._watcher = asyncio.ensure_future(self._watch())

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *([self._watcher] if self._watcher else []),
                             return_exceptions=True)
        self._tasks.clear()
        await self._stop_engine()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_PERIOD_S)
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a probe can fail while blocks come and go
                log.debug("could not ask the %s engine for its workers", self.kind, exc_info=True)

    async def _refresh(self) -> None:
        slots, can_grow = await self._probe()
        if (slots, can_grow) != (self._slots, self._can_grow):
            if slots != self._slots:
                log.info("%s engine: %d workers connected", self.kind, slots)
            self._slots, self._can_grow = slots, can_grow
            self._capacity_changed()

    # ------------------------------------------------------------ the agent's API
    def add_function(self, function_id: str, body: bytes) -> None:
        self._bodies[function_id] = body

    def submit(self, items: list[WorkItem]) -> None:
        if any(i.runtime for i in items):
            items = self._refuse_runtimes(items)
        for item in items:
            self._launch(item)

    def _refuse_runtimes(self, items: list[WorkItem]) -> list[WorkItem]:
        """Runtimes run on the local engine only, so far: a task asking for one fails
        here with the reason, rather than running in an environment it did not ask for."""
        from fabric.endpoint.runtime_pools import runtime_failure, runtime_of
        from fabric.errors import InvalidRuntime

        keep, refused = [], []
        for item in items:
            try:
                wants = item.runtime and runtime_of(item.runtime) is not None
            except InvalidRuntime:
                wants = True
            if not wants:
                keep.append(item)
                continue
            refused.append(runtime_failure(item, "EngineUnavailable", (
                f"the {self.kind} engine cannot run tasks in a runtime yet (that needs a "
                f"per-runtime worker interpreter under each {self.kind} worker); send them "
                "to an endpoint with the local engine")))
        if refused:
            self._done.extend(refused)
            asyncio.get_running_loop().call_soon(self._deliver)
        return keep

    def _launch(self, item: WorkItem) -> None:
        if self._closed:
            return
        job = asyncio.ensure_future(self._run(item))
        self._tasks[item.task_id] = (item, job)

    def cancel(self, task_ids: Iterable[str]) -> list[str]:
        """Drops the tasks' futures; a task already running on a worker may finish
        there, but its result is never reported."""
        cancelled = []
        for tid in task_ids:
            entry = self._tasks.pop(tid, None)
            if entry is not None:
                entry[1].cancel()
                self._retries.pop(tid, None)
                cancelled.append(tid)
        return cancelled

    def take_unstarted(self) -> list[WorkItem]:
        # The engine's scheduler owns its queue and cannot say for sure that a
        # task has not started; handing one back could run it twice. Everything
        # submitted finishes here (within the drain deadline).
        return []

    def capacity(self) -> int:
        return engine_capacity(self._slots, self._can_grow, self.workers_per_block,
                               tasks_per_worker(self._ewma))

    @property
    def free_slots(self) -> int:
        return max(0, self._slots - len(self._tasks))

    @property
    def queued(self) -> int:
        return max(0, len(self._tasks) - self._slots)

    @property
    def worker_count(self) -> int:
        return self._slots

    # ------------------------------------------------------------ one task
    async def _run(self, item: WorkItem) -> None:
        tid = item.task_id
        attempt = self._retries.get(tid, 0)
        try:
            row = await self._call(item, self._bodies.get(item.function_id, b""), attempt)
            result = result_from_row(row)
            rt = result.runtime_s
            self._ewma = rt if self._ewma is None else self._ewma + EWMA_ALPHA * (rt - self._ewma)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a result
            if self._is_worker_lost(exc):
                limit = self.ctx.max_retries if item.max_retries is None else item.max_retries
                if attempt < limit and tid in self._tasks:
                    log.warning("%s worker died running task %s (%s); running it again",
                                self.kind, tid, exc)
                    self._retries[tid] = attempt + 1
                    self._launch(item)
                    return
                result = WorkResult(tid, False, error=ErrorInfo(
                    "WorkerDied", f"the {self.kind} worker running the task died ({exc}); "
                    f"attempts made: {attempt + 1}", kind="worker_died"))
            else:
                info = ErrorInfo.from_exception(exc, kind="system")
                result = WorkResult(tid, False, error=ErrorInfo(
                    info.type_name, f"the {self.kind} engine could not run the task: "
                    f"{info.message}", info.traceback, info.exception, "system"))
        if self._tasks.pop(tid, None) is None:
            return  # cancelled meanwhile: no result
        self._retries.pop(tid, None)
        if not self._done:
            # Results finishing in the same loop turn go to the agent as one batch.
            asyncio.get_running_loop().call_soon(self._deliver)
        self._done.append(result)

    def _deliver(self) -> None:
        done, self._done = self._done, []
        if not done:
            return
        try:
            self.ctx.on_results(done)
        except Exception:  # noqa: BLE001 - the agent's bug must not stop the engine
            log.exception("on_results callback failed")
