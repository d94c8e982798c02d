"""Tier 3: the concurrent.futures contract of Executor, against real processes.

Where Executor deviates from concurrent.futures today (its futures never become
RUNNING, so cancel() and shutdown(cancel_futures=True) also stop calls that are
running remotely), the stdlib contract is written as a strict xfail naming
issue 17, which will bring the running state: it flips to a pass then.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import sys
import time
import weakref
from pathlib import Path

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client, Executor
from fabric.states import TaskState
from fabric.testing import Ledger, mark_run, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def slow(seconds):
    time.sleep(seconds)
    return seconds


def hold(started, release):
    """Say it started, then return only once `release` exists (or after a minute)."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise TimeoutError(release)
        time.sleep(0.01)
    return "released"


def hub_states(client, futures):
    """The hub's state of each future's task (None: the hub does not know it)."""
    states = {t.task_id: t.state for t in client.tasks(limit=1000)}
    return [states.get(f.task_id) for f in futures]


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """A fabric whose one endpoint ("one") has one worker: a call that holds it keeps
    every later call waiting, so the tests know which calls cannot have started."""
    from fabric.launch import LocalFabric

    with LocalFabric(tmp_path_factory.mktemp("solo"), ["one"], workers=1) as fab:
        with Client(fab.address) as c:
            c.wait_for_endpoints(1, timeout=60)
        yield fab


@pytest.fixture
def solo_client(solo):
    with Client(solo.address) as c:
        yield c


def inverse(x):
    return 1 / x


class Payload:
    pass


def make_payload(_i):
    return Payload()


def test_is_a_real_executor(fabric_procs):
    with Client(fabric_procs.address) as c:
        ex = Executor(endpoint_id="alpha", client=c)
        assert isinstance(ex, cf.Executor)
        ex.shutdown()


def test_map_keeps_order_across_endpoints(client):
    before = {e.name: e.completed for e in client.endpoints()}
    with Executor(client=client, policy="round-robin") as ex:
        assert list(ex.map(pow, range(1000), [2] * 1000, timeout=60)) == [i * i for i in range(1000)]
    after = {e.name: e.completed for e in client.endpoints()}
    # Results came from both endpoints, interleaved, and map put them back in order.
    assert {n: after[n] - before[n] >= 400 for n in ("alpha", "beta")} == \
        {"alpha": True, "beta": True}, (before, after)


def test_map_chunksize_gives_the_same_results(client):
    with Executor(endpoint_id="alpha", client=client) as ex:
        assert list(ex.map(pow, range(500), [3] * 500, chunksize=37, timeout=60)) == \
            [i ** 3 for i in range(500)]
        with pytest.raises(ValueError):
            ex.map(pow, [1], [1], chunksize=0)


def test_map_timeout_raises(client):
    with Executor(endpoint_id="beta", client=client) as ex:
        it = ex.map(slow, [2.0, 2.0], timeout=0.3)
        with pytest.raises(cf.TimeoutError):
            list(it)


def test_map_in_chunks_counts_its_deadline_from_the_call(client):
    """As Executor.map: the deadline starts when map() is called, not at the first
    next(). The first chunk ends at 2 s at the soonest; a deadline counted from the
    first next() (1.5 s + 1 s) would wait for it and return it."""
    with Executor(endpoint_id="beta", client=client) as ex:
        it = ex.map(slow, [2.0, 0.0], timeout=1.0, chunksize=2)
        time.sleep(1.5)  # the scenario: the caller comes back after the deadline
        with pytest.raises(cf.TimeoutError):
            next(it)


def test_exceptions_surface_in_result_and_map(client):
    with Executor(endpoint_id="alpha", client=client) as ex:
        f = ex.submit(inverse, 0)
        with pytest.raises(errors.TaskFailed) as info:
            f.result(timeout=30)
        assert isinstance(info.value.cause, ZeroDivisionError)
        assert isinstance(f.exception(timeout=1), errors.TaskFailed)
        it = ex.map(inverse, [1, 0, 2], timeout=30)
        assert next(it) == 1.0
        with pytest.raises(errors.TaskFailed):
            next(it)


def test_wait_and_as_completed(fabric_procs, client, tmp_path):
    # fs[1] is quick (alpha); fs[0] and fs[2] hold until released (beta), so the
    # order they complete in is the one the test releases them in.
    r0, r2 = tmp_path / "r0", tmp_path / "r2"
    with Client(fabric_procs.address) as other, \
            Executor(endpoint_id="beta", client=client) as held, \
            Executor(endpoint_id="alpha", client=other) as quick:
        fs = [held.submit(hold, str(tmp_path / "s0"), str(r0)), quick.submit(slow, 0.01),
              held.submit(hold, str(tmp_path / "s2"), str(r2))]
        try:
            done, not_done = cf.wait(fs, timeout=60, return_when=cf.FIRST_COMPLETED)
            assert (done, not_done) == ({fs[1]}, {fs[0], fs[2]})
            done, not_done = cf.wait(fs, timeout=0)
            assert (done, not_done) == ({fs[1]}, {fs[0], fs[2]})
            it = cf.as_completed(fs, timeout=60)
            assert next(it) is fs[1]
            r0.touch()
            assert next(it) is fs[0]
            r2.touch()
            assert next(it) is fs[2]
            assert [f.result() for f in fs] == ["released", 0.01, "released"]
        finally:
            r0.touch(), r2.touch()


