"""Moving payloads bigger than one message: the caller's side of PutBlob and GetBlob.

Clients upload big task arguments and fetch big results; endpoints fetch big
arguments and upload big results. ClientService and EndpointService offer the
same two calls, so one pair of functions serves both: pass the service's stub.

A blob travels as a stream of `config.BLOB_CHUNK_BYTES` chunks. The first
chunk declares the whole blob's size, and a last, empty one its SHA-256
(hashed as the chunks go, so hashing overlaps the transfer): the hub refuses
an upload that does not match before it hands out an id, and a downloader
checks what it got against the digest the hub sends. A download that breaks off resumes where
it stopped; an upload starts again (the hub keeps no partial uploads).

The hub's side is `fabric.hub.blobs`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, AsyncIterator, Sequence

import grpc

from fabric import config, errors
from fabric._proto import fabric_pb2 as pb
from fabric.wire import from_rpc_error, is_backpressure, is_storage_full, is_transient

Metadata = Sequence[tuple[str, str]]


#: Chunks this big are hashed on a thread (a thread hop costs about as much as
#: hashing 64 KiB).
THREAD_HASH_BYTES = 64 * 1024
#: Uploads this big or bigger ask the hub first whether it would take them.
CHECK_FIRST_BYTES = 8 * 1024 * 1024


def is_big(payload: bytes) -> bool:
    """Too big to ride inside a task or result message: goes as a blob."""
    return len(payload) > config.INLINE_PAYLOAD_MAX


async def _chunk_stream(data: bytes, task_id: str,
                        endpoint_id: str) -> AsyncIterator[pb.BlobChunk]:
    # Made lazily, one chunk at a time: a 256 MiB upload never holds a second copy.
    # Each chunk is hashed on a thread while gRPC sends the one before; the digest
    # goes last.
    view = memoryview(data)
    step = config.BLOB_CHUNK_BYTES
    hashing = _Hasher()
    first = bytes(view[:step])
    await hashing.update(first)
    yield pb.BlobChunk(data=first, size=len(data), task_id=task_id, endpoint_id=endpoint_id)
    for i in range(step, len(data), step):
        piece = bytes(view[i:i + step])
        await hashing.update(piece)
        yield pb.BlobChunk(data=piece)
    yield pb.BlobChunk(sha256=hashing.hexdigest())


class _Hasher:
    """SHA-256 of a stream of chunks; big chunks are hashed on a thread (hashlib
    releases the GIL), so the loop keeps moving the transfer meanwhile."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    async def update(self, data: bytes) -> None:
        if len(data) >= THREAD_HASH_BYTES:
            await asyncio.to_thread(self._hash.update, data)
        elif data:
            self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


async def upload(stub: Any, data: bytes, metadata: Metadata, *, task_id: str = "",
                 endpoint_id: str = "", retry_for: float = 30.0) -> str:
    """Store `data` at the hub; returns its blob id. Retried from the start while the
    hub is unreachable, for up to `retry_for` seconds; other refusals raise at once."""
    check = pb.BlobChunk(size=len(data), task_id=task_id, endpoint_id=endpoint_id,
                         check_only=True)
    deadline = time.monotonic() + retry_for
    delay = 0.05
    checked = len(data) < CHECK_FIRST_BYTES
    while True:
        try:
            if not checked:
                # Ask first: a refusal (too big, no room, not yours) costs one small call,
                # not the whole upload. (A small upload just goes: a refusal answers it
                # soon enough.)
                await stub.PutBlob(iter([check]), metadata=metadata)
                checked = True
            ref = await stub.PutBlob(_chunk_stream(data, task_id, endpoint_id),
                                     metadata=metadata)
            return ref.blob_id
        except grpc.aio.AioRpcError as exc:
            late = time.monotonic() + delay > deadline
            if is_backpressure(exc):
                # The hub is up and asks us to wait (our stored arguments are at its cap).
                deadline = time.monotonic() + retry_for
            elif exc.code() == grpc.StatusCode.INTERNAL and checked and not late:
                # grpc.aio can report a refusal that arrives mid-upload as INTERNAL
                # (grpc/grpc#36066): check again, which gets the hub's real answer.
                checked = False
            elif not (is_transient(exc) or is_storage_full(exc)) or late:
                # (No room at the hub: retried as long as an unreachable hub is.)
                raise from_rpc_error(exc) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def download(stub: Any, blob_id: str, metadata: Metadata, *, task_id: str = "",
                   endpoint_id: str = "", retry_for: float = 30.0) -> bytes:
    """The blob's bytes, checked against the digest the hub recorded at upload.
    A broken stream resumes from the last byte received, for up to `retry_for`
    seconds of trying."""
    parts: list[bytes] = []
    got = 0
    size, sha = -1, ""
    hashing = _Hasher()  # as the chunks arrive: checking overlaps the transfer
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        try:
            call = stub.GetBlob(pb.GetBlobRequest(blob_id=blob_id, offset=got, task_id=task_id,
                                                  endpoint_id=endpoint_id), metadata=metadata)
            first = True
            async for chunk in call:
                if first:
                    size, sha, first = chunk.size, chunk.sha256, False
                if chunk.data:
                    parts.append(chunk.data)
                    got += len(chunk.data)
                    await hashing.update(chunk.data)
            break
        except grpc.aio.AioRpcError as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise from_rpc_error(exc) from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) != size or hashing.hexdigest() != sha:
        raise errors.PayloadCorrupt(f"blob {blob_id} arrived damaged: {len(data)} bytes "
                                    f"of {size}, or its SHA-256 differs from the upload's")
    return data


__all__ = ["download", "is_big", "upload"]
