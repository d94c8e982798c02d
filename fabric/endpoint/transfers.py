"""The endpoint's big payloads: arguments to fetch before a task can run, results
to upload before they can be sent.

Payloads bigger than one message (`fabric.blobs.is_big`) do not travel on the
task stream: the hub sends a task naming its argument blob, and the endpoint
fetches it here, then hands the task to its engine; a big result is uploaded
here first, and the result message names the blob.

Transfers use a connection of their own, so a 200 MB download never queues
heartbeats or other tasks behind it on the link's TCP connection. While the
hub is away (or the link is down) a transfer waits and retries, and so does a
result the hub has no disk space for yet (it stays in the outbox meanwhile:
the task already ran, so it is held, never failed); what the hub refuses
outright (the task went elsewhere, the payload is too big) is final and
raised as the FabricError it is.

Lifecycle: made by the agent at start, `await close()` at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from fabric import blobs, config, credentials, errors
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.endpoint.link_events import Result
from fabric.serialize import ErrorInfo
from fabric.worker.runtime import WorkItem, WorkResult
from fabric.worker.trace import ON as _TON, trace as _trace

log = logging.getLogger("fabric.endpoint")

T = TypeVar("T")

#: Downloads and uploads at once: more only splits the same bandwidth and
#: holds more payloads in memory.
CONCURRENT_TRANSFERS = 4
#: Each attempt keeps retrying a broken connection this long before the agent
#: checks whether it still wants the payload.
ATTEMPT_S = 10.0
#: A link that is reconnecting: the hub does not know us yet, retry.
_WAIT_FOR_LINK = (errors.EndpointOffline, errors.HubUnavailable)
#: The hub's disk is full: it takes the payload once space is freed.
_WAIT_FOR_ROOM = (errors.StorageFull,)
#: Longest wait between two tries.
RETRY_MAX_S = 2.0


class Transfers:
    def __init__(self, hub: str, tls_ca: str | None, metadata: Any) -> None:
        self.hub = hub
        self.tls_ca = tls_ca
        self.metadata = metadata
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.EndpointServiceStub | None = None
        self._slots = asyncio.Semaphore(CONCURRENT_TRANSFERS)

    @property
    def stub(self) -> pb_grpc.EndpointServiceStub:
        if self._stub is None:
            # Its own connection: gRPC would otherwise share the link's.
            options = [*config.grpc_options(), ("grpc.use_local_subchannel_pool", 1)]
            self._channel = credentials.open_channel(self.hub, options, tls_ca=self.tls_ca)
            self._stub = pb_grpc.EndpointServiceStub(self._channel)
        return self._stub

    async def fetch_args(self, item: WorkItem, blob_id: str,
                         endpoint_id: Callable[[], str | None]) -> WorkItem | WorkResult | None:
        """`item` with its arguments in place; a failed result when they cannot be had
        (deleted, damaged); None when the hub no longer has the task out here (it was
        requeued elsewhere while our link was down, or cancelled)."""
        try:
            if _TON:
                _trace(item.task_id, 'e_fetch')
            item.args = await self._until_done(lambda: blobs.download(
                self.stub, blob_id, self.metadata, task_id=item.task_id,
                endpoint_id=endpoint_id() or "", retry_for=ATTEMPT_S),
                f"arguments of task {item.task_id}")
            if _TON:
                _trace(item.task_id, 'e_fetched')
        except errors.PermissionDenied:
            return None
        except errors.FabricError as exc:
            return WorkResult(item.task_id, False, error=ErrorInfo(
                "PayloadUnavailable", f"could not fetch the task's arguments: {exc}", "", b"",
                "system"))
        return item

    async def upload_value(self, result: Result, value: bytes,
                           endpoint_id: Callable[[], str | None]) -> Result | None:
        """`result` (whose big `value` is kept apart) naming the uploaded blob (after
        waiting, as long as it takes, for the hub to have room), or, if the hub
        refused it (too big), a failure saying so. None when the hub no longer has
        the task out here: nobody waits for it."""
        tid = result.task_id
        try:
            if _TON:
                _trace(tid, 'e_upload')
            blob_id = await self._until_done(lambda: blobs.upload(
                self.stub, value, self.metadata, task_id=tid,
                endpoint_id=endpoint_id() or "", retry_for=ATTEMPT_S),
                f"result of task {tid}")
            if _TON:
                _trace(tid, 'e_uploaded')
        except errors.PermissionDenied:
            return None
        except errors.FabricError as exc:
            return Result(tid, False, runtime_s=result.runtime_s, error=ErrorInfo(
                type(exc).__name__, f"the result ({len(value)} bytes) could not be stored at "
                f"the hub: {exc}", "", b"", "system"))
        return dataclasses.replace(result, value_blob=blob_id)

    async def _until_done(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """`attempt()` (one transfer), again and again while the link is away; a
        refusal from the hub is raised."""
        delay = 0.05
        said = False
        while True:
            try:
                async with self._slots:  # (not held while waiting: others may go)
                    return await attempt()
            except _WAIT_FOR_LINK as exc:
                log.debug("%s: %s; retrying", what, exc)
            except _WAIT_FOR_ROOM as exc:
                if not said:  # once per transfer, not every retry
                    log.warning("%s: %s; kept here and retried", what, exc)
                    said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None


__all__ = ["Transfers"]
