"""Executor: a `concurrent.futures.Executor` that runs calls on Fabric endpoints.

`submit()` returns at once: the call is pickled on the caller's thread and
queued; the client's loop thread sends queued calls in batches and resolves
futures as results stream back. Finished futures are forgotten at once, so a
long-running executor holds nothing for tasks it has delivered.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import concurrent.futures as cf
import itertools
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from fabric import config
from fabric._proto import fabric_pb2 as pb
from fabric.client.results import outcome
from fabric.client.sync import Client
from fabric.runtime_spec import Runtime


class _Chunk:
    """Runs `fn` over a chunk of argument tuples in one task (for map(chunksize=N))."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *arg_tuples: tuple[Any, ...]) -> list[Any]:
        return [self.fn(*args) for args in arg_tuples]


class Executor(cf.Executor):
    """Run callables on an endpoint (`endpoint_id`) or wherever `policy` routes them
    among `endpoints` (default: all), e.g. `Executor(policy="smallest-eta", endpoints=[a, b])`.
    With `runtime`, every call runs in that runtime (`Runtime(pip=[...])`).

    >>> with Executor(endpoint_id="laptop", client=Client(addr)) as ex:
    ...     print(list(ex.map(pow, range(10), [2] * 10)))
    """

    def __init__(self, endpoint_id: str | None = None, client: Client | None = None, *,
                 address: str = config.DEFAULT_HUB_ADDRESS, policy: str = "",
                 endpoints: Sequence[str] = (), gpus: int = 0, memory: int = 0,
                 deadline: float | None = None, walltime: float = 0.0,
                 max_retries: int | None = None, runtime: Runtime | None = None) -> None:
        self._owns_client = client is None
        self.client = client or Client(address)
        self.endpoint_id = endpoint_id
        self.policy = policy
        # These apply to every call submitted through this executor (see Client.run).
        self.placement = {"endpoints": tuple(endpoints), "gpus": gpus, "memory": memory,
                          "deadline": deadline, "runtime": runtime}
        self.walltime = walltime
        self.max_retries = max_retries
        self._lock = threading.Lock()
        self._futures: dict[str, cf.Future[Any]] = {}
        self._queued: list[pb.TaskSubmission] = []  # pickled on the caller's thread
        self._cancels: list[str] = []
        self._shutdown = False
        self.client._call(self._attach())

    async def _attach(self) -> None:
        aio = self.client.aio
        if aio.listener is not None:
            raise RuntimeError("this Client already serves another Executor; give each its own Client")
        aio.listener = self._on_result
        aio.on_submit_failed = self._on_submit_failed
        await aio._ensure_watch()  # results of everything we submit stream to us

    # ------------------------------------------------------------ submit
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        fid = self.client.register_function(fn)  # cached after the first call
        sub = self.client.aio.new_submission(fid, args, kwargs, self.endpoint_id, self.walltime,
                                             self.max_retries, **self.placement)
        fut: cf.Future[Any] = cf.Future()
        fut.task_id = sub.task_id  # type: ignore[attr-defined]
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._futures[sub.task_id] = fut
            self._queued.append(sub)
            first = len(self._queued) == 1
        fut.add_done_callback(self._on_future_done)
        if _TON:
            _trace(sub.task_id, 'c_submit')
        if first:  # one wake-up per burst, not per call
            self.client.call_soon(self._send_queued)
        return fut

    def _send_queued(self) -> None:  # on the loop thread
        with self._lock:
            queued, self._queued = self._queued, []
            cancels, self._cancels = self._cancels, []
            # Futures cancelled before their call left this process: the hub never hears of them.
            subs = [s for s in queued if s.task_id in self._futures]
            if len(subs) < len(queued):
                unsent = {s.task_id for s in queued} - {s.task_id for s in subs}
                cancels = [tid for tid in cancels if tid not in unsent]
        if subs:
            self.client.aio.enqueue(subs, self.policy)
        if cancels:
            self.client.aio.jobs.start(self._cancel_remote(cancels), "cancel remote calls")

    async def _cancel_remote(self, task_ids: list[str]) -> None:
        try:
            await self.client.aio.cancel(task_ids)
        except Exception:  # the futures are already cancelled locally
            pass

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like `concurrent.futures.Executor.map`; chunksize > 1 runs that many calls per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        # The deadline counts from this call, as Executor.map's does (the generator
        # below starts only at the first next()).
        end = None if timeout is None else time.monotonic() + timeout
        runner = _Chunk(fn)  # one function for all chunks: its body is registered once
        fs = [self.submit(runner, *chunk) for chunk in _chunked(zip(*iterables), chunksize)]
        return itertools.chain.from_iterable(_results_in_order(fs, end))

    # ------------------------------------------------------------ results
    def _on_result(self, r: pb.TaskResult) -> bool:  # on the loop thread
        with self._lock:
            fut = self._futures.pop(r.task_id, None)
        if fut is None:
            return False
        if _TON:
            _trace(r.task_id, 'c_setresult')
        if not fut.set_running_or_notify_cancel():
            return True  # cancelled meanwhile
        try:
            fut.set_result(outcome(r))
        except BaseException as exc:  # noqa: BLE001 - handed to the future's owner
            fut.set_exception(exc)
        return True

    def _on_submit_failed(self, task_ids: list[str], exc: BaseException) -> None:
        for tid in task_ids:
            with self._lock:
                fut = self._futures.pop(tid, None)
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(exc)

    def _on_future_done(self, fut: cf.Future[Any]) -> None:
        if not fut.cancelled():
            return
        # Move CANCELLED to CANCELLED_AND_NOTIFIED, as a pool does when it would have
        # started the call: only then do cf.wait() and as_completed() count it as done.
        fut.set_running_or_notify_cancel()
        tid = fut.task_id  # type: ignore[attr-defined]
        with self._lock:
            self._futures.pop(tid, None)
            self._cancels.append(tid)
            first = len(self._cancels) == 1 and not self._queued
        if first and not self.client._closed:
            self.client.call_soon(self._send_queued)

    # ------------------------------------------------------------ lifecycle
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            pending = list(self._futures.values())
        if cancel_futures:
            for f in pending:
                f.cancel()
        if already:
            if wait:
                cf.wait(pending)
            return
        if wait:
            self._finish(pending)
        else:  # release the client once the last result is in, without blocking the caller
            threading.Thread(target=self._finish, args=(pending,), daemon=True).start()

    def _finish(self, pending: list[cf.Future[Any]]) -> None:
        cf.wait(pending)
        self.client._call(self._detach())
        if self._owns_client:
            self.client.close()

    async def _detach(self) -> None:
        await self.client.aio._drain_outbox()
        if self.client.aio.listener == self._on_result:
            self.client.aio.listener = None
            self.client.aio.on_submit_failed = None


def _chunked(it: Iterable[tuple[Any, ...]], size: int) -> list[tuple[tuple[Any, ...], ...]]:
    it = iter(it)
    out = []
    while chunk := tuple(itertools.islice(it, size)):
        out.append(chunk)
    return out


def _results_in_order(fs: list[cf.Future[Any]], end: float | None) -> Iterator[Any]:
    """Yield results in submission order, like Executor.map, dropping references as it
    goes; `end` is the deadline (time.monotonic()), None for none."""
    fs.reverse()
    try:
        while fs:
            if end is None:
                yield fs.pop().result()
            else:
                yield fs.pop().result(end - time.monotonic())
    finally:
        for f in fs:
            f.cancel()
