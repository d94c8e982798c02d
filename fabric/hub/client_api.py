"""ClientService: what users call (register, submit, results, watch, cancel, listings).

Validation happens here, before anything is stored: a request that fails
changes nothing. Every FabricError raised below becomes one precise gRPC
status via `fabric.wire.to_status` (see `_rpc`).
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import asyncio
import functools
import json
import logging
import time
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from fabric import config, errors
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.hub.access import Access
from fabric.hub.auth import Principal, check_user_name
from fabric.hub.blobs import Blobs, check_blob_id, chunk_reader
from fabric.hub.disk import ROW_BYTES
from fabric.hub.dispatch import NO_NEEDS, Dispatcher, LiveTask, Needs
from fabric.hub import runtimes
from fabric.hub.guard import answering, audit_refusal, caller
from fabric.hub.sessions import Sessions
from fabric.hub.store import FunctionRow, TaskStore
from fabric.models import EndpointInfo, HubStatus, TaskInfo
from fabric.serialize import function_id as make_function_id
from fabric.states import TaskState
from fabric.wire import error_kind, to_status

log = logging.getLogger("fabric.hub")

MAX_IDS_PER_CALL = config.MAX_IDS_PER_CALL
MAX_ID_LENGTH = 128
MAX_TASKS_LISTED = 10_000
RESULTS_PER_READ = 256  # GetResults reads the store this many ids at a time


def _rpc(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Map FabricError to its status; anything else is logged and sent as INTERNAL."""

    @functools.wraps(handler)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except errors.FabricError as exc:
            if isinstance(exc, (errors.AuthError, errors.PermissionDenied)):
                audit_refusal(context.peer(), handler.__name__, exc, caller())
            code, details, trailers = to_status(exc)
            context.set_trailing_metadata(trailers)
            await context.abort(code, details)

    return wrapped


def check_ids(ids: Any, what: str) -> list[str]:
    ids = list(ids)
    if len(ids) > MAX_IDS_PER_CALL:
        raise errors.InvalidRequest(f"too many {what} ids in one call: {len(ids)} > {MAX_IDS_PER_CALL}")
    for i in ids:
        if not i or len(i) > MAX_ID_LENGTH:
            raise errors.InvalidRequest(f"malformed {what} id {i[:MAX_ID_LENGTH]!r}")
    return ids


MAX_RETRIES = 100


def check_limits(t: pb.TaskSubmission) -> None:
    if not (0.0 <= t.walltime_s < float("inf")):
        raise errors.InvalidRequest(f"task {t.task_id}: walltime must be a positive number of "
                                    f"seconds (or 0 for none), not {t.walltime_s}")
    if t.HasField("max_retries") and not 0 <= t.max_retries <= MAX_RETRIES:
        raise errors.InvalidRequest(f"task {t.task_id}: max_retries must be 0..{MAX_RETRIES}, "
                                    f"not {t.max_retries}")


