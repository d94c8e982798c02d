"""The hub's side of big payloads: blob files beside the task store.

An argument or result too big for one message arrives as a PutBlob stream of
chunks. Each chunk goes straight to a `.part` file (on a thread, hashed as it
is written), so the hub never holds a whole payload in memory; once the size
and SHA-256 match what the first chunk declared, the file is renamed and its
row committed, and only then does the uploader get the blob id. GetBlob reads
a file back in chunks, from any offset. Like every other payload, a blob is
opaque bytes here: nothing is ever unpickled.

Who may upload or fetch which blob is decided by the servicers (client_api,
endpoint_api); this module stores, streams and sweeps. Room on the disk is the
hub's budget (`fabric.hub.disk`): an upload holds its size while it runs, and
a result may use room that arguments may not. A blob is deleted once
nothing refers to it (see `TaskStore.sweep_blobs`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from fabric import config, errors
from fabric._proto import fabric_pb2 as pb
from fabric.hub.disk import DiskBudget, storage_full
from fabric.hub.store import BlobRow, TaskStore

log = logging.getLogger("fabric.hub")

BLOB_ID_RE = re.compile(r"^b-[0-9a-f]{32}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

ReadChunk = Callable[[], Awaitable[Any]]  # the next BlobChunk, or None at the end


def chunk_reader(context: Any) -> ReadChunk:
    """Reads an upload stream's chunks: None at its end, InvalidRequest for a frame
    that is not a BlobChunk (gRPC itself would end the call with UNKNOWN)."""

    async def read() -> Any:
        try:
            chunk = await context.read()
        except DecodeError as exc:
            raise errors.InvalidRequest(f"malformed BlobChunk: {exc}") from None
        return None if chunk is grpc.aio.EOF else chunk

    return read


def blob_dir(store_path: str) -> Path:
    """Where a store's blobs live: beside it (a private temporary one for ':memory:')."""
    if store_path == ":memory:":
        import tempfile

        return Path(tempfile.mkdtemp(prefix="fabric-blobs-"))
    return Path(store_path + ".blobs")


def check_blob_id(blob_id: str) -> str:
    """A well-formed blob id (it names a file: nothing else may pass)."""
    if not BLOB_ID_RE.match(blob_id):
        raise errors.InvalidRequest(f"malformed blob id {blob_id[:80]!r}")
    return blob_id


