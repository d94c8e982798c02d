"""The worker process: `python -m fabric.worker --max-result-bytes N --output-tail N`.

Started and fed by the endpoint's `WorkerPool` (fabric/endpoint/pool.py),
which owns the other end of its stdin/stdout. Both sides speak length-prefixed
frames: 8-byte little-endian length, then `pickle.dumps(obj, protocol=5)` of a
plain envelope of tuples, lists, bytes, str and numbers. User data stays as
bytes inside the envelope; only `runtime.run_task` unpickles it.

    pool -> worker   ("functions", [(function_id, body), ...])
                     ("tasks", [(task_id, function_id, args), ...])
                     ("cancel", [task_id, ...])          skip these if not yet started
                     ("stop",)
    worker -> pool   ("ready", pid)                      once, at start
                     ("results", [(task_id, ok, value, error_tuple | None, runtime_s, cold,
                                   output, output_cut), ...])
                     error_tuple = (type_name, message, traceback, exception_bytes, kind)

What a task prints (fds 1 and 2) is kept per task as a bounded tail that goes
with its result (`output`; `output_cut` bytes before it were dropped; see
fabric/worker/output.py); the worker's own messages go to the stderr it was
started with, the endpoint's. A child the task forks gets neither the frame
pipes nor that stderr (see `_forget_in_forked_child`).

Results are batched adaptively: after a task the worker sends what it has if
no further task is waiting, or once the oldest unsent result is 5 ms old;
otherwise it keeps batching. A reader thread moves frames from stdin into a
queue so the worker knows, between tasks, whether more work is waiting; a
flusher thread sends results that have waited 5 ms even while a long task
runs. With `--progress-fd` the worker counts started tasks in a shared 8-byte
file, so after a crash the pool knows which task was running even though
results batched here died with the worker. A cancelled task is skipped when
its turn comes: it still counts as started and answers with a "cancelled"
row, so the pool's count of results against starts stays exact.
"""

from __future__ import annotations

from fabric.worker.trace import ON as _TON, trace as _trace

import argparse
import io
import mmap
import os
import pickle
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from fabric.config import DEFAULT_MAX_PAYLOAD, DEFAULT_OUTPUT_TAIL_BYTES
from fabric.worker.output import OutputTail
from fabric.worker.runtime import FunctionCache, run_task

HEADER_BYTES = 8
#: A finished result waits at most this long for more results to share its frame.
BATCH_WINDOW_S = 0.005
#: Size of the shared "tasks started" counter (native unsigned 64-bit).
PROGRESS_BYTES = 8
#: The row a skipped (cancelled) task answers with; the pool drops it.
_SKIPPED = (False, b"", ("TaskCancelled", "cancelled before it started", "", b"", "cancelled"), 0.0, False,
            b"", 0)


# ------------------------------------------------------------------ framing
def encode_frame(obj: Any) -> tuple[bytes, bytes]:
    """(header, payload) for one frame; kept apart so a 20 MB payload is not copied again."""
    payload = pickle.dumps(obj, protocol=5)
    return len(payload).to_bytes(HEADER_BYTES, "little"), payload


class _EnvelopeUnpickler(pickle.Unpickler):
    # Envelopes are plain containers; refusing globals means a stray or
    # hostile frame cannot make the reader import or call anything.
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"frame refers to {module}.{name}; envelopes are plain data")


def decode_frame(payload: bytes) -> Any:
    return _EnvelopeUnpickler(io.BytesIO(payload)).load()


def read_frame(stream: BinaryIO) -> Any | None:
    """The next frame from a blocking binary stream, or None at EOF."""
    header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    size = int.from_bytes(header, "little")
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decode_frame(payload)


def progress_file() -> int:
    """A fresh 8-byte file for a worker's "tasks started" counter (the pool creates it)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fabric-worker-progress", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="fabric-worker-progress-")
        os.unlink(path)
    os.ftruncate(fd, PROGRESS_BYTES)
    return fd


def read_progress(fd: int) -> int | None:
    """The counter's value, read by the pool after the worker died."""
    try:
        return int.from_bytes(os.pread(fd, PROGRESS_BYTES, 0), sys.byteorder)
    except OSError:
        return None