class ClientApi(pb_grpc.ClientServiceServicer):
    def __init__(self, dispatcher: Dispatcher, store: TaskStore, sessions: Sessions,
                 access: Access, blobs: Blobs, max_payload: int, version: str,
                 max_queued: int = config.DEFAULT_MAX_QUEUED_PER_USER) -> None:
        self.max_queued = max_queued
        self.blobs = blobs
        self.d = dispatcher
        self.access = access
        self.store = store
        self.sessions = sessions
        self.max_payload = max_payload
        self.version = version
        self.started = time.time()

    @staticmethod
    def session(p: Principal, session_id: str) -> str:
        """Result sessions are per user: another user's session id reaches nothing of theirs."""
        return f"{p.user}/{session_id}" if session_id else ""

    # ------------------------------------------------------------ functions
    @_rpc
    async def RegisterFunction(self, request: pb.RegisterFunctionRequest, context: Any) -> pb.RegisterFunctionReply:
        if not request.body:
            raise errors.InvalidRequest("function body is empty")
        limit = min(self.max_payload, config.MAX_FUNCTION_BODY)
        if len(request.body) > limit:
            raise errors.PayloadTooLarge(
                f"function body is {len(request.body)} bytes; the limit is {limit} (it goes "
                "to every endpoint that runs it): pass big data as an argument instead")
        if not request.python_version or len(request.python_version) > 16:
            raise errors.InvalidRequest("python_version must be set, e.g. '3.11'")
        owner = caller().user
        # Stored and hashed in canonical form, whatever spelling the client sent.
        runtime = runtimes.parse(request.runtime).to_json() if request.runtime else b""
        runtimes.check_function_runtime(runtime, request.python_version)
        fid = make_function_id(owner, request.body, request.python_version, runtime)
        if fid not in self.d.functions:
            self.d.budget.spend(len(request.body) + len(runtime) + ROW_BYTES)
            row = FunctionRow(fid, request.name[:256], request.body, request.python_version, owner,
                              runtime)
            await self.store.put_function(row)
            self.d.functions[fid] = row
        return pb.RegisterFunctionReply(function_id=fid)

    async def function(self, function_id: str) -> FunctionRow:
        row = self.d.functions.get(function_id)
        if row is None and len(function_id) <= MAX_ID_LENGTH:
            row = await self.store.get_function(function_id)
            if row is not None:
                self.d.functions[function_id] = row
        if row is None:
            raise errors.FunctionNotFound(f"unknown function id {function_id[:MAX_ID_LENGTH]!r}")
        return row

    def resolve_endpoint(self, ref: str) -> str:
        """The id of an endpoint the caller may use, from an id or a name."""
        return self.access.resolve(caller(), ref).endpoint_id

    # ------------------------------------------------------------ tasks
    @_rpc
    async def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitReply:
        return await self._submit(request)

    async def SubmitStream(self, request_iterator: Any, context: Any) -> None:
        """Submit, as one stream per client: each request is answered in order, a
        refusal in band (error_kind), so one bad batch does not end the stream.
        (The interceptor authenticated the stream once, at its start.)"""
        while True:
            try:
                request = await context.read()
            except DecodeError as exc:  # gRPC itself would end the stream with UNKNOWN
                code, details, trailers = to_status(
                    errors.InvalidRequest(f"malformed SubmitRequest: {exc}"))
                context.set_trailing_metadata(trailers)
                await context.abort(code, details)
            if request is grpc.aio.EOF:
                return
            try:
                reply = await self._submit(request)
            except errors.FabricError as exc:
                reply = pb.SubmitReply(error_kind=error_kind(exc), error_message=str(exc))
            # Let the links' writers send the new tasks first: a result, not the ack,
            # is what the caller waits for.
            await asyncio.sleep(0)
            await context.write(reply)

    async def _submit(self, request: pb.SubmitRequest) -> pb.SubmitReply:
        p = caller()
        owner = p.user
        session_id = self.session(p, request.session_id)
        if _TON:
            _trace(request.tasks[0].task_id, 'h_submit_in')
        check_ids([t.task_id for t in request.tasks], "task")
        for t in request.tasks:  # a live id of someone else's is not ours to resubmit or watch
            other = self.d.tasks.get(t.task_id) or self.d.finisher.get(t.task_id)
            self.access.check_task(p, t.task_id, other.owner if other is not None else None)
        policy = request.policy
        self.d.policy(policy)  # unknown policy -> InvalidRequest before anything changes
        live: list[LiveTask] = []
        resolved: dict[str, str] = {}
        pinned: dict[tuple[str, str], str] = {}
        for t in request.tasks:
            fn = await self.function(t.function_id)
            self.access.check_function(p, fn)
            if len(t.args) > self.max_payload:
                raise errors.PayloadTooLarge(
                    f"task {t.task_id}: arguments are {len(t.args)} bytes; "
                    f"the limit is {self.max_payload}")
            size = await self._args_blob_size(t, owner) if t.args_blob else len(t.args)
            check_limits(t)
            runtime, python = self._runtime(t, fn)
            requested = None
            if t.endpoint:
                if (t.endpoint, python) not in pinned:
                    pinned[t.endpoint, python] = self._check_endpoint(
                        t.endpoint, fn, request.fail_if_offline, python)
                requested = pinned[t.endpoint, python]
            live.append(LiveTask(t.task_id, fn.function_id, t.args, requested,
                                 python, policy, t.walltime_s,
                                 t.max_retries if t.HasField("max_retries") else None,
                                 self._needs(t, resolved, runtime), owner, t.args_blob or None,
                                 size))
        if request.fail_if_offline and not self.d.links and any(t.requested is None for t in live):
            raise errors.NoEligibleEndpoint("no endpoint is online")
        # Resubmitting an id that is already live is a no-op (idempotent retries), but
        # this session wants its result too (its owner was checked above).
        if session_id:
            self.sessions.watch(session_id, (t.task_id for t in live if t.task_id in self.d.tasks))
        live = [t for t in live if t.task_id not in self.d.tasks]
        queued = self.d.unfinished_by.get(owner, 0)
        if live and queued >= self.max_queued:
            # Backpressure, not failure: the client waits and retries. A batch is let in
            # whole while the user is under the cap, so any batch size makes progress.
            self.d.counters["queue_full"] += 1
            raise errors.QueueFull(f"user {owner} has {queued} unfinished tasks; the hub's cap "
                                   f"is {self.max_queued}: retry when some finish")
        if live:  # StorageFull: the client waits and retries for a while, then says so
            self.d.budget.spend(sum(len(t.args) + ROW_BYTES for t in live))
        live = self.d.route(live)
        try:
            reason = self.d.fail_fast_reason(live) if request.fail_if_offline else None
            if reason is not None:
                raise errors.NoEligibleEndpoint(reason)
            now = time.time()
            rows = [(t.task_id, t.function_id, int(TaskState.QUEUED), t.requested, t.endpoint_id,
                     session_id, owner, t.reason, t.args, now, t.walltime_s,
                     t.max_retries, json.dumps(t.needs.to_dict()) if t.needs != NO_NEEDS else None,
                     t.args_blob)
                    for t in live]
            for t in live:
                t.submitted_at = now
            if _TON:
                _trace(request.tasks[0].task_id, 'h_insert')
            stored = self.store.insert_tasks(rows)
        except BaseException:
            self.d.unroute(live)  # nothing was stored: nothing may stay counted
            raise
        # What the commit stored is queued when it commits, whatever becomes of this
        # call: a client killed mid-batch cancels the await, not the commit.
        stored.add_done_callback(functools.partial(self._queue_stored, live, session_id))
        existing = await asyncio.shield(stored)  # acknowledged only once committed
        if _TON:
            _trace(request.tasks[0].task_id, 'h_inserted')
        foreign: dict[str, str] = {}
        if existing:  # stored before (a retried Submit), or another user's id
            rows = await self.store.get_tasks(list(existing))
            foreign = {tid: row.owner for tid, row in rows.items() if row.owner != owner}
            if session_id:  # never interest in another user's task
                self.sessions.watch(session_id, (tid for tid in existing if tid not in foreign))
        for tid, other in foreign.items():
            self.access.check_task(p, tid, other)  # PermissionDenied
        if existing:
            # Already stored (and perhaps finished): push what we know to the watcher.
            await self._push_known(session_id, list(existing))
        if _TON:
            _trace(request.tasks[0].task_id, 'h_submit_out')
        return pb.SubmitReply(task_ids=[t.task_id for t in request.tasks])

    def _queue_stored(self, live: list[LiveTask], session_id: str,
                      stored: asyncio.Future[set[str]]) -> None:
        """The insert finished: queue what it stored (ids stored before are not ours to
        queue again), release the charges of the rest."""
        if stored.cancelled() or stored.exception() is not None:
            self.d.unroute(live)  # nothing was stored: nothing may stay counted
            return
        existing = stored.result()
        new = [t for t in live if t.task_id not in existing]
        if session_id:  # interest before the tasks can run
            self.sessions.watch(session_id, (t.task_id for t in new))
        self.d.unroute(t for t in live if t.task_id in existing)
        self.d.enqueue(new)

    async def _args_blob_size(self, t: pb.TaskSubmission, owner: str) -> int:
        """Arguments uploaded as a blob: the caller's own, and nothing inline besides."""
        if t.args:
            raise errors.InvalidRequest(f"task {t.task_id}: send the arguments inline or as "
                                        "a blob, not both")
        try:
            blob = await self.blobs.meta(t.args_blob)
        except errors.BlobNotFound:
            # A retried Submit (its ack was lost) of a task that has finished since: its
            # arguments went with it. The retry is the no-op below, as with inline ones.
            if await self.store.get_tasks([t.task_id]):
                return 0
            raise
        if blob.owner != owner:  # (a result of one's own may be passed on as arguments)
            raise errors.PermissionDenied(f"blob {t.args_blob} belongs to another user")
        return blob.size

    @staticmethod
    def _runtime(t: pb.TaskSubmission, fn: FunctionRow) -> tuple[str, str]:
        """(the runtime spec the task runs in, canonical JSON or "", the Python an
        endpoint must itself run for it): the call's runtime, else its function's."""
        spec = t.runtime or fn.runtime
        if not spec:
            return "", fn.python_version
        try:
            python = runtimes.routing_python(spec, fn.python_version, f"function {fn.name}")
            return runtimes.parse(spec).to_json().decode(), python
        except errors.InvalidRuntime as exc:
            raise errors.InvalidRuntime(f"task {t.task_id}: {exc}") from None

    def _needs(self, t: pb.TaskSubmission, resolved: dict[str, str], runtime: str = "") -> Needs:
        if t.gpus < 0 or t.memory_bytes < 0 or not 0 <= t.deadline_s < float("inf"):
            raise errors.InvalidRequest(f"task {t.task_id}: gpus, memory_bytes and deadline_s "
                                        "must be positive (or 0 for none)")
        if not (t.gpus or t.memory_bytes or t.allowed_endpoints or t.deadline_s or runtime):
            return NO_NEEDS
        allowed = []
        for ref in t.allowed_endpoints:
            if ref not in resolved:
                resolved[ref] = self.resolve_endpoint(ref)  # EndpointNotFound names it
            allowed.append(resolved[ref])
        return Needs(t.gpus, t.memory_bytes, tuple(dict.fromkeys(allowed)), t.deadline_s or None,
                     runtime)

    def _check_endpoint(self, ref: str, fn: FunctionRow, fail_if_offline: bool,
                        python: str) -> str:
        """`python`: the version the endpoint itself must run ("" when the task's
        runtime brings its own interpreter)."""
        rec = self.access.resolve(caller(), ref)
        self.access.check_endpoint(caller(), rec, fn)
        eid = rec.endpoint_id
        theirs = rec.capabilities.python_version if rec.capabilities else ""
        if theirs and python and theirs != python:
            raise errors.VersionMismatch(
                f"function {fn.name} was registered from Python {fn.python_version}, but "
                f"endpoint {rec.name} runs Python {theirs}; register it from Python {theirs} "
                f"or start the endpoint with Python {fn.python_version}")
        if fail_if_offline and eid not in self.d.links:
            raise errors.EndpointOffline(f"endpoint {rec.name} ({eid}) is offline")
        return eid

    async def results(self, task_ids: list[str]) -> list[pb.TaskResult]:
        """Current result (or state) of each task; unknown ids get a TaskNotFound error.
        PermissionDenied if any of them is another user's."""
        p = caller()
        out: dict[str, pb.TaskResult] = {}
        stored_ids = []
        for tid in task_ids:
            t = self.d.tasks.get(tid)
            if t is not None:
                self.access.check_task(p, tid, t.owner)
                out[tid] = pb.TaskResult(task_id=tid, state=int(t.state), endpoint_id=t.endpoint_id or "")
            elif (o := self.d.finisher.get(tid)) is not None:
                # Final, but not stored yet (perhaps held for room): until it is, the
                # task is still where it was, and its result is published once stored.
                self.access.check_task(p, tid, o.owner)
                out[tid] = pb.TaskResult(task_id=tid, state=int(o.was),
                                         endpoint_id=o.result.endpoint_id)
            else:
                stored_ids.append(tid)
        if stored_ids:
            rows = await self.store.get_tasks(stored_ids, with_result=True)
            for row in rows.values():
                self.access.check_task(p, row.task_id, row.owner)
            for tid in stored_ids:
                row = rows.get(tid)
                if row is None:
                    out[tid] = pb.TaskResult(task_id=tid, error=pb.TaskError(
                        type_name="TaskNotFound", message=f"unknown task id {tid!r}", kind="system"))
                    continue
                r = pb.TaskResult(task_id=tid, state=int(row.state), value=row.value or b"",
                                  value_blob=row.value_blob or "",
                                  endpoint_id=row.endpoint_id or "", runtime_s=row.runtime_s or 0.0)
                if row.error:
                    r.error.ParseFromString(row.error)
                elif row.state is TaskState.PURGED:
                    r.error.CopyFrom(pb.TaskError(
                        type_name="ResultPurged", kind="purged",
                        message="finished, but its result was dropped after the hub's "
                                "retention period"))
                out[tid] = r
        return [out[tid] for tid in task_ids]

    async def _push_known(self, session_id: str, task_ids: list[str]) -> None:
        if session_id:
            final = [r for r in await self.results(task_ids) if r.state in _FINAL or r.HasField("error")]
            self.sessions.push_to(session_id, final)

    @_rpc
    async def GetResults(self, request: pb.GetResultsRequest, context: Any) -> pb.GetResultsReply:
        """Results for a prefix of the ids: as many as fit in one message (at least one)."""
        ids = check_ids(request.task_ids, "task")
        results: list[pb.TaskResult] = []
        size, full = 0, False
        for i in range(0, len(ids), RESULTS_PER_READ):
            for r in await self.results(ids[i:i + RESULTS_PER_READ]):
                size += r.ByteSize()
                full = bool(results) and size > config.MAX_BATCH_BYTES
                if full:
                    break
                results.append(r)
            if full:
                break
        self.sessions.delivered([r.task_id for r in results if r.state in _FINAL])
        return pb.GetResultsReply(results=results)

    async def Watch(self, request: pb.WatchRequest, context: Any) -> Any:
        if not request.session_id or len(request.session_id) > MAX_ID_LENGTH:
            code, details, trailers = to_status(errors.InvalidRequest("session_id is required"))
            context.set_trailing_metadata(trailers)
            await context.abort(code, details)
        session_id = self.session(caller(), request.session_id)
        ids = list(request.task_ids)[:MAX_IDS_PER_CALL]
        if ids:
            try:
                await self.results(ids)  # PermissionDenied for another user's task
            except errors.FabricError as exc:
                audit_refusal(context.peer(), "Watch", exc, caller())
                code, details, trailers = to_status(exc)
                context.set_trailing_metadata(trailers)
                await context.abort(code, details)
        session = self.sessions.open(session_id)
        try:
            yield pb.ResultBatch()  # "subscribed": later submissions will be pushed here
            if ids:
                # Interest first, then look: a result landing in between is pushed twice
                # at worst, and the client keeps the first.
                self.sessions.watch(session.session_id, ids)
                await self._push_known(session.session_id, ids)
            while True:
                batch = await session.next_batch()
                if not batch:
                    return
                if _TON:
                    _trace(batch[0].task_id, 'h_watch_out')
                yield pb.ResultBatch(results=batch)
        finally:
            self.sessions.close(session)

    @_rpc
    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> pb.SubscribeReply:
        ids = check_ids(request.task_ids, "task")
        session_id = self.session(caller(), request.session_id)
        await self.results(ids)  # PermissionDenied for another user's task
        self.sessions.watch(session_id, ids)
        await self._push_known(session_id, ids)
        return pb.SubscribeReply()

    @_rpc
    async def Cancel(self, request: pb.CancelRequest, context: Any) -> pb.CancelReply:
        ids = check_ids(request.task_ids, "task")
        p = caller()
        for tid in ids:  # only tasks not final yet can be cancelled: those are live
            t = self.d.tasks.get(tid)
            if t is not None:
                self.access.check_task(p, tid, t.owner)
        cancelled = self.d.cancel(ids)
        return pb.CancelReply(cancelled=[r.task_id for r in cancelled])

    # ------------------------------------------------------------ listings
    @_rpc
    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context: Any) -> pb.ListEndpointsReply:
        out = []
        p = caller()
        for rec in sorted(self.d.endpoints.values(), key=lambda e: e.name):
            if not (p.is_admin or self.access.may_use_endpoint(p.user, rec)):
                continue
            link = self.d.links.get(rec.endpoint_id)
            out.append(EndpointInfo(
                endpoint_id=rec.endpoint_id, name=rec.name, online=link is not None,
                capabilities=rec.capabilities,
                free_slots=link.free_slots if link else 0,
                queued_at_hub=sum(1 for tid in self.d.queues.get(rec.endpoint_id, ())
                                  if tid in self.d.tasks),
                in_flight=len(link.in_flight) if link else 0,
                load=link.load if link else 0.0,
                last_seen=rec.last_seen, completed=rec.completed,
                latency_s=(link.latency_s or 0.0) if link else 0.0,
                bandwidth_Bps=(link.bandwidth_Bps or 0.0) if link else 0.0,
            ).to_proto())
        return pb.ListEndpointsReply(endpoints=out)

    @_rpc
    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksReply:
        limit = min(request.limit or 50, MAX_TASKS_LISTED)
        state = TaskState(request.state) if request.state else None
        eid = self.resolve_endpoint(request.endpoint) if request.endpoint else None
        p = caller()
        if state in (TaskState.QUEUED, TaskState.DISPATCHED):
            # Whether an unfinished task runs, and where, is known in memory only.
            return pb.ListTasksReply(tasks=self._live_tasks(limit, state, eid, p))
        rows = await self.store.list_tasks(limit, state, eid, None if p.is_admin else p.user)
        out = []
        for r in rows:
            live = self.d.tasks.get(r.task_id)
            # A live task's route may have changed since the row was written (held: none).
            out.append(self._task_info(
                r.task_id, r.function_id, live.state if live else r.state,
                live.endpoint_id if live else r.endpoint_id,
                live.reason if live else r.route_reason, r.submitted_at,
                r.completed_at or 0.0, r.runtime_s or 0.0, r.error_type or ""))
        return pb.ListTasksReply(tasks=out)

    def _task_info(self, task_id: str, function_id: str, state: TaskState,
                   endpoint_id: str | None, reason: str | None, submitted_at: float,
                   completed_at: float = 0.0, runtime_s: float = 0.0,
                   error_type: str = "") -> pb.TaskInfo:
        """A listing row, with the names of its function and endpoint."""
        fn = self.d.functions.get(function_id)
        ep = self.d.endpoints.get(endpoint_id or "")
        return TaskInfo(
            task_id=task_id, function_id=function_id, function_name=fn.name if fn else "",
            state=state, endpoint_id=endpoint_id or "", endpoint_name=ep.name if ep else "",
            route_reason=reason or "", submitted_at=submitted_at, completed_at=completed_at,
            runtime_s=runtime_s, error_type=error_type).to_proto()

    def _live_tasks(self, limit: int, state: TaskState, endpoint_id: str | None,
                    p: Principal) -> list[pb.TaskInfo]:
        """The caller's newest unfinished tasks in `state` (queued, or sent to an endpoint)."""
        out = []
        for t in reversed(self.d.tasks.values()):  # submission order, newest last
            if t.state is not state or (endpoint_id and t.endpoint_id != endpoint_id) or \
                    not (p.is_admin or t.owner == p.user):
                continue
            out.append(self._task_info(t.task_id, t.function_id, t.state, t.endpoint_id,
                                       t.reason, t.submitted_at))
            if len(out) >= limit:
                break
        return out

    @_rpc
    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        """The caller's view: their tasks and functions, the endpoints they may use
        (admins: the whole hub). The counters are the hub's own operational totals."""
        p = caller()
        everything = p.is_admin
        by_state, functions, (blobs, blob_bytes) = await self.store.counts(
            None if everything else p.user)
        # The store knows a task is unfinished; memory knows whether it was sent yet.
        unfinished = by_state.pop(TaskState.QUEUED, 0) + by_state.pop(TaskState.DISPATCHED, 0)
        sent = sum(1 for t in self.d.tasks.values() if t.state is TaskState.DISPATCHED
                   and (everything or t.owner == p.user))
        sent = min(sent, unfinished)
        for s, n in ((TaskState.QUEUED, unfinished - sent), (TaskState.DISPATCHED, sent)):
            if n:
                by_state[s] = n
        visible = [rec for rec in self.d.endpoints.values()
                   if everything or self.access.may_use_endpoint(p.user, rec)]
        return HubStatus(
            version=self.version, uptime_s=time.time() - self.started,
            endpoints_online=sum(1 for rec in visible if rec.endpoint_id in self.d.links),
            endpoints_total=len(visible),
            tasks_by_state={s.name: n for s, n in by_state.items()},
            functions=functions, store_path=self.store.path,
            counters={**self.d.counters,
                      "storage_full": self.d.budget.refusals + self.store.full_commits},
            blobs=blobs, blob_bytes=blob_bytes,
        ).to_proto()


    # ------------------------------------------------------------ sharing, health
    @_rpc
    async def Share(self, request: pb.ShareRequest, context: Any) -> pb.ShareReply:
        p = caller()
        users = [check_user_name(u) for u in request.users[:1000]]
        if not users:
            raise errors.InvalidRequest("share with whom? name at least one user")
        object_id = self.access.owner_of(p, request.kind, request.ref)
        await self.store.put_shares(request.kind, object_id, users, request.revoke)
        now = self.access.share(request.kind, object_id, users, request.revoke)
        log.info("%s %s %s %s %s", p.user, "unshared" if request.revoke else "shared",
                 request.kind, object_id, ",".join(users))
        return pb.ShareReply(users=now)

    async def Health(self, request: pb.HealthRequest, context: Any) -> pb.HealthReply:
        return pb.HealthReply(version=self.version)

    # ------------------------------------------------------------ big payloads
    @_rpc
    async def PutBlob(self, request_iterator: Any, context: Any) -> pb.BlobRef:
        """Arguments too big for one message, uploaded before the Submit that uses them."""
        read = chunk_reader(context)
        first = await read()
        if first is None:
            raise errors.InvalidRequest("empty upload: the first chunk says what follows")
        if first.task_id or first.endpoint_id:
            raise errors.InvalidRequest("task_id and endpoint_id are for endpoint uploads")
        return await self.blobs.receive(first, read, owner=caller().user)

    async def GetBlob(self, request: pb.GetBlobRequest, context: Any) -> Any:
        """A result too big for one message; only the task's submitter may fetch it."""
        async with answering(context, "GetBlob"):
            blob = await self.blobs.meta(check_blob_id(request.blob_id))
            if blob.owner != caller().user:
                raise errors.PermissionDenied(f"blob {request.blob_id} belongs to another user")
            async for chunk in self.blobs.stream(blob, request.offset):
                yield chunk


_FINAL = (pb.SUCCESS, pb.FAILED, pb.CANCELLED, pb.PURGED)
