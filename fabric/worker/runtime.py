"""Running one task inside a worker process: the pure part of a worker.

`fabric.worker.main` (the worker subprocess) calls `run_task` for every task
it receives and keeps one `FunctionCache` for its whole life, so a function
body is unpickled once per worker (a warm cache) and `state()` gives each
function a dict that survives between its calls in that worker. The endpoint's
`WorkerPool` uses `WorkItem` / `WorkResult` as its plain in-process types.

No I/O here: bytes in, a `WorkResult` out, every failure captured as an
`ErrorInfo`, so this module is tested without subprocesses.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from fabric.config import DEFAULT_MAX_PAYLOAD
from fabric.serialize import ErrorInfo, dumps_value, loads_args, loads_function


@dataclass(slots=True)
class WorkItem:
    """A task as the pool hands it to a worker: only bytes, never unpickled outside a worker.

    `walltime_s`, `max_retries` and `runtime` are for the endpoint, never sent to the worker."""

    task_id: str
    function_id: str
    args: bytes
    walltime_s: float = 0.0  # killed and failed after running this long; 0 = no limit
    max_retries: int | None = None  # reruns after its worker dies; None = the pool's default
    runtime: bytes = b""  # the runtime spec it runs in (fabric.runtime_spec JSON); b"" = none


@dataclass(slots=True)
class WorkResult:
    """The outcome of one task: `value` (pickled) when ok, else `error`; `output` is
    the tail of what it printed, `output_cut` how many bytes before that were dropped."""

    task_id: str
    ok: bool
    value: bytes = b""
    error: ErrorInfo | None = None
    runtime_s: float = 0.0
    cold: bool = False  # this call loaded the function: runtime_s includes the load
    output: bytes = b""
    output_cut: int = 0


class FunctionCache:
    """function_id -> callable, unpickled on first use and kept for the worker's life.

    Bodies are stored as bytes when they arrive and unpickled lazily, so a
    body that cannot be unpickled fails the tasks that use it instead of the
    worker that received it.
    """

    def __init__(self) -> None:
        self._bodies: dict[str, bytes] = {}
        self._loaded: dict[str, Callable[..., Any]] = {}

    def add(self, function_id: str, body: bytes) -> None:
        if function_id not in self._loaded:
            self._bodies[function_id] = body

    def get(self, function_id: str) -> Callable[..., Any]:
        fn = self._loaded.get(function_id)
        if fn is not None:
            return fn
        body = self._bodies.get(function_id)
        if body is None:
            raise LookupError(f"function {function_id} was never sent to this worker")
        fn = loads_function(body)
        if not callable(fn):
            raise TypeError(f"function {function_id} unpickled to a {type(fn).__name__}, "
                            "which is not callable")
        self._loaded[function_id] = fn
        del self._bodies[function_id]  # the callable is all we need from now on
        return fn

    def is_loaded(self, function_id: str) -> bool:
        return function_id in self._loaded

    def __contains__(self, function_id: object) -> bool:
        return function_id in self._loaded or function_id in self._bodies

    def __len__(self) -> int:
        return len(self._loaded) + len(self._bodies)


# --------------------------------------------------------------- per-function state
# A worker runs one task at a time on its main thread, so "the function now
# running" is a plain module global, set only around the user's call.
_current_function: str | None = None
_states: dict[str, dict[str, Any]] = {}


def state() -> dict[str, Any]:
    """A dict private to the function now running, kept between its calls in this worker.

    Use it to load something expensive once per worker::

        s = fabric.worker.state()
        if "model" not in s:
            s["model"] = load_model()
    """
    if _current_function is None:
        raise RuntimeError(
            "fabric.worker.state() can only be called by a function while it runs "
            "as a task on a Fabric worker")
    s = _states.get(_current_function)
    if s is None:
        s = _states[_current_function] = {}
    return s


_default_cache = FunctionCache()

#: For benchmarks and scheduling tests (`fabric endpoint start --slowdown F`): one
#: machine standing in for endpoints of different speeds.
SLOWDOWN = float(os.environ.get("FABRIC_SLOWDOWN", "1") or 1)


def run_task(task_id: str, function_id: str, args: bytes, *,
             cache: FunctionCache | None = None,
             max_result_bytes: int = DEFAULT_MAX_PAYLOAD) -> WorkResult:
    """Run one task and capture its outcome; never raises.

    Failures of our own plumbing (unknown function, unpickling the body or
    the arguments, pickling the value, an oversize value) have kind "system"
    (oversize: "user") and say which step failed; exceptions raised by the
    function itself have kind "user".
    """
    global _current_function
    cache = _default_cache if cache is None else cache
    # A cold call's runtime includes loading the function: the scheduler learns
    # cold-start cost as the difference between cold and warm runtimes.
    cold = not cache.is_loaded(function_id)
    load_start = time.perf_counter()
    try:
        fn = cache.get(function_id)
    except BaseException as exc:  # noqa: BLE001 - a bad body must not kill the worker
        return _failed(task_id, exc, "system", f"could not load function {function_id}")
    try:
        a, kw = loads_args(args)
    except BaseException as exc:  # noqa: BLE001
        return _failed(task_id, exc, "system", "could not unpickle the task's arguments")

    _current_function = function_id
    start = load_start if cold else time.perf_counter()
    try:
        value = fn(*a, **kw)
    except BaseException as exc:  # noqa: BLE001 - SystemExit etc. are reported, like ProcessPoolExecutor
        runtime = time.perf_counter() - start
        _current_function = None
        result = _failed(task_id, exc, "user")
        result.runtime_s = runtime
        return result
    if SLOWDOWN > 1.0:  # emulate a slower machine: every task takes SLOWDOWN times as long
        time.sleep((time.perf_counter() - start) * (SLOWDOWN - 1.0))
    runtime = time.perf_counter() - start
    _current_function = None

    try:
        payload = dumps_value(value)
    except BaseException as exc:  # noqa: BLE001
        result = _failed(task_id, exc, "system",
                         f"could not pickle the value returned by the function "
                         f"(a {type(value).__qualname__})")
        result.runtime_s = runtime
        return result
    del value
    if len(payload) > max_result_bytes:
        from fabric.errors import PayloadTooLarge

        exc = PayloadTooLarge(f"the pickled result is {len(payload)} bytes, over this "
                              f"endpoint's limit of {max_result_bytes} bytes")
        return WorkResult(task_id, False, error=_error_info(exc, "user"), runtime_s=runtime)
    return WorkResult(task_id, True, payload, None, runtime, cold)


def result_row(r: WorkResult) -> tuple[Any, ...]:
    """A WorkResult as the plain tuple workers send back (no classes: the
    receiving side decodes it without importing anything)."""
    e = r.error
    return (r.task_id, r.ok, r.value, None if e is None else
            (e.type_name, e.message, e.traceback, e.exception, e.kind), r.runtime_s, r.cold,
            r.output, r.output_cut)


def result_from_row(row: tuple[Any, ...]) -> WorkResult:
    task_id, ok, value, error, runtime_s, cold, output, output_cut = row
    return WorkResult(task_id, ok, value, None if error is None else ErrorInfo(*error),
                      runtime_s, cold, output, output_cut)


def _failed(task_id: str, exc: BaseException, kind: str, context: str = "") -> WorkResult:
    return WorkResult(task_id, False, error=_error_info(exc, kind, context))


def _error_info(exc: BaseException, kind: str, context: str = "") -> ErrorInfo:
    """ErrorInfo.from_exception, guarded: an exception whose __str__ raises still reports."""
    try:
        info = ErrorInfo.from_exception(exc, kind=kind)
    except BaseException:  # noqa: BLE001
        info = ErrorInfo(type(exc).__qualname__, "<exception could not be turned into text>",
                         "", b"", kind)
    if context:
        info = dataclasses.replace(info, message=f"{context}: {info.message}")
    return info
