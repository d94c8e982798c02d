"""Turning functions, arguments and results into bytes and back.

Used by the client (which pickles functions and arguments and unpickles
results) and by workers (the reverse). The hub and the endpoint agent only
move these bytes around: they never call anything here that unpickles, and
the hub (which imports this module for function ids and ErrorInfo) never even
loads cloudpickle: it is imported where it is used.
"""

from __future__ import annotations

import hashlib
import inspect
import linecache
import pickle
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable

from fabric.config import PYTHON_VERSION

PROTOCOL = pickle.HIGHEST_PROTOCOL


_BODY_TAG = "fabric-function/1"
_DYNAMIC = "<dynamic-code>"  # what cloudpickle names the file of code it ships by value


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """A function body: the pickled callable plus its source lines, when known.

    cloudpickle drops the file name of code it ships by value, so a remote
    traceback would show no source. Shipping the function's own lines lets
    the worker put them back (see loads_function); the cost is a few hundred
    bytes, paid once per registration.
    """
    import cloudpickle

    return cloudpickle.dumps((_BODY_TAG, fn, _source_of(fn)), protocol=PROTOCOL)


def _source_of(fn: Callable[..., Any]) -> tuple[str, int, tuple[str, ...]] | None:
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or "?"
    except (OSError, TypeError):
        return None
    return filename, max(first, 1), tuple(lines)


def loads_function(body: bytes) -> Callable[..., Any]:
    """The callable from a function body; only workers call this."""
    loaded = pickle.loads(body)
    if not (isinstance(loaded, tuple) and len(loaded) == 3 and loaded[0] == _BODY_TAG):
        return loaded  # a bare pickled callable (e.g. from another client library)
    _, fn, source = loaded
    if source is not None and isinstance(fn, types.FunctionType) \
            and fn.__code__.co_filename == _DYNAMIC:
        filename, first, lines = source
        shown = f"{filename} (shipped)"
        padded = [""] * (first - 1) + list(lines)  # keep the line numbers of the original file
        linecache.cache[shown] = (sum(map(len, padded)), None, padded, shown)
        fn.__code__ = _renamed(fn.__code__, shown)
    return fn


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def function_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{module}.{name}"


def function_id(owner: str, body: bytes, python_version: str = PYTHON_VERSION,
                runtime: bytes = b"") -> str:
    """Content address of a function: registering the same body twice gives one id.
    A runtime is part of it (the same code in two environments is two functions);
    without one the id is what it always was."""
    digest = hashlib.sha256()
    for part in (owner.encode(), b"\0", python_version.encode(), b"\0", body):
        digest.update(part)
    if runtime:
        digest.update(b"\0runtime\0" + runtime)
    return "fn-" + digest.hexdigest()[:32]


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    # Plain pickle first: it is several times faster than cloudpickle for the
    # common case (numbers, arrays, strings); cloudpickle for lambdas & co.
    try:
        return pickle.dumps((args, kwargs), protocol=PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps((args, kwargs), protocol=PROTOCOL)


def loads_args(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = pickle.loads(payload)
    return args, kwargs


def dumps_value(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=PROTOCOL)


def loads(payload: bytes) -> Any:
    """Unpickle a function body or a result value (cloudpickle output is plain pickle)."""
    return pickle.loads(payload)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure, as it travels from the worker to the client."""

    type_name: str
    message: str
    traceback: str = ""
    exception: bytes = b""  # cloudpickled exception, b"" when it would not pickle
    kind: str = "user"  # "user" | "worker_died" | "walltime" | "runtime" | "cancelled" | "purged" | "system"

    @classmethod
    def from_exception(cls, exc: BaseException, kind: str = "user") -> "ErrorInfo":
        import cloudpickle

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickled = cloudpickle.dumps(exc, protocol=PROTOCOL)
            pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt
        except Exception:
            pickled = b""
        return cls(type(exc).__qualname__, str(exc), tb, pickled, kind)

    def to_exception(self, task_id: str) -> Exception:
        """The exception a client raises for this failure (a TaskFailed subclass)."""
        from fabric.errors import (ResultPurged, RuntimeBuildFailed, TaskCancelled, TaskFailed,
                                   WalltimeExceeded, WorkerDied)

        if self.kind == "cancelled":
            return TaskCancelled(f"task {task_id} was cancelled: {self.message}")
        if self.kind == "purged":
            return ResultPurged(f"task {task_id}: {self.message}")
        cause = None
        if self.exception:
            try:
                cause = pickle.loads(self.exception)
            except Exception:  # the exception's class is not importable here
                cause = None
            if not isinstance(cause, BaseException):
                cause = None
        cls = {"worker_died": WorkerDied, "walltime": WalltimeExceeded,
               "runtime": RuntimeBuildFailed}.get(self.kind, TaskFailed)
        return cls(task_id, self.type_name, self.message, self.traceback, cause)
