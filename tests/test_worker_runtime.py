"""Pure tests of what runs inside a worker: run_task, the function cache, state(), framing."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

import cloudpickle
import pytest

import fabric.worker
from fabric.errors import TaskFailed
from fabric.serialize import dumps_args, loads
from fabric.worker.main import decode_frame, encode_frame
from fabric.worker.runtime import FunctionCache, WorkItem, WorkResult, run_task, state

# Functions defined here travel by value, as a user's would from a notebook.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def cache_with(**functions) -> FunctionCache:
    cache = FunctionCache()
    for fid, fn in functions.items():
        cache.add(fid, cloudpickle.dumps(fn))
    return cache


def run(cache: FunctionCache, fid: str, *args, max_result_bytes: int = 2**20, **kwargs) -> WorkResult:
    return run_task(f"task-{fid}", fid, dumps_args(args, kwargs), cache=cache,
                    max_result_bytes=max_result_bytes)


class LockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


def test_work_item_keeps_positional_construction_and_defaults_to_no_limits():
    item = WorkItem("t1", "f1", b"args")
    assert (item.walltime_s, item.max_retries) == (0.0, None)
    item = WorkItem("t1", "f1", b"args", walltime_s=2.5, max_retries=0)
    assert (item.task_id, item.function_id, item.args) == ("t1", "f1", b"args")
    assert (item.walltime_s, item.max_retries) == (2.5, 0)


def test_success_returns_pickled_value_and_runtime():
    cache = cache_with(add=lambda a, b=0: a + b)
    r = run(cache, "add", 2, b=3)
    assert r.ok and r.error is None and r.task_id == "task-add"
    assert loads(r.value) == 5
    assert r.runtime_s >= 0


def test_first_call_of_a_function_in_a_worker_is_cold():
    big = bytes(range(256)) * 40_000  # a 10 MB constant travels inside the body

    def heavy(x):
        return len(big) + x

    cache = cache_with(heavy=heavy)
    first, second = run(cache, "heavy", 1), run(cache, "heavy", 2)
    assert (first.cold, second.cold) == (True, False)
    assert loads(first.value) == loads(second.value) - 1


def test_user_exception_carries_type_message_traceback_and_exception():
    def explode(n):
        raise ValueError(f"bad {n}")

    r = run(cache_with(explode=explode), "explode", 7)
    assert not r.ok and r.error is not None
    assert (r.error.type_name, r.error.message, r.error.kind) == ("ValueError", "bad 7", "user")
    assert "Traceback" in r.error.traceback and "explode" in r.error.traceback
    exc = r.error.to_exception("t1")
    assert isinstance(exc, TaskFailed) and isinstance(exc.cause, ValueError)


def test_unpicklable_exception_falls_back_to_text():
    def locked():
        raise LockedError("cannot travel")

    r = run(cache_with(locked=locked), "locked")
    assert r.error.type_name == "LockedError" and r.error.message == "cannot travel"
    assert r.error.exception == b"" and "LockedError" in r.error.traceback
    exc = r.error.to_exception("t1")
    assert isinstance(exc, TaskFailed) and exc.cause is None and "cannot travel" in str(exc)


def test_system_exit_is_reported_not_raised():
    r = run(cache_with(bye=lambda: sys.exit(4)), "bye")
    assert not r.ok and r.error.type_name == "SystemExit" and r.error.kind == "user"


def test_plumbing_failures_are_system_errors_that_say_which_step():
    cache = cache_with(ok=lambda: 1, lock=lambda: threading.Lock())
    cache.add("broken", b"not a pickle")

    bad_args = run_task("t", "ok", b"garbage", cache=cache)
    assert bad_args.error.kind == "system"
    assert bad_args.error.message.startswith("could not unpickle the task's arguments")

    bad_body = run(cache, "broken")
    assert bad_body.error.kind == "system"
    assert bad_body.error.message.startswith("could not load function broken")

    unknown = run(cache, "nope")
    assert unknown.error.kind == "system" and unknown.error.type_name == "LookupError"
    assert "never sent to this worker" in unknown.error.message

    bad_value = run(cache, "lock")
    assert bad_value.error.kind == "system"
    assert bad_value.error.message.startswith("could not pickle the value returned")


def test_oversize_result_fails_with_both_sizes():
    r = run(cache_with(big=lambda: b"x" * 5000), "big", max_result_bytes=1000)
    assert not r.ok and r.error.type_name == "PayloadTooLarge"
    size = len(pickle.dumps(b"x" * 5000, protocol=pickle.HIGHEST_PROTOCOL))
    assert f"{size} bytes" in r.error.message and "1000 bytes" in r.error.message


def test_function_cache_unpickles_each_body_once():
    def count(calls=[]):  # noqa: B006 - the default list lives as long as the unpickled function
        calls.append(1)
        return len(calls)

    cache = cache_with(count=count)
    assert "count" in cache and len(cache) == 1
    assert cache.get("count") is cache.get("count")
    assert [loads(run(cache, "count").value) for _ in range(3)] == [1, 2, 3]


def test_state_persists_per_function_and_only_inside_a_task():
    def bump():
        s = fabric.worker.state()
        s["n"] = s.get("n", 0) + 1
        return s["n"]

    cache = FunctionCache()
    body = cloudpickle.dumps(bump)
    cache.add("fn-state-a", body)
    cache.add("fn-state-b", body)  # same code, another function id: its own state
    assert [loads(run(cache, "fn-state-a").value) for _ in range(3)] == [1, 2, 3]
    assert loads(run(cache, "fn-state-b").value) == 1
    assert loads(run(cache, "fn-state-a").value) == 4
    with pytest.raises(RuntimeError, match="only be called by a function while it runs"):
        state()
    # A failing task must not leave state() pointing at its function.
    cache.add("fn-state-fail", cloudpickle.dumps(lambda: 1 / 0))
    run(cache, "fn-state-fail")
    with pytest.raises(RuntimeError):
        fabric.worker.state()


def test_frames_round_trip_plain_data_and_refuse_globals():
    msg = ("results", [("t1", True, b"\x00" * 10, None, 0.5, False),
                       ("t2", False, b"", ("E", "m", "tb", b"", "user"), 0.0, False)])
    header, payload = encode_frame(msg)
    assert int.from_bytes(header, "little") == len(payload)
    assert decode_frame(payload) == msg
    with pytest.raises(pickle.UnpicklingError):
        decode_frame(pickle.dumps(("tasks", [threading.Lock]), protocol=5))


def test_worker_package_is_import_light_and_public_surface_is_stated():
    assert fabric.worker.__all__ == ["state"]
    code = "import sys, fabric.worker; print(sorted(m for m in ('grpc', 'fabric.endpoint') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": ":".join(p for p in sys.path if p)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
