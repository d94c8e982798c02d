"""What the hub checks of runtime specs before it stores a function or a task.

The hub never builds a runtime and never unpickles anything: a spec is JSON
(fabric.runtime_spec). It is validated here so a bad one is refused at
registration or submission with a precise error, then stored and forwarded
as the bytes the client sent. Called by the ClientService servicer.
"""

from __future__ import annotations

from fabric import errors
from fabric.runtime_spec import Runtime, parse


def check_function_runtime(spec: bytes, python_version: str) -> None:
    """A function's runtime must be one, and able to load its body."""
    if spec:
        _check_python(parse(spec), python_version, "the function")


def routing_python(spec: bytes, fn_python: str, what: str) -> str:
    """The Python version an endpoint itself must run for a task to go there.

    "" when the task's runtime names the function's Python: the endpoint finds
    that interpreter itself, whatever its own version (or fails the task with
    VersionMismatch, naming where it looked)."""
    if not spec:
        return fn_python
    rt = parse(spec)
    _check_python(rt, fn_python, what)
    return "" if rt.python else fn_python


def stored_python(spec: str, fn_python: str) -> str:
    """routing_python for a task reloaded from the store (checked when it was submitted)."""
    try:
        return routing_python(spec.encode(), fn_python, "a stored task")
    except errors.FabricError:
        return fn_python


def _check_python(rt: Runtime, fn_python: str, what: str) -> None:
    # A body pickled on 3.11 does not load on 3.12: a runtime of another version
    # could never run it, so say so now rather than on every endpoint.
    if rt.python and rt.python != fn_python:
        raise errors.VersionMismatch(
            f"{what} was registered from Python {fn_python}, but its runtime asks for "
            f"Python {rt.python}, which cannot load it: register it from Python {rt.python} "
            f"or drop python= from the runtime")
