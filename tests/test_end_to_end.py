"""Tier 3: the whole fabric as real processes (hub + two endpoints) over loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client
from fabric.states import TaskState
from fabric.testing import wait_until

# Workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def add(a, b=0):
    return a + b


def where(_i=None):
    return os.getpid()


def slow(seconds):
    time.sleep(seconds)
    return seconds


def boom(x):
    return 1 / x


class Weird(Exception):
    """An exception the client can rebuild because its class travels by value."""


def raise_weird():
    raise Weird("strange things")


def digest(blob):
    return len(blob), hashlib.sha256(blob).hexdigest()


def counter():
    import fabric.worker

    s = fabric.worker.state()
    s["n"] = s.get("n", 0) + 1
    return s["n"]


def test_run_and_get_result_on_a_named_endpoint(client):
    fid = client.register_function(add)
    assert client.register_function(add) == fid  # registered once, same id
    tid = client.run(2, b=3, function_id=fid, endpoint_id="alpha")
    assert client.get_result(tid, timeout=30) == 5
    info = {t.task_id: t for t in client.tasks(limit=20)}[tid]
    assert info.endpoint_name == "alpha" and info.state is TaskState.SUCCESS
    assert info.route_reason == "named by the user"


def test_pending_result_raises_then_arrives(client):
    fid = client.register_function(slow)
    tid = client.run(0.6, function_id=fid, endpoint_id="beta")
    with pytest.raises(errors.TaskPending):
        client.get_result(tid)
    with pytest.raises(errors.TaskTimeout):
        client.get_result(tid, timeout=0.05)
    assert client.get_result(tid, timeout=30) == 0.6


def test_thousands_of_tasks_spread_over_both_endpoints(client):
    fid = client.register_function(add)
    before = {e.name: e.completed for e in client.endpoints()}
    tids = client.batch_run(fid, [((i,), {"b": 1}) for i in range(3000)])
    assert len(set(tids)) == 3000
    assert client.get_batch_result(tids, timeout=120) == [i + 1 for i in range(3000)]
    after = {e.name: e.completed for e in client.endpoints()}
    for name in ("alpha", "beta"):  # the default policy (smallest ETA) used both
        assert after[name] - before[name] >= 1000


def test_exceptions_come_back_with_the_remote_traceback(client):
    tid = client.run(0, function_id=client.register_function(boom))
    with pytest.raises(errors.TaskFailed) as info:
        client.get_result(tid, timeout=30)
    exc = info.value
    assert isinstance(exc.cause, ZeroDivisionError)
    assert exc.type_name == "ZeroDivisionError"
    assert "in boom" in exc.remote_traceback and "1 / x" in exc.remote_traceback
    tid = client.run(function_id=client.register_function(raise_weird))
    with pytest.raises(errors.TaskFailed) as info:
        client.get_result(tid, timeout=30)
    assert type(info.value.cause).__name__ == "Weird" and "strange" in str(info.value)


def test_batch_results_can_hold_exceptions(client):
    fid = client.register_function(boom)
    tids = client.batch_run(fid, [((x,), {}) for x in (1, 0, 2)])
    with pytest.raises(errors.TaskFailed):
        client.get_batch_result(tids, timeout=30)
    out = client.get_batch_result(tids, timeout=30, return_exceptions=True)
    assert out[0] == 1.0 and out[2] == 0.5 and isinstance(out[1], errors.TaskFailed)


def test_large_arguments_round_trip(client):
    blob = os.urandom(30 * 2**20)
    tid = client.run(blob, function_id=client.register_function(digest), endpoint_id="alpha")
    assert client.get_result(tid, timeout=60) == (len(blob), hashlib.sha256(blob).hexdigest())


def test_oversize_payload_is_rejected_and_nothing_is_stored(client):
    before = client.status().tasks_by_state
    fid = client.register_function(digest)
    with pytest.raises(errors.PayloadTooLarge, match="limit"):
        client.run(b"x" * (65 * 2**20), function_id=fid)
    assert client.status().tasks_by_state == before


def test_unknown_ids_get_precise_errors(client):
    with pytest.raises(errors.FunctionNotFound):
        client.run(1, function_id="fn-doesnotexist")
    fid = client.register_function(add)
    with pytest.raises(errors.EndpointNotFound):
        client.run(1, function_id=fid, endpoint_id="no-such-endpoint")
    with pytest.raises(errors.TaskNotFound):
        client.get_result("no-such-task")
    with pytest.raises(errors.TaskNotFound):
        client.get_result("no-such-task", timeout=5)
    with pytest.raises(errors.InvalidRequest, match="policy"):
        client.run(1, function_id=fid, policy="fastest-ever")
    # Refusals come back in band on the client's submission stream, which stays usable.
    assert client.get_result(client.run(1, 2, function_id=fid), timeout=30) == 3


def test_function_from_another_python_fails_at_submission(client):
    from fabric._proto import fabric_pb2 as pb

    req = pb.RegisterFunctionRequest(name="old.fn", body=cloudpickle.dumps(add),
                                     python_version="3.99")
    fid = client._call(client.aio._call("RegisterFunction", req)).function_id
    with pytest.raises(errors.VersionMismatch) as info:
        client.run(1, function_id=fid, endpoint_id="alpha")
    assert "3.99" in str(info.value) and f"{sys.version_info[0]}.{sys.version_info[1]}" in str(info.value)


def test_warm_state_survives_between_calls(client):
    fid = client.register_function(counter)
    seen = [client.get_result(client.run(function_id=fid, endpoint_id="alpha"), timeout=30)
            for _ in range(12)]
    # Two workers on alpha: each counts its own calls from 1, so the counts are the
    # union of 1..k and 1..(12-k): set-up ran at most once per worker.
    assert seen.count(1) <= 2 and max(seen) >= 6


def hold(marks, i, release):
    """Leave mark `i` (this call started), then return `i` once `release` exists."""
    from pathlib import Path

    Path(marks, str(i)).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(release)
        time.sleep(0.01)
    return i


def test_cancel_queued_tasks(client, tmp_path):
    marks, release = tmp_path / "marks", tmp_path / "release"
    marks.mkdir()
    fid = client.register_function(hold)
    tids = client.batch_run(fid, [((str(marks), i, str(release)), {}) for i in range(12)],
                            endpoint_id="beta")
    try:
        # beta's two workers hold two calls; the rest wait (at most two more on workers).
        wait_until(lambda: len(list(marks.iterdir())) == 2, 30, "two calls to start on beta")
        started = {int(p.name) for p in marks.iterdir()}
        waiting = [tid for i, tid in enumerate(tids) if i not in started][-6:]
        assert set(client.cancel(waiting)) == set(waiting)
        for tid in waiting:
            with pytest.raises(errors.TaskCancelled):
                client.get_result(tid, timeout=10)
    finally:
        release.touch()
    rest = [tid for tid in tids if tid not in waiting]
    assert sorted(client.get_batch_result(rest, timeout=60)) == \
        sorted(i for i, tid in enumerate(tids) if tid in rest)
    cancelled = {i for i, tid in enumerate(tids) if tid in waiting}
    assert not cancelled & {int(p.name) for p in marks.iterdir()}, "a cancelled call ran"
    assert client.cancel(rest[:1]) == []  # already final: nothing to cancel


def test_fire_and_forget_across_processes(fabric_procs, client):
    script = textwrap.dedent(f"""
        import sys, cloudpickle
        from fabric.client import Client
        def square(x):
            return x * x
        with Client({fabric_procs.address!r}) as c:
            fid = c.register_function(square)
            print(" ".join(c.batch_run(fid, [((i,), {{}}) for i in range(50)])))
    """)
    # Another process: it finds its token where LocalFabric left it ($FABRIC_HOME/token).
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, **fabric_procs.env})
    tids = out.stdout.split()
    assert len(tids) == 50
    # The submitting process is gone; a new client collects by id.
    with Client(fabric_procs.address) as later:
        assert later.get_batch_result(tids, timeout=60) == [i * i for i in range(50)]


def test_results_survive_a_client_restart(fabric_procs):
    with Client(fabric_procs.address) as first:
        tid = first.run(20, b=22, function_id=first.register_function(add))
    with Client(fabric_procs.address) as second:
        assert second.get_result(tid, timeout=30) == 42


def test_cli_shows_endpoints_tasks_and_status(fabric_procs, client):
    # A finished task of its own to list (not one an earlier test left).
    tid = client.run(1, b=2, function_id=client.register_function(add), endpoint_id="alpha")
    assert client.get_result(tid, timeout=30) == 3

    def fabric(*args):
        return subprocess.run([sys.executable, "-m", "fabric", *args, "--hub", fabric_procs.address],
                              capture_output=True, text=True, timeout=60, env={**os.environ,
                              **fabric_procs.env, "COLUMNS": "200"})

    out = fabric("endpoints")
    assert out.returncode == 0, out.stderr
    assert "alpha" in out.stdout and "beta" in out.stdout and "yes" in out.stdout
    out = fabric("tasks", "--limit", "5")
    assert out.returncode == 0 and "success" in out.stdout and tid[:8] in out.stdout, out.stdout
    out = fabric("status")
    assert out.returncode == 0 and "endpoints online" in out.stdout and "2 / 2" in out.stdout
    assert "big payloads stored" in out.stdout, out.stdout
    bad = subprocess.run([sys.executable, "-m", "fabric", "status", "--hub", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Error" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args", [[], ["hub"], ["endpoint"], ["endpoint", "start"], ["endpoints"],
                                  ["tasks"], ["status"]])
def test_every_command_has_help(args):
    out = subprocess.run([sys.executable, "-m", "fabric", *args, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Usage" in out.stdout


@pytest.mark.timeout(240)  # above the demo's own deadline, so that one applies
def test_the_demo_runs_and_stops_cleanly(tmp_path):
    """`make demo` is the first thing a newcomer types: it must keep working.

    Its fabric lives under TMPDIR=tmp_path: if the demo is killed at its deadline,
    the hub and endpoints it started (their own sessions) are found there by the
    leak check, killed, and reported."""
    done = subprocess.run([sys.executable, "-m", "fabric.demo"], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "TMPDIR": str(tmp_path)})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for line in ("hypotenuse(3, 4) = 5.0", "TaskFailed", "spread by smallest ETA",
                 "a 32 MiB argument out and a 32 MiB result back", "demo finished cleanly"):
        assert line in out, (line, out[-3000:])