def test_cancel_queued_futures(solo_client, tmp_path):
    client = solo_client
    ledger = Ledger(tmp_path / "runs")
    release, started = tmp_path / "release", tmp_path / "started"
    with Executor(endpoint_id="one", client=client) as ex:
        try:
            running = ex.submit(hold, str(started), str(release))
            wait_until(started.exists, 30, "the endpoint's only worker to run a call")
            queued = [ex.submit(mark_run, str(ledger), i) for i in range(10)]
            wait_until(lambda: None not in hub_states(client, queued), 30,
                       "the hub to hold the queued calls")
            assert all(f.cancel() for f in queued)
            assert all(f.cancelled() and f.done() for f in queued)
            with pytest.raises(cf.CancelledError):
                queued[0].result()
            # The hub heard about it: those tasks are cancelled there too ...
            wait_until(lambda: set(hub_states(client, queued)) == {TaskState.CANCELLED}, 30,
                       "the hub to cancel the queued calls")
        finally:
            release.touch()
        assert running.result(timeout=30) == "released"
        # ... and none of them ran once the worker was free (a later call did).
        assert ex.submit(slow, 0).result(timeout=30) == 0
    assert ledger.runs() == []


def test_shutdown_cancel_futures_cancels_calls_not_started(solo_client, tmp_path):
    client = solo_client
    ledger = Ledger(tmp_path / "runs")
    release, started = tmp_path / "release", tmp_path / "started"
    ex = Executor(endpoint_id="one", client=client)
    try:
        first = ex.submit(hold, str(started), str(release))
        wait_until(started.exists, 30, "the first call to start")
        rest = [ex.submit(mark_run, str(ledger), i) for i in range(20)]
        wait_until(lambda: None not in hub_states(client, rest), 30, "the hub to hold the rest")
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in rest)
        wait_until(lambda: set(hub_states(client, rest)) == {TaskState.CANCELLED}, 30,
                   "the hub to cancel the calls not started")
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(slow, 0)
        ex.shutdown()  # idempotent
    finally:
        release.touch()
    wait_until(first.done, 30, "the first call to end")
    # None of the cancelled calls ran, even once the worker was free again.
    assert client.get_result(client.run(0, function_id=client.register_function(slow),
                                        endpoint_id="one"), timeout=30) == 0
    assert ledger.runs() == []


@pytest.mark.xfail(strict=True, reason="issue 17: a future becomes RUNNING once its call "
                   "starts; today cancel() is True for a running call and kills it")
def test_a_running_call_is_running_and_cannot_be_cancelled(solo_client, tmp_path):
    release, started = tmp_path / "release", tmp_path / "started"
    with Executor(endpoint_id="one", client=solo_client) as ex:
        try:
            f = ex.submit(hold, str(started), str(release))
            wait_until(started.exists, 30, "the call to start")
            wait_until(f.running, 30, "the future to be RUNNING")
            assert f.cancel() is False
        finally:
            release.touch()
        assert f.result(timeout=30) == "released"


@pytest.mark.xfail(strict=True, reason="issue 17: shutdown(cancel_futures=True) must let "
                   "running calls finish; today it cancels and kills them")
def test_shutdown_cancel_futures_lets_running_calls_finish(solo_client, tmp_path):
    release, started = tmp_path / "release", tmp_path / "started"
    ex = Executor(endpoint_id="one", client=solo_client)
    try:
        f = ex.submit(hold, str(started), str(release))
        wait_until(started.exists, 30, "the call to start")
        ex.shutdown(wait=False, cancel_futures=True)
        assert not f.cancelled()
    finally:
        release.touch()
        ex.shutdown()
    assert f.result(timeout=30) == "released"


def test_owns_its_client_when_given_an_address(fabric_procs):
    with Executor(endpoint_id="alpha", address=fabric_procs.address) as ex:
        assert ex.submit(pow, 2, 10).result(timeout=30) == 1024
    assert ex.client._closed


def test_keeps_no_reference_to_finished_futures_or_results(client):
    with Executor(endpoint_id="alpha", client=client) as ex:
        f = ex.submit(make_payload, 1)
        value = f.result(timeout=30)
        ref_value = weakref.ref(value)
        ref_future = weakref.ref(f)
        del f, value
        gc.collect()
        assert ref_future() is None and ref_value() is None
        assert not ex._futures