class Blobs:
    """Blob files in one directory, with their rows in the task store.

    Lifecycle: `await open()` (removes what a crash left half-written), then
    receive/stream/meta, `await sweep()` from the hub's purge loop."""

    def __init__(self, store: TaskStore, directory: Path, max_size: int,
                 max_per_user: int = config.DEFAULT_MAX_STORED_PER_USER,
                 budget: DiskBudget | None = None) -> None:
        self.store = store
        self.dir = directory
        self.max_size = max_size
        self.max_per_user = max_per_user  # arguments waiting, per user (0: no cap)
        self.budget = budget or DiskBudget(directory, store)
        self.received = 0  # blobs stored since start (status counters)

    async def open(self) -> None:
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        known = await self.store.blob_ids()
        stale = [p for p in await asyncio.to_thread(lambda: list(self.dir.iterdir()))
                 if p.name not in known]
        if stale:  # uploads cut off by a crash, or renamed but never committed
            await asyncio.to_thread(_unlink_all, stale)
            log.info("removed %d unfinished blob uploads", len(stale))

    def path(self, blob_id: str) -> Path:
        return self.dir / check_blob_id(blob_id)

    async def meta(self, blob_id: str) -> BlobRow:
        row = await self.store.get_blob(check_blob_id(blob_id))
        if row is None:
            raise errors.BlobNotFound(f"unknown blob {blob_id!r}: never uploaded, or "
                                      "deleted once its task was done (or unused for too long)")
        return row

    # ------------------------------------------------------------ upload
    async def receive(self, first: pb.BlobChunk, read: ReadChunk, owner: str,
                      task_id: str = "") -> pb.BlobRef:
        """Store the stream that starts with `first` (read the rest with `read`).
        Nothing is kept unless every byte arrived and matches the declared digest."""
        size, sha = first.size, first.sha256  # the digest may come last instead
        if size < 0:  # malformed, not too large
            raise errors.InvalidRequest(f"the first chunk must declare the payload's size "
                                        f"in bytes, not {size}")
        if size > self.max_size:
            raise errors.PayloadTooLarge(f"the limit is {self.max_size} bytes; this payload "
                                         f"is {size}")
        _check_digest(sha)
        if not task_id and self.max_per_user:  # a user's arguments (results never wait)
            waiting = await self.store.waiting_args_bytes(owner)
            if waiting and waiting + size > self.max_per_user:
                # Backpressure, not failure: the client waits and retries (a lone
                # payload under the size limit always gets in).
                raise errors.QueueFull(
                    f"user {owner} keeps {waiting} bytes of arguments at the hub; with "
                    f"{size} more that would pass its cap of {self.max_per_user}: retry "
                    "when some tasks finish")
        result = bool(task_id)  # a task that already ran: it may use room new work may not
        if first.check_only:
            self.budget.check(size, result=result, in_store=False)
            return pb.BlobRef(size=size, sha256=sha)
        with self.budget.claim(size, result=result):  # StorageFull: the uploader waits
            return await self._receive(first, read, owner, task_id, size, sha)

    async def _receive(self, first: pb.BlobChunk, read: ReadChunk, owner: str, task_id: str,
                       size: int, sha: str) -> pb.BlobRef:
        blob_id = "b-" + uuid.uuid4().hex
        part = self.dir / (blob_id + ".part")
        sink = _Sink(part)
        try:
            got = 0
            chunk: Any = first
            while True:
                got += len(chunk.data)
                if got > size:
                    raise errors.InvalidRequest(f"more bytes than the {size} declared")
                if chunk.data:
                    await asyncio.to_thread(sink.write, chunk.data)
                chunk = await read()
                if chunk is None:  # end of stream
                    break
                if chunk.sha256:
                    sha = _check_digest(chunk.sha256)
            if got != size:
                raise errors.InvalidRequest(f"upload ended after {got} of {size} bytes")
            if not sha:
                raise errors.InvalidRequest("the upload never said its SHA-256 (first or "
                                            "last chunk)")
            if sink.digest() != sha:
                raise errors.InvalidRequest("payload damaged in transit: its SHA-256 differs "
                                            "from the one declared")
            await asyncio.to_thread(sink.finish, self.dir / blob_id)
            await self.store.put_blob(BlobRow(blob_id, owner, size, sha, task_id, time.time(),
                                              False))
        except BaseException:
            # Shielded: when the uploader goes away, gRPC cancels this call, and a
            # cancelled to_thread job that has not started yet would never run.
            # (A file whose row was not stored goes too: nothing would ever sweep it.)
            await asyncio.shield(asyncio.to_thread(sink.discard, self.dir / blob_id))
            raise
        self.received += 1
        return pb.BlobRef(blob_id=blob_id, size=size, sha256=sha)

    # ------------------------------------------------------------ download
    async def stream(self, row: BlobRow, offset: int) -> AsyncIterator[pb.BlobChunk]:
        """The blob from `offset` on, in chunks; the first says its size and digest."""
        if not 0 <= offset <= row.size:
            raise errors.InvalidRequest(f"offset {offset} is outside blob {row.blob_id} "
                                        f"({row.size} bytes)")
        step = config.BLOB_CHUNK_BYTES
        try:
            f = await asyncio.to_thread(open, self.path(row.blob_id), "rb")
        except FileNotFoundError:  # swept between the lookup and now
            raise errors.BlobNotFound(f"blob {row.blob_id} was deleted") from None
        try:
            pos, first = offset, True
            while first or pos < row.size:
                data = await asyncio.to_thread(os.pread, f.fileno(), step, pos)
                if not data and pos < row.size:
                    raise errors.FabricError(f"blob {row.blob_id} is shorter on disk than "
                                             "recorded")
                pos += len(data)
                if first:
                    yield pb.BlobChunk(data=data, size=row.size, sha256=row.sha256)
                    first = False
                else:
                    yield pb.BlobChunk(data=data)
        finally:
            f.close()

    # ------------------------------------------------------------ cleanup
    async def sweep(self, unused_ttl_s: float) -> int:
        """Delete blobs nothing refers to any more; returns how many."""
        ids = await self.store.sweep_blobs(time.time() - unused_ttl_s)
        if ids:
            await asyncio.to_thread(_unlink_all, [self.dir / i for i in ids])
        return len(ids)


def _check_digest(sha: str) -> str:
    if sha and not SHA256_RE.match(sha):
        raise errors.InvalidRequest("a chunk's SHA-256 must be 64 lower-case hex digits, "
                                    f"not {sha[:80]!r}")
    return sha


class _Sink:
    """A `.part` file being written and hashed; becomes the blob on finish()."""

    def __init__(self, part: Path) -> None:
        self.part = part
        self.file = open(part, "wb")
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:  # the disk filled under us (someone else's files)
            raise storage_full(exc) or exc
        self.hash.update(data)  # releases the GIL: other threads run meanwhile

    def digest(self) -> str:
        return self.hash.hexdigest()

    def finish(self, final: Path) -> None:
        # Durable as the store's commits are (synchronous=NORMAL): a process crash
        # loses nothing once written; the rename makes it visible whole or not at all.
        try:
            self.file.close()  # (flushes what is buffered: the disk may be full now)
        except OSError as exc:
            raise storage_full(exc) or exc
        os.replace(self.part, final)

    def discard(self, final: Path) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # its bytes are not wanted
        self.part.unlink(missing_ok=True)
        final.unlink(missing_ok=True)


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete %s: %s", p, exc)


__all__ = ["Blobs", "blob_dir", "check_blob_id", "chunk_reader"]
