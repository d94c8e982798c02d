"""EndpointService: the one bidirectional stream each endpoint keeps open.

The endpoint dials out and says Hello; the hub answers Welcome with the
endpoint's stable id. From then on two loops share the stream: the reader
takes credits, results and heartbeats; the writer sends task batches within
the credits, result acks and cancels, coalescing whatever accumulated while
its previous write was in flight (no timers on the hot path).
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import asyncio
import logging
import time
import uuid
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric import errors
from fabric.hub.access import Access
from fabric.hub.auth import NO_AUTH
from fabric.hub.blobs import Blobs, check_blob_id, chunk_reader
from fabric.hub.dispatch import Dispatcher, EndpointRecord, Link
from fabric.hub.guard import answering, audit_refusal, caller
from fabric.hub.store import TaskStore
from fabric.models import Capabilities
from fabric.names import endpoint_name
from fabric.wire import abort, to_status

log = logging.getLogger("fabric.hub")

MAX_CREDITS = 1_000_000
MAX_UNCLAIMED = 10_000  # result blobs awaiting their result, before stale ones are pruned


class EndpointApi(pb_grpc.EndpointServiceServicer):
    def __init__(self, dispatcher: Dispatcher, store: TaskStore, access: Access, blobs: Blobs,
                 heartbeat_period: float) -> None:
        self.d = dispatcher
        self.blobs = blobs
        # Result blobs uploaded and not yet claimed by their result: blob id -> task id.
        self.uploaded: dict[str, str] = {}
        self.access = access
        self.store = store
        self.heartbeat_period = heartbeat_period
        self.handlers: dict[Link, asyncio.Task[Any]] = {}

    async def _reject(self, context: Any, exc: errors.FabricError) -> None:
        await abort(context, exc)  # the status and kind from fabric.wire, as everywhere

    async def _next(self, context: Any) -> Any:
        """The next message on the stream; a frame that is not an EndpointMessage ends
        the stream with INVALID_ARGUMENT (gRPC itself would say UNKNOWN)."""
        try:
            return await context.read()
        except DecodeError as exc:
            await self._reject(context, errors.InvalidRequest(f"malformed EndpointMessage: {exc}"))

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        first = await self._next(context)
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await self._reject(context, errors.InvalidRequest("the first message must be a Hello"))
        hello = first.hello
        try:
            endpoint_name(hello.name)
        except errors.InvalidName as exc:
            await self._reject(context, exc)
        p = caller()
        if p is not NO_AUTH and not p.may_connect(hello.name):
            exc = errors.PermissionDenied(f"this endpoint token is for endpoint {p.endpoint!r}, "
                                          f"not {hello.name!r}")
            audit_refusal(context.peer(), "Connect", exc, p)
            code, details, trailers = to_status(exc)
            context.set_trailing_metadata(trailers)
            await context.abort(code, details)
        if len(hello.allow_functions) + len(hello.allow_owners) > 100_000:
            await self._reject(context, errors.InvalidRequest("allow-list too long (max 100000)"))
        caps = Capabilities.from_proto(hello.capabilities)
        owner = p.user
        eid = await self.store.upsert_endpoint(owner, hello.name, "ep-" + uuid.uuid4().hex,
                                               caps.to_dict())
        rec = self.d.endpoints.get(eid) or EndpointRecord(eid, hello.name, owner, caps)
        rec.capabilities, rec.last_seen = caps, time.time()
        self.access.set_allow_list(eid, hello.allow_functions, hello.allow_owners)
        link = Link(rec)
        await context.write(pb.HubMessage(welcome=pb.Welcome(
            endpoint_id=eid, heartbeat_period_s=self.heartbeat_period)))
        self.d.link_up(link, hello.held_task_ids)
        self.handlers[link] = asyncio.current_task()  # type: ignore[assignment]
        log.info("endpoint %s (%s) connected from %s: %d workers, Python %s",
                 rec.name, eid, context.peer(), caps.workers, caps.python_version)
        writer = asyncio.create_task(self._write_loop(link, context))
        handler = asyncio.current_task()

        def writer_ended(w: asyncio.Task[None]) -> None:
            # A bug in the writer must not leave a link that reads but never sends
            # (the endpoint would see a silent hub while its tasks sit here): end the
            # link, so its tasks are requeued and the endpoint reconnects.
            if not w.cancelled() and w.exception() is not None and handler is not None:
                log.error("endpoint %s: link writer failed; dropping the link", rec.name,
                          exc_info=w.exception())
                handler.cancel()

        writer.add_done_callback(writer_ended)
        try:
            await self._read_loop(link, context, first)
        finally:
            writer.cancel()
            self.handlers.pop(link, None)
            rec.last_seen = time.time()
            self.store.touch_endpoint(eid, rec.last_seen)
            self.d.link_lost(link)
            log.info("endpoint %s (%s) disconnected", rec.name, eid)

    async def _read_loop(self, link: Link, context: Any, first: pb.EndpointMessage) -> None:
        msg = first
        while True:
            link.last_heard = time.monotonic()
            if msg.credits:
                if not 0 < msg.credits <= MAX_CREDITS:
                    await self._reject(context, errors.InvalidRequest(f"bad credit grant {msg.credits}"))
                link.credits = min(link.credits + msg.credits, MAX_CREDITS)
                link.wake.set()
            if msg.results:
                self.d.on_results(link, [self._checked(link, r) for r in msg.results])
            if msg.draining and not link.draining:
                link.draining, link.credits = True, 0
                moved = self.d.reroute_queue(link.endpoint_id)
                log.info("endpoint %s is draining; %d queued tasks routed elsewhere",
                         link.endpoint.name, moved)
            if msg.returned:
                self.d.hand_back(link, msg.returned)
            if msg.batch_echo:
                link.heard_batch_echo(msg.batch_echo, time.time())
            if msg.HasField("heartbeat"):
                hb = msg.heartbeat
                link.load, link.free_slots, link.remote_queued = hb.load, hb.free_slots, hb.queued
                if hb.echo:
                    link.heard_echo(hb.echo, time.time())
                link.endpoint.last_seen = time.time()
            msg = await self._next(context)
            if msg is grpc.aio.EOF:
                return

    async def _write_loop(self, link: Link, context: Any) -> None:
        while not link.closed:
            try:
                async with asyncio.timeout(self.heartbeat_period):
                    await link.wake.wait()
            except TimeoutError:
                await context.write(pb.HubMessage(heartbeat=pb.Heartbeat(sent_at=time.time())))
                continue
            if link.in_flight:
                # Busy link: let this turn's other arrivals (submissions, results that
                # free credits) join the batch; one message per task would halve the
                # no-op rate. An idle link sends at once, for the lone task's latency.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            link.wake.clear()
            msg = self.d.take(link)
            if msg is not None:
                await context.write(msg)
                if _TON and msg.tasks:
                    _trace(msg.tasks[0].task_id, 'h_written')

    # ------------------------------------------------------------ big payloads
    def _checked(self, link: Link, r: pb.TaskResult) -> pb.TaskResult:
        """A result naming a value blob must name the one uploaded for it; anything else
        would hand the submitter someone else's bytes, so the task fails instead."""
        if r.value_blob and self.uploaded.get(r.value_blob) != r.task_id:
            log.warning("endpoint %s sent a result for task %s naming blob %s, which was not "
                        "uploaded for it", link.endpoint.name, r.task_id, r.value_blob[:40])
            return pb.TaskResult(task_id=r.task_id, state=pb.FAILED, endpoint_id=r.endpoint_id,
                                 error=pb.TaskError(
                type_name="ResultLost", kind="system",
                message=f"endpoint {link.endpoint.name} named a result payload it never "
                        "uploaded"))
        self.uploaded.pop(r.value_blob, None)
        return r

    def _link_for(self, endpoint_id: str, task_id: str) -> Link:
        """The caller's live link, holding `task_id`: an endpoint moves payloads only for
        tasks it was sent. EndpointOffline while it is not connected (retry after)."""
        link = self.d.links.get(endpoint_id)
        p = caller()
        if link is None:
            raise errors.EndpointOffline(f"endpoint {endpoint_id[:80]!r} has no open link: "
                                         "connect first")
        if p is not NO_AUTH and not (p.user == link.endpoint.owner
                                     and p.may_connect(link.endpoint.name)):
            raise errors.PermissionDenied(f"this token is not endpoint {link.endpoint.name}'s")
        if task_id not in link.in_flight:
            raise errors.PermissionDenied(f"task {task_id[:80]!r} was not sent to endpoint "
                                          f"{link.endpoint.name}")
        return link

    async def GetBlob(self, request: pb.GetBlobRequest, context: Any) -> Any:
        """The arguments of a task this endpoint holds."""
        async with answering(context, "GetBlob"):
            link = self._link_for(request.endpoint_id, request.task_id)
            t = self.d.tasks.get(request.task_id)
            if t is None or t.args_blob != check_blob_id(request.blob_id):
                raise errors.PermissionDenied(f"blob {request.blob_id} is not the arguments "
                                              f"of task {request.task_id}")
            blob = await self.blobs.meta(request.blob_id)
            started = time.monotonic()
            async for chunk in self.blobs.stream(blob, request.offset):
                yield chunk
            # gRPC's flow control holds each write until the endpoint has room: the
            # stream's time is the link's transfer time, for smallest-ETA's charges.
            link.heard_transfer(blob.size - request.offset, time.monotonic() - started)

    async def PutBlob(self, request_iterator: Any, context: Any) -> pb.BlobRef:
        """A result too big for one message, uploaded before the result that names it.
        It belongs to the task's submitter, the only one who may fetch it."""
        async with answering(context, "PutBlob"):
            read = chunk_reader(context)
            first = await read()
            if first is None:
                raise errors.InvalidRequest("empty upload: the first chunk says what follows")
            self._link_for(first.endpoint_id, first.task_id)
            t = self.d.tasks.get(first.task_id)
            if t is None:  # (in flight means live; never trust that with a KeyError)
                raise errors.PermissionDenied(f"task {first.task_id[:80]!r} is not running")
            ref = await self.blobs.receive(first, read, owner=t.owner, task_id=t.task_id)
            if ref.blob_id:
                if len(self.uploaded) >= MAX_UNCLAIMED:  # results that never came: forget them
                    self.uploaded = {b: tid for b, tid in self.uploaded.items()
                                     if tid in self.d.tasks}
                self.uploaded[ref.blob_id] = t.task_id
        return ref

    def drop(self, link: Link) -> None:
        """End a link's stream (heartbeats stopped): its handler's cleanup requeues the work."""
        task = self.handlers.pop(link, None)
        if task is not None:
            task.cancel()
