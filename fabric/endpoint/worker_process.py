"""The worker pool's handle on one worker process (asyncio, in the endpoint process).

`WorkerPool` (fabric/endpoint/pool.py) starts workers with `spawn_worker` and
speaks to each through a `WorkerProcess`: frames to its stdin, frames from its
stdout (the protocol is in fabric/worker/main.py), what it has outstanding.

A worker's death is seen when the process exits, not when its stdout ends: a
task may fork a child that inherits the pipes (fork without exec keeps every
fd, close-on-exec or not) and holds them open long after the worker died,
for ever if the child never exits. So the moment the worker process exits,
what it wrote is taken from the pipe and its output stream is ended; the
pool's reader then finishes and settles the worker's tasks at once.
"""

from __future__ import annotations

import asyncio
import os
from itertools import islice
from typing import Any

from fabric.endpoint.supervision import Kill, StartClock, running_index
from fabric.worker.main import HEADER_BYTES, decode_frame, encode_frame
from fabric.worker.output import bytes_waiting
from fabric.worker.runtime import WorkItem

#: Bytes the reader of a worker's frames buffers before it pauses the pipe.
READ_LIMIT = 1 << 20


class _WorkerProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess protocol, plus: when the process exits, its stdout ends."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._process_transport = transport

    def process_exited(self) -> None:
        pipe = self._process_transport.get_pipe_transport(1)  # type: ignore[attr-defined]
        if pipe is not None and not pipe.is_closing() and self.stdout is not None:
            rest = _pending_bytes(pipe.get_extra_info("pipe").fileno())
            if rest:
                self.stdout.feed_data(rest)
            pipe.close()  # EOF for the reader, whoever else holds the pipe's other end
        super().process_exited()


def _pending_bytes(fd: int) -> bytes:
    """What is in the pipe now (the fd is non-blocking). Only that much: a child
    the worker left behind may go on writing."""
    left = bytes_waiting(fd)
    chunks = []
    while left > 0:
        try:
            chunk = os.read(fd, left)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class WorkerProcess:
    """One worker as the pool sees it: its process, pipes and outstanding tasks."""

    __slots__ = ("proc", "pid", "outstanding", "functions", "done", "progress_fd", "clock",
                 "accepting", "kill", "gpu")

    def __init__(self, proc: asyncio.subprocess.Process, progress_fd: int,
                 gpu: str | None = None) -> None:
        self.proc = proc
        self.gpu = gpu  # the one GPU this worker sees, when the pool pins GPUs
        self.pid: int = proc.pid
        self.progress_fd = progress_fd  # the worker counts tasks it started here
        self.done = 0  # results received from it
        # task_id -> item, in the order sent: the worker runs them in this order.
        self.outstanding: dict[str, WorkItem] = {}
        self.functions: set[str] = set()  # bodies this worker has already been sent
        self.clock = StartClock()  # when its current task started (read by the watchdog)
        self.accepting = True  # False once killed or its stream ended: no more tasks
        self.kill: Kill | None = None  # why the pool killed it, if it did

    def running(self, started: int | None) -> WorkItem | None:
        """The task this worker started last, unless its result is already in."""
        i = running_index(started, self.done, len(self.outstanding))
        return None if i is None else next(islice(self.outstanding.values(), i, None))

    def send(self, obj: Any) -> None:
        header, payload = encode_frame(obj)
        # Never awaits drain: submit() must not block. What is buffered is
        # bounded by the per-worker cap; a dead pipe is noticed by the reader.
        self.proc.stdin.write(header)
        self.proc.stdin.write(payload)

    async def read_frame(self) -> Any:
        """The next frame; IncompleteReadError once the worker's output has ended."""
        return await read_frame(self.proc.stdout)

    def abandon_stdin(self) -> None:
        """Close the pipe to a dead (or hopeless) worker without flushing it: a child
        that inherited its other end may never read what is buffered."""
        pipe = self.proc.stdin.transport
        # Closing already, with nothing left to flush: its end is under way.
        if not pipe.is_closing() or pipe.get_write_buffer_size():
            pipe.abort()


async def spawn_worker(argv: list[str], *, pass_fds: tuple[int, ...],
                       env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start a worker process (not waiting for it to be ready) whose stdout ends
    as soon as it exits."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _WorkerProtocol(limit=READ_LIMIT, loop=loop), *argv, pass_fds=pass_fds,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=None, env=env)  # its own messages go where the endpoint's go
    return asyncio.subprocess.Process(transport, protocol, loop)


async def read_frame(stream: asyncio.StreamReader) -> Any:
    header = await stream.readexactly(HEADER_BYTES)
    return decode_frame(await stream.readexactly(int.from_bytes(header, "little")))


def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


__all__ = ["WorkerProcess", "spawn_worker", "read_frame", "kill"]