def worker_command(python: str, max_result_bytes: int, progress_fd: int | None = None,
                   output_tail: int = DEFAULT_OUTPUT_TAIL_BYTES) -> list[str]:
    """The command line that starts a worker (the pool runs it)."""
    cmd = [python, "-m", "fabric.worker", "--max-result-bytes", str(max_result_bytes),
           "--output-tail", str(output_tail)]
    return cmd if progress_fd is None else [*cmd, "--progress-fd", str(progress_fd)]


def worker_env(env: dict[str, str] | None) -> dict[str, str]:
    """The environment for workers: `env` plus a PYTHONPATH that finds `fabric`
    (and whatever this process can import, so functions pickled by reference load)."""
    out = dict(os.environ if env is None else env)
    paths = [str(Path(__file__).resolve().parents[2])]
    paths += [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths += [p or os.getcwd() for p in sys.path]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    out["PYTHONUNBUFFERED"] = "1"
    return out


# ------------------------------------------------------------------ the worker
class _Worker:
    def __init__(self, frames_in: BinaryIO, frames_out: BinaryIO, max_result_bytes: int,
                 progress: memoryview | None = None, output: OutputTail | None = None,
                 diagnostics: TextIO = sys.stderr) -> None:
        self.frames_out = frames_out
        self.output = output
        self.diagnostics = diagnostics  # for this worker's own messages
        self.max_result_bytes = max_result_bytes
        self.progress = progress
        self.started = 0
        self.cache = FunctionCache()
        self.pending: deque[tuple[str, str, bytes]] = deque()
        self.skip: set[str] = set()  # cancelled ids still in `pending`
        # SimpleQueue: the reader thread puts decoded frames (None at EOF);
        # empty() lets the main thread ask "is more waiting?" without blocking.
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Guards `out` and the frame stream, shared with the flusher thread.
        self.lock = threading.Condition()
        self.out: list[tuple[Any, ...]] = []
        self.oldest_unsent = 0.0
        self.reader = threading.Thread(target=self._read, args=(frames_in,),
                                       name="fabric-frame-reader", daemon=True)
        self.flusher = threading.Thread(target=self._flush_when_due,
                                        name="fabric-result-flusher", daemon=True)

    def _read(self, stream: BinaryIO) -> None:
        try:
            while True:
                msg = read_frame(stream)
                if _TON and msg and msg[0] == 'tasks':
                    _trace(msg[1][0][0], 'w_frame_in')
                self.inbox.put(msg)
                if msg is None:
                    return
        except BaseException as exc:  # noqa: BLE001 - a corrupt frame ends the worker, loudly
            print(f"fabric worker {os.getpid()}: bad frame from the pool: {exc!r}",
                  file=self.diagnostics, flush=True)
            self.inbox.put(None)

    def _flush_when_due(self) -> None:
        # The main thread only looks at the clock between tasks; this thread
        # makes sure a finished result never waits behind a long task.
        try:
            with self.lock:
                while True:
                    if not self.out:
                        self.lock.wait()
                        continue
                    due = self.oldest_unsent + BATCH_WINDOW_S - time.perf_counter()
                    if due > 0:
                        self.lock.wait(due)
                    else:
                        self._send_results()
        except (BrokenPipeError, ValueError):
            pass  # the pool is gone; the main thread notices too

    def send(self, obj: Any) -> None:
        with self.lock:
            self._send(obj)

    def _send(self, obj: Any) -> None:
        header, payload = encode_frame(obj)
        self.frames_out.write(header)
        self.frames_out.write(payload)
        self.frames_out.flush()

    def _send_results(self) -> None:
        out, self.out = self.out, []
        self._send(("results", out))
        if _TON:
            _trace(out[0][0], 'w_sent')

    def flush(self) -> None:
        with self.lock:
            if self.out:
                self._send_results()

    def handle(self, msg: Any) -> bool:
        """Apply one message from the pool; False means stop."""
        if msg is None or msg[0] == "stop":
            return False
        if msg[0] == "tasks":
            self.pending.extend(msg[1])
        elif msg[0] == "functions":
            for function_id, body in msg[1]:
                self.cache.add(function_id, body)
        elif msg[0] == "cancel":
            # Only ids still waiting: a task that already ran must not leave its id here forever.
            waiting = {t[0] for t in self.pending}
            self.skip.update(tid for tid in msg[1] if tid in waiting)
        else:
            print(f"fabric worker {os.getpid()}: ignoring unknown message {msg[0]!r}",
                  file=self.diagnostics, flush=True)
        return True

    def run(self) -> None:
        self.reader.start()
        self.flusher.start()
        self.send(("ready", os.getpid()))
        inbox, lock = self.inbox, self.lock
        while True:
            if not self.pending:
                self.flush()  # idle: nothing may wait behind a blocking get
                if not self.handle(inbox.get()):
                    return
                continue
            task_id, function_id, args = self.pending.popleft()
            if _TON:
                _trace(task_id, 'w_run')
            # Tell the pool, through shared memory, how many tasks have started:
            # if this one kills us, it knows which task to blame (results still
            # buffered here are lost with us and those tasks simply run again).
            self.started += 1
            if self.progress is not None:
                self.progress[0] = self.started
            if self.skip and task_id in self.skip:
                self.skip.discard(task_id)
                row = (task_id, *_SKIPPED)
            else:
                output = self.output
                if output is not None:
                    output.begin()
                r = run_task(task_id, function_id, args, cache=self.cache,
                             max_result_bytes=self.max_result_bytes)
                e = r.error
                said, cut = output.take() if output is not None else (b"", 0)
                row = (r.task_id, r.ok, r.value, None if e is None else
                       (e.type_name, e.message, e.traceback, e.exception, e.kind), r.runtime_s,
                       r.cold, said, cut)
                del r
            del args
            while not inbox.empty():  # take in whatever arrived while the task ran
                if not self.handle(inbox.get()):
                    with lock:
                        self.out.append(row)
                    self.flush()
                    return
            with lock:
                if not self.out:
                    self.oldest_unsent = time.perf_counter()
                self.out.append(row)
                if not self.pending or time.perf_counter() - self.oldest_unsent >= BATCH_WINDOW_S:
                    self._send_results()
                elif len(self.out) == 1:
                    # This result waits for others: the flusher sends it if the next
                    # task runs long. (Not woken for a result sent at once: that
                    # wake-up would cost a thread switch per task.)
                    lock.notify()


def _forget_in_forked_child(fds: list[int]) -> None:
    """A child forked by a task (os.fork, multiprocessing) gives up the worker's
    private fds: holding the frame pipes would hide the worker's death from the
    pool, and flushing a copy of a frame buffer at exit would corrupt the stream.
    /dev/null takes their place, so the copied file objects stay harmless."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric.worker")
    parser.add_argument("--max-result-bytes", type=int, default=DEFAULT_MAX_PAYLOAD)
    parser.add_argument("--progress-fd", type=int, default=None,
                        help="an 8-byte file this worker counts started tasks in (from the pool)")
    parser.add_argument("--output-tail", type=int, default=DEFAULT_OUTPUT_TAIL_BYTES,
                        help="bytes of each task's output (stdout and stderr) kept: the last ones")
    opts = parser.parse_args(argv)

    # Ctrl-C in a terminal reaches the whole process group; the pool decides
    # when workers stop, so a worker must not die mid-task of SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Keep private copies of the frame fds and of stderr (not inheritable: a
    # program a task runs does not get them), then point fds 0/1/2 elsewhere so a
    # user's print() or input() cannot corrupt or eat the frame stream, nor fill
    # the endpoint's log.
    sys.stdout.flush()
    frames_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    frames_out = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    diagnostics = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    output = OutputTail(opts.output_tail)
    private = [f.fileno() for f in (frames_in, frames_out, diagnostics)]
    os.register_at_fork(after_in_child=lambda: _forget_in_forked_child(
        [*private, *([output.fd] if output.fd is not None else [])]))

    progress = None
    if opts.progress_fd is not None:
        progress = memoryview(mmap.mmap(opts.progress_fd, PROGRESS_BYTES)).cast("Q")
        os.close(opts.progress_fd)  # the mapping keeps the memory; user code need not see the fd
    worker = _Worker(frames_in, frames_out, opts.max_result_bytes, progress, output, diagnostics)
    try:
        worker.run()
    except BrokenPipeError:
        pass  # the pool is gone; nobody is left to tell
    except Exception:
        traceback.print_exc(file=diagnostics)  # not into a task's output
        raise SystemExit(1)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
