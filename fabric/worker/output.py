"""What tasks print: captured in the worker, kept per task as a bounded tail.

`fabric.worker.main` points the worker's fds 1 and 2 (so `print`, `os.write(1,
...)`, C libraries and programs a task runs) at a pipe read by a thread of
this module, which keeps only the last `limit` bytes written since the
current task began and counts the rest as cut. The worker calls `begin()`
before each task and `take()` after it; the tail goes back with the task's
result (`WorkResult.output`), never into the endpoint's log, so a task that
prints 200 MiB costs `limit` bytes of memory, not 200 MiB of log.

A per-task cost matters (a worker runs thousands of tasks a second): a task
that printed nothing costs `take()` one lock, one ioctl and two flushes.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import sys
import termios
import threading

_CHUNK = 1 << 16


class OutputTail:
    """Takes over fds 1 and 2 of this process; `limit` 0 discards all output."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._cut = 0  # bytes of the current task's output dropped before the tail
        self._read_fd: int | None = None
        if not self.limit:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
            return
        read_fd, write_fd = os.pipe()  # not inheritable: children get only fds 1 and 2
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._read_fd = read_fd
        threading.Thread(target=self._read_forever, name="fabric-output-tail",
                         daemon=True).start()

    @property
    def fd(self) -> int | None:
        """The pipe's reading end (a forked child should not keep it)."""
        return self._read_fd

    def begin(self) -> None:
        """A task starts: what was written before is not its output."""
        with self._lock:
            self._tail.clear()
            self._cut = 0

    def take(self) -> tuple[bytes, int]:
        """The task that just ended: (the tail of its output, bytes cut before it)."""
        if self._read_fd is None:
            return b"", 0
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a task may have closed or replaced it
                pass
        with self._lock:
            # What is still in the pipe was written before now; only that much is read
            # here (a child of the task may go on writing for ever).
            self._read_pending(bytes_waiting(self._read_fd))
            out, cut = bytes(self._tail), self._cut
            self._tail.clear()
            self._cut = 0
        return out, cut

    def _read_forever(self) -> None:
        assert self._read_fd is not None
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            poller.poll()
            # Read and keep under the lock, so take() never misses bytes in flight.
            with self._lock:
                try:
                    data = os.read(self._read_fd, _CHUNK)
                except BlockingIOError:
                    continue  # take() got there first
                if not data:
                    return  # every writer is gone
                self._keep(data)

    def _read_pending(self, n: int) -> None:
        while n > 0:
            try:
                data = os.read(self._read_fd, min(n, _CHUNK))  # type: ignore[arg-type]
            except BlockingIOError:
                return
            if not data:
                return
            self._keep(data)
            n -= len(data)

    def _keep(self, data: bytes) -> None:
        tail = self._tail
        tail += data
        over = len(tail) - self.limit
        if over > 0:
            del tail[:over]
            self._cut += over


def bytes_waiting(fd: int) -> int:
    """Bytes waiting to be read from pipe `fd` (0 when it cannot tell)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


__all__ = ["OutputTail", "bytes_waiting"]
