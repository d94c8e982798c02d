"""AsyncClient: the asyncio SDK. `Client` and `Executor` are built on it.

Results are pushed, not polled: the client opens one Watch stream per
session the first time it waits for anything, and every task submitted
afterwards is tagged with the session so its result arrives on that stream.
If the stream breaks (hub restart), it is reopened with the ids still pending.

Submissions are coalesced: while one Submit is in flight, new tasks gather
and go out together in the next one. They travel on one SubmitStream per
client (falling back to unary Submit calls while it is down). Task ids are
chosen here, so a retried Submit is idempotent at the hub.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import asyncio
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

import grpc

from fabric import config, credentials, errors
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.client.payloads import Payloads, fit
from fabric.client.results import is_final, outcome
from fabric.jobs import Jobs
from fabric.models import EndpointInfo, HubStatus, TaskInfo
from fabric.runtime_spec import Runtime
from fabric.serialize import dumps_args, dumps_function, function_name
from fabric.states import TaskState
from fabric.wire import from_kind, from_rpc_error, is_backpressure, is_storage_full, is_transient

log = logging.getLogger("fabric.client")
ResultListener = Callable[[pb.TaskResult], bool]

SUBMIT_BATCH = 2048
CACHE_RESULTS = 10_000
#: Task ids per Subscribe, GetResults, Cancel and Watch call: any number of ids is
#: sent in pages of this many, well under the hub's limit (config.MAX_IDS_PER_CALL),
#: so that no single call holds the hub's loop for long.
IDS_PER_CALL = 10_000


def pages(ids: Sequence[str], size: int = IDS_PER_CALL) -> list[list[str]]:
    """`ids` in order, cut into lists of at most `size`."""
    ids = list(ids)
    return [ids[i:i + size] for i in range(0, len(ids), size)]


class AsyncClient:
    def __init__(self, address: str = config.DEFAULT_HUB_ADDRESS, *,
                 retry_timeout: float = 30.0, policy: str = "", token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.address = address
        # Sent with every call; see fabric.credentials for where it is looked up.
        self._metadata = credentials.metadata(credentials.client_token(address, token))
        self.tls_ca = tls_ca
        self.retry_timeout = retry_timeout
        self.policy = policy
        self.session_id = "s-" + uuid.uuid4().hex
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ClientServiceStub | None = None
        # fn -> {runtime digest ("" for none): function id}
        self._fn_ids: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
        # Result push.
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_ready: asyncio.Future[None] | None = None
        self._watched: set[str] = set()  # ids whose results this session's stream will carry
        # Ids whose Submit is not acknowledged yet. A hub that restarted may not know
        # them until the retried Submit lands: "unknown task" for these is not final.
        self._submitting: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[pb.TaskResult]]] = {}
        self._results: OrderedDict[str, pb.TaskResult] = OrderedDict()  # recent, uncollected
        self.listener: ResultListener | None = None  # Executor's hook; True = consumed
        self.on_submit_failed: Callable[[list[str], BaseException], None] | None = None
        # Sees every result the client accepts as a task's outcome (once per task,
        # after duplicates are dropped): for audits, tests and the chaos benchmark.
        self.result_observer: Callable[[pb.TaskResult], None] | None = None
        # Sees every result the hub pushes, before the client drops repeats: for
        # audits that must see what a dedup here would hide (a second, different result).
        self.push_observer: Callable[[pb.TaskResult], None] | None = None
        # Submission coalescing.
        self._outbox: list[tuple[pb.TaskSubmission, str, asyncio.Future[None] | None]] = []
        self._flushing = False
        # Submissions go over one long-lived stream (a unary call costs ~3x a stream
        # message); None until the first, and again after it broke.
        self._submit_stream: Any = None
        self._stream_supported = True
        # Arguments too big for a message wait there until uploaded; big values are
        # fetched through it.
        self.payloads = Payloads(lambda: self.stub, self._metadata, retry_timeout)
        # Results whose big values are being fetched, by task id (not delivered yet).
        self._fetching: dict[str, asyncio.Task[None]] = {}
        # Every background job of this client (the submission flush, big-value fetches,
        # re-subscriptions, the Executor's remote cancels): stopped and awaited by close().
        self.jobs = Jobs("client")
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ plumbing
    @property
    def stub(self) -> pb_grpc.ClientServiceStub:
        if self._closed:
            raise errors.FabricError("client is closed")
        if self._stub is None:
            self._channel = credentials.open_channel(self.address, tls_ca=self.tls_ca)
            self._stub = pb_grpc.ClientServiceStub(self._channel)
        return self._stub

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """One unary call, retried while the hub is unreachable (every call is idempotent),
        and while its disk is full: for up to `retry_timeout` each (space may be freed
        meanwhile; a batch slows down rather than fails), then StorageFull."""
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        said = False
        while True:
            try:
                return await getattr(self.stub, method)(request, timeout=timeout,
                                                        metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                full = is_storage_full(exc)
                if is_backpressure(exc):
                    # The hub is up and asks us to wait (our queue is full): not an error.
                    deadline = time.monotonic() + self.retry_timeout
                elif not (is_transient(exc) or full) or time.monotonic() + delay > deadline:
                    raise from_rpc_error(exc, self.address) from None
                if full and not said:
                    log.warning("%s: the hub's disk is full; retrying for up to %.0fs",
                                method, self.retry_timeout)
                    said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        if self._closed:
            return
        if self._outbox or self._flushing:
            try:
                await self._drain_outbox()
            except errors.FabricError:
                pass
        self._closed = True
        await self.jobs.stop()
        if self._submit_stream is not None:
            self._submit_stream.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(errors.FabricError("client closed while waiting"))
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------ functions
    async def register_function(self, fn: Callable[..., Any], name: str | None = None, *,
                                runtime: Runtime | None = None) -> str:
        """Store `fn` at the hub once; returns its id (the same id for the same code and
        runtime). Its calls run in `runtime` unless they name their own."""
        key = _runtime_key(runtime)
        try:
            cached = self._fn_ids.get(fn, {}).get(key)
        except TypeError:  # not weak-referenceable
            cached = None
        if cached is not None:
            return cached
        body = dumps_function(fn)
        reply = await self._call("RegisterFunction", pb.RegisterFunctionRequest(
            name=name or function_name(fn), body=body, python_version=config.PYTHON_VERSION,
            runtime=runtime.to_json() if runtime is not None else b""))
        try:
            self._fn_ids.setdefault(fn, {})[key] = reply.function_id
        except TypeError:
            pass
        return reply.function_id

    # ------------------------------------------------------------ submission
    def new_submission(self, function_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                       endpoint_id: str | None = None, walltime: float = 0.0,
                       max_retries: int | None = None, *, endpoints: Sequence[str] = (),
                       gpus: int = 0, memory: int = 0,
                       deadline: float | None = None,
                       runtime: Runtime | None = None) -> pb.TaskSubmission:
        """One call, ready to submit. `endpoints` limits where the policy may send it,
        `gpus`/`memory` (bytes) are what it needs there, `deadline` (seconds) is for
        the cheapest policy: the cheapest endpoint predicted to finish it in time.
        `runtime` replaces the function's own for this call."""
        task_id = uuid.uuid4().hex
        sub = pb.TaskSubmission(task_id=task_id, function_id=function_id,
                                args=self.payloads.inline(task_id, dumps_args(args, kwargs)),
                                endpoint=endpoint_id or "",
                                walltime_s=walltime, gpus=gpus, memory_bytes=memory,
                                allowed_endpoints=list(endpoints), deadline_s=deadline or 0.0)
        if max_retries is not None:
            sub.max_retries = max_retries
        if runtime is not None:
            sub.runtime = runtime.to_json()
        return sub

    def enqueue(self, subs: Sequence[pb.TaskSubmission], policy: str = "",
                ack: asyncio.Future[None] | None = None, fail_fast: bool = False) -> None:
        """Queue submissions for the next Submit call (loop thread only)."""
        key = (policy or self.policy, fail_fast)  # submissions are grouped per Submit call by this
        for i, s in enumerate(subs):
            self._outbox.append((s, key, ack if i == len(subs) - 1 else None))
        if not self._flushing:
            self._flushing = True
            self._flusher = self.jobs.start(self._flush(), "flush submissions")

    async def _flush(self) -> None:
        try:
            while self._outbox:
                n = fit(self._outbox, SUBMIT_BATCH, config.MAX_BATCH_BYTES, self.payloads.waiting)
                batch, self._outbox = self._outbox[:n], self._outbox[n:]
                by_key: dict[tuple[str, bool], list[Any]] = {}
                for item in batch:
                    by_key.setdefault(item[1], []).append(item)
                for key, items in by_key.items():
                    await self._submit_now(key, items)
        finally:
            self._flushing = False

    async def _submit_now(self, key: tuple[str, bool], items: list[Any]) -> None:
        policy, fail_fast = key
        watching = self._watch_ready is not None
        req = pb.SubmitRequest(tasks=[i[0] for i in items], policy=policy, fail_if_offline=fail_fast,
                               session_id=self.session_id if watching else "")
        ids = [i[0].task_id for i in items]
        if watching:
            self._watched.update(ids)
        self._submitting.update(ids)
        if _TON:
            _trace(ids[0], 'c_rpc')
        try:
            if _TON:
                _trace(ids[0], 'c_upload')
            await self.payloads.upload_args(req.tasks)
            await self._send_submission(req)
            if _TON:
                _trace(ids[0], 'c_acked')
        except errors.FabricError as exc:
            self._submitting.difference_update(ids)
            failed = [i[0].task_id for i in items]
            self._watched.difference_update(failed)
            for i in items:
                if i[2] is not None and not i[2].done():
                    i[2].set_exception(exc)
            if self.on_submit_failed is not None:
                self.on_submit_failed(failed, exc)
            return
        self._submitting.difference_update(ids)
        for i in items:
            if i[2] is not None and not i[2].done():
                i[2].set_result(None)

    async def _send_submission(self, req: pb.SubmitRequest) -> pb.SubmitReply:
        """Over the submission stream while it is up; else, and to retry a request the
        stream lost, the unary Submit (retried until the hub is back: ids make it
        idempotent). Only the flush loop calls this, so requests never interleave."""
        if self._submit_stream is None and self._stream_supported:
            self._submit_stream = self.stub.SubmitStream(metadata=self._metadata)
        call = self._submit_stream
        if call is not None:
            try:
                await call.write(req)
                reply = await call.read()
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._stream_supported = False  # an older hub
                reply = None
            if reply is not None and reply is not grpc.aio.EOF:
                if reply.error_kind in (errors.QueueFull.kind, errors.StorageFull.kind):
                    # Backpressure, not an error: the unary path waits and retries.
                    return await self._call("Submit", req)
                if reply.error_kind:
                    raise from_kind(reply.error_kind, reply.error_message)
                return reply
            self._submit_stream = None  # broken (hub restart): reopened on the next submission
            call.cancel()
        return await self._call("Submit", req)

    async def _drain_outbox(self) -> None:
        """Until every queued submission was sent (or refused): the flush job ends
        only with an empty outbox, and a later enqueue starts a new one."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    async def submit(self, subs: Sequence[pb.TaskSubmission], policy: str = "",
                     fail_fast: bool = False) -> list[str]:
        """Submit and wait for the hub's commit; returns the task ids. `fail_fast`:
        refuse the batch (NoEligibleEndpoint, EndpointOffline) rather than hold tasks
        no online endpoint can run now."""
        if not subs:
            return []
        ack = asyncio.get_running_loop().create_future()
        self.enqueue(subs, policy, ack, fail_fast)
        await ack
        return [s.task_id for s in subs]

    async def run(self, *args: Any, function_id: str, endpoint_id: str | None = None,
                  policy: str = "", walltime: float = 0.0, max_retries: int | None = None,
                  endpoints: Sequence[str] = (), gpus: int = 0, memory: int = 0,
                  deadline: float | None = None, fail_fast: bool = False,
                  runtime: Runtime | None = None, **kwargs: Any) -> str:
        """Submit one call of a registered function; returns its task id once stored.
        The keyword names above are Fabric's; pass a function's own keywords of the
        same names through `batch_run`."""
        sub = self.new_submission(function_id, args, kwargs, endpoint_id, walltime, max_retries,
                                  endpoints=endpoints, gpus=gpus, memory=memory, deadline=deadline,
                                  runtime=runtime)
        (tid,) = await self.submit([sub], policy, fail_fast)
        return tid

    async def batch_run(self, function_id: str, calls: Iterable[tuple[Sequence[Any], dict[str, Any]]],
                        endpoint_id: str | None = None, policy: str = "", walltime: float = 0.0,
                        max_retries: int | None = None, *, endpoints: Sequence[str] = (),
                        gpus: int = 0, memory: int = 0, deadline: float | None = None,
                        fail_fast: bool = False, runtime: Runtime | None = None) -> list[str]:
        """Submit many calls, each an (args, kwargs) pair; returns task ids in order.
        `runtime` replaces the function's own for every call of the batch."""
        subs = [self.new_submission(function_id, tuple(a), dict(k), endpoint_id, walltime,
                                    max_retries, endpoints=endpoints, gpus=gpus, memory=memory,
                                    deadline=deadline, runtime=runtime) for a, k in calls]
        return await self.submit(subs, policy, fail_fast)

    async def cancel(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel tasks that have not finished; returns those that were cancelled."""
        if self._outbox or self._flushing:
            await self._drain_outbox()  # a cancel must not overtake the submission it cancels
        cancelled: list[str] = []
        for page in pages(task_ids):
            reply = await self._call("Cancel", pb.CancelRequest(task_ids=page))
            cancelled.extend(reply.cancelled)
        return cancelled

    # ------------------------------------------------------------ results
    async def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's value, or raise its error. With no timeout, a pending task raises
        TaskPending at once; with one, waits up to `timeout` seconds (TaskTimeout)."""
        (r,) = await self.wait([task_id], timeout)
        return outcome(r)

    async def get_batch_result(self, task_ids: Sequence[str], timeout: float | None = None,
                               return_exceptions: bool = False) -> list[Any]:
        """Values in the order of `task_ids`; the first error is raised unless
        `return_exceptions`, which puts exceptions in the list instead."""
        out = []
        for r in await self.wait(task_ids, timeout):
            try:
                out.append(outcome(r))
            except errors.FabricError as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    async def status_of(self, task_ids: Sequence[str]) -> list[pb.TaskResult]:
        """What the hub knows of each task now, big values fetched."""
        out: list[pb.TaskResult] = []
        for ids in pages(task_ids):
            while ids:  # the hub answers as many as fit in one message
                reply = await self._call("GetResults", pb.GetResultsRequest(task_ids=ids))
                if not reply.results:
                    raise errors.FabricError("the hub answered GetResults with no results")
                out.extend(reply.results)
                ids = ids[len(reply.results):]
        return list(await asyncio.gather(*map(self.payloads.with_value, out)))

    async def wait(self, task_ids: Sequence[str], timeout: float | None) -> list[pb.TaskResult]:
        """Final results for `task_ids` (in order). timeout=None: do not wait, return
        what is known now (pending tasks come back non-final). A call that fails leaves
        the client as it was: results it had stay, ids it did not subscribe stay unwatched."""
        # Taken from the cache only once this call succeeds.
        known = {tid: self._results[tid] for tid in task_ids if tid in self._results}
        missing = [tid for tid in dict.fromkeys(task_ids) if tid not in known]
        if missing and timeout is None:
            for r in await self.status_of(missing):
                known[r.task_id] = r
            missing = []
        if missing:
            loop = asyncio.get_running_loop()
            futs = {}
            for tid in missing:
                f = loop.create_future()
                self._waiters.setdefault(tid, []).append(f)
                futs[tid] = f
            try:
                await self._ensure_watch()
                await self._subscribe([tid for tid in missing if tid not in self._watched])
                done, pending = await asyncio.wait(futs.values(), timeout=timeout)
                if pending:
                    raise errors.TaskTimeout(
                        f"{len(pending)} of {len(missing)} tasks not finished after {timeout}s")
                for tid, f in futs.items():
                    known[tid] = f.result()
            finally:
                for tid, f in futs.items():
                    if tid not in known and f.done() and not f.cancelled() \
                            and f.exception() is None:
                        self._keep(f.result())  # arrived for a call that failed: kept
                    lst = self._waiters.get(tid)
                    if lst is not None:
                        if f in lst:
                            lst.remove(f)
                        if not lst:
                            del self._waiters[tid]
        for tid in known:
            self._results.pop(tid, None)
        return [known[tid] for tid in task_ids]

    async def _subscribe(self, task_ids: list[str]) -> None:
        """Ask the hub to push these tasks' results on this session's stream."""
        for page in pages(task_ids):
            # Watched before the call: the hub pushes finished ones before it answers.
            self._watched.update(page)
            try:
                await self._call("Subscribe", pb.SubscribeRequest(
                    session_id=self.session_id, task_ids=page))
            except BaseException:
                # Not subscribed: a later wait must ask again, not wait for a push.
                # (Earlier pages were: their results come, and are kept.)
                self._watched.difference_update(page)
                raise

    def _deliver(self, r: pb.TaskResult, observed: bool = False) -> None:
        tid = r.task_id
        if not observed and self.push_observer is not None:
            self.push_observer(r)  # before the repeats are dropped, below
        if tid not in self._watched:
            return  # a duplicate after a reconnect: the first result already went out
        if tid in self._submitting and r.state == pb.TASK_STATE_UNSPECIFIED:
            return  # "unknown task" from a restarted hub that has not seen the retry yet
        self._watched.discard(tid)
        if self.result_observer is not None:
            self.result_observer(r)
        if self.listener is not None and self.listener(r):
            return
        waiters = self._waiters.pop(tid, None)
        if waiters:
            for f in waiters:
                if not f.done():
                    f.set_result(r)
            return
        self._keep(r)

    def _keep(self, r: pb.TaskResult) -> None:
        """Cache a result nobody waits for yet (the newest CACHE_RESULTS)."""
        self._results[r.task_id] = r
        while len(self._results) > CACHE_RESULTS:
            self._results.popitem(last=False)

    async def _ensure_watch(self) -> None:
        if self._closed:
            raise errors.FabricError("client is closed")
        if self._watch_ready is None or (self._watch_task is not None and self._watch_task.done()):
            # First use, or the stream ended for good (refused): open one again, so
            # one refusal does not fail every later wait.
            self._watch_ready = asyncio.get_running_loop().create_future()
            self._watch_task = asyncio.create_task(self._watch_forever())
        try:
            await asyncio.wait_for(asyncio.shield(self._watch_ready), self.retry_timeout)
        except asyncio.TimeoutError:  # it keeps trying; this call gives up
            raise errors.HubUnavailable(f"no result stream from the hub at {self.address} "
                                        f"after {self.retry_timeout}s") from None

    async def _watch_forever(self) -> None:
        delay = 0.05
        ready = self._watch_ready
        assert ready is not None
        resubscribe: asyncio.Task[None] | None = None
        while not self._closed:
            try:
                # A hub that restarted knows none of our ids: the first page goes with
                # the Watch, the rest in Subscribe calls once the stream is up.
                first, *rest = pages(self._watched) or [[]]
                call = self.stub.Watch(pb.WatchRequest(session_id=self.session_id,
                                                       task_ids=first),
                                        metadata=self._metadata)
                subscribed = False
                async for batch in call:
                    if not subscribed:
                        subscribed = True
                        if not ready.done():
                            ready.set_result(None)
                        if rest:
                            resubscribe = self.jobs.start(self._resubscribe(rest), "resubscribe")
                    delay = 0.05
                    for r in batch.results:
                        if _TON:
                            _trace(r.task_id, 'c_watch_in')
                        if r.value_blob:
                            self._fetch_then_deliver(r)
                        elif is_final(r):
                            self._deliver(r)
                if self._closed:
                    return
            except grpc.aio.AioRpcError as exc:
                if not is_transient(exc):
                    err = from_rpc_error(exc, self.address)
                    if not ready.done():
                        ready.set_exception(err)
                    self._fail_waiters(err)
                    return
                log.info("result stream to %s broke (%s); reconnecting", self.address, exc.code().name)
            finally:
                if resubscribe is not None:
                    resubscribe.cancel()  # the next stream starts over
                    resubscribe = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _resubscribe(self, id_pages: list[list[str]]) -> None:
        """Interest in watched ids beyond the Watch call's first page, after a reconnect."""
        try:
            for page in id_pages:
                await self._call("Subscribe", pb.SubscribeRequest(
                    session_id=self.session_id, task_ids=[t for t in page if t in self._watched]))
        except errors.FabricError as exc:  # the stream breaks too, and its reconnect retries
            log.info("could not subscribe again to %d ids: %s", sum(map(len, id_pages)), exc)

    def _fetch_then_deliver(self, r: pb.TaskResult) -> None:
        """A big value is fetched off the result stream, so other results keep flowing."""
        if self.push_observer is not None:
            self.push_observer(r)  # as pushed (the value's blob), repeats included
        if r.task_id in self._fetching or r.task_id not in self._watched:
            return  # already on its way, or a repeat of one delivered

        async def fetch() -> None:
            try:
                self._deliver(await self.payloads.with_value(r), observed=True)
            finally:
                self._fetching.pop(r.task_id, None)

        self._fetching[r.task_id] = self.jobs.start(fetch(), f"fetch {r.task_id}")

    def _fail_waiters(self, exc: BaseException) -> None:
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(exc)

    # ------------------------------------------------------------ listings
    async def endpoints(self) -> list[EndpointInfo]:
        reply = await self._call("ListEndpoints", pb.ListEndpointsRequest())
        return [EndpointInfo.from_proto(e) for e in reply.endpoints]

    async def tasks(self, limit: int = 50, state: TaskState | None = None,
                    endpoint: str | None = None) -> list[TaskInfo]:
        reply = await self._call("ListTasks", pb.ListTasksRequest(
            limit=limit, state=int(state) if state else 0, endpoint=endpoint or ""))
        return [TaskInfo.from_proto(t) for t in reply.tasks]

    async def share(self, kind: str, ref: str, users: Sequence[str], revoke: bool = False) -> list[str]:
        """Share an endpoint (id or name) or function (id) you own with `users`
        (or stop sharing, with `revoke`); returns everyone it is shared with now."""
        reply = await self._call("Share", pb.ShareRequest(kind=kind, ref=ref, users=list(users),
                                                          revoke=revoke))
        return list(reply.users)

    async def status(self) -> HubStatus:
        return HubStatus.from_proto(await self._call("Status", pb.StatusRequest()))

    async def wait_for_endpoints(self, count: int, timeout: float = 30.0) -> list[EndpointInfo]:
        """Wait until at least `count` endpoints are online (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            online = [e for e in await self.endpoints() if e.online]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise errors.TaskTimeout(f"{len(online)} of {count} endpoints online after {timeout}s")
            await asyncio.sleep(0.05)


def _runtime_key(runtime: Runtime | None) -> str:
    if runtime is not None and not isinstance(runtime, Runtime):
        raise TypeError(f"runtime must be a fabric.client.Runtime, not {type(runtime).__name__}")
    return "" if runtime is None else runtime.digest
