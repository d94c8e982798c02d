"""Tier 3: the concurrent.futures contract of Executor, against real processes."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import sys
import time
import weakref

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client, Executor

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def slow(seconds):
    time.sleep(seconds)
    return seconds


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
    with Executor(client=client) as ex:
        assert list(ex.map(pow, range(1000), [2] * 1000, timeout=60)) == [i * i for i in range(1000)]


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


def test_wait_and_as_completed(client):
    with Executor(client=client) as ex:
        fs = [ex.submit(slow, d) for d in (0.4, 0.01, 0.2)]
        done, not_done = cf.wait(fs, timeout=30, return_when=cf.FIRST_COMPLETED)
        assert done and fs[1] in done or len(done) >= 1
        order = [f.result() for f in cf.as_completed(fs, timeout=30)]
        assert sorted(order) == [0.01, 0.2, 0.4]
        done, not_done = cf.wait(fs, timeout=30)
        assert not not_done


def test_cancel_queued_futures(client):
    with Executor(endpoint_id="beta", client=client) as ex:
        running = [ex.submit(slow, 1.0) for _ in range(2)]
        queued = [ex.submit(slow, 1.0) for _ in range(10)]
        assert all(f.cancel() for f in queued)
        assert all(f.cancelled() for f in queued)
        assert [f.result(timeout=30) for f in running] == [1.0, 1.0]
        with pytest.raises(cf.CancelledError):
            queued[0].result()
    # The hub heard about it: those tasks are cancelled there too.
    states = {t.task_id: t.state.name for t in client.tasks(limit=50)}
    assert {states.get(f.task_id) for f in queued} <= {"CANCELLED", None}


def test_shutdown_cancel_futures_and_use_after_shutdown(client):
    ex = Executor(endpoint_id="alpha", client=client)
    first = ex.submit(slow, 0.5)
    rest = [ex.submit(slow, 0.5) for _ in range(20)]
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 20
    assert sum(f.cancelled() for f in rest) >= 10  # the queued ones did not run
    assert first.done()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(slow, 0)
    ex.shutdown()  # idempotent


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
