"""Tier 3: client calls given more task ids than one hub call takes, and calls the
hub refuses, against a real hub and endpoint.

Whatever number of ids the client could have submitted, every call that takes
ids must answer for all of them (the client pages them under the hub's limit),
and a call that fails must leave the client as it was: the next wait on the
same client gets its results. The real tasks' ids come last in each list, so
a call that dropped or truncated the tail would miss exactly those. Unknown
ids make up the bulk: the hub's limit counts ids, not tasks, and they are
cheap to ask about.
"""

from __future__ import annotations

import sys
import uuid

import cloudpickle
import pytest

from fabric import config, errors
from fabric.client import Client
from fabric.launch import LocalFabric
from fabric.testing import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.processes

#: One id more than the hub takes in one call.
TOO_MANY = config.MAX_IDS_PER_CALL + 1


def triple(i):
    return 3 * i


def unknown_ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """A hub, endpoint `ep` (runs tasks) and endpoint `gone` (registered, then killed:
    tasks sent there stay queued at the hub)."""
    fab = LocalFabric(tmp_path_factory.mktemp("many-ids"), ["ep", "gone"], workers=1)
    try:
        fab.start()
        with Client(fab.address) as c:
            c.wait_for_endpoints(2, timeout=60)
            fab.kill_endpoint("gone")
            wait_until(lambda: not {e.name: e.online for e in c.endpoints()}["gone"], 60,
                       "endpoint gone is seen offline")
        yield fab
    finally:
        print(fab.output())
        fab.stop()


def test_a_wait_on_more_ids_than_one_call_takes_answers_all_and_the_next_wait_works(fab):
    with Client(fab.address) as c:
        fid = c.register_function(triple)
        real = c.batch_run(fid, [((i,), {}) for i in range(10)], endpoint_id="ep")
        ids = unknown_ids(TOO_MANY - len(real)) + real
        got = c.get_batch_result(ids, timeout=120, return_exceptions=True)
        assert len(got) == TOO_MANY
        assert got[-10:] == [3 * i for i in range(10)]
        assert all(isinstance(g, errors.TaskNotFound) for g in got[:-10])
        # The same client, a normal wait: answered from the hub at once.
        assert c.get_batch_result(real[:5], timeout=20) == [0, 3, 6, 9, 12]


def test_a_status_of_more_ids_than_one_call_takes_answers_all(fab):
    with Client(fab.address) as c:
        fid = c.register_function(triple)
        real = c.batch_run(fid, [((i,), {}) for i in range(10, 20)], endpoint_id="ep")
        assert c.get_batch_result(real, timeout=60) == [3 * i for i in range(10, 20)]
        # No timeout: what the hub knows now (GetResults), for every id.
        got = c.get_batch_result(unknown_ids(TOO_MANY - len(real)) + real,
                                 return_exceptions=True)
        assert len(got) == TOO_MANY and got[-10:] == [3 * i for i in range(10, 20)]
        assert all(isinstance(g, errors.TaskNotFound) for g in got[:-10])


def test_a_cancel_of_more_ids_than_one_call_takes_cancels_the_last_ones(fab):
    with Client(fab.address) as c:
        fid = c.register_function(triple)
        queued = c.batch_run(fid, [((i,), {}) for i in range(5)], endpoint_id="gone")
        cancelled = c.cancel(unknown_ids(TOO_MANY - len(queued)) + queued)
        assert sorted(cancelled) == sorted(queued)
        got = c.get_batch_result(queued, timeout=30, return_exceptions=True)
        assert all(isinstance(g, errors.TaskCancelled) for g in got), got


def test_a_refused_wait_leaves_the_client_as_it_was(fab):
    """The hub refuses the whole Subscribe (one malformed id); the ids of that call
    must not stay marked as watched, or the next wait on them never hears back."""
    with Client(fab.address) as c:
        fid = c.register_function(triple)
        real = c.batch_run(fid, [((i,), {}) for i in range(20, 30)], endpoint_id="ep")
        with pytest.raises(errors.InvalidRequest):
            c.get_batch_result(real + ["x" * 200], timeout=20)
        assert c.get_batch_result(real, timeout=20) == [3 * i for i in range(20, 30)]


def test_a_refused_wait_keeps_the_results_the_client_had(fab):
    """Results already delivered to the client and not collected yet stay with it
    when a wait that includes them is refused."""
    with Client(fab.address) as c:
        fid = c.register_function(triple)
        c.get_batch_result([c.run(0, function_id=fid, endpoint_id="ep")], timeout=30)  # watching
        real = c.batch_run(fid, [((i,), {}) for i in range(30, 35)], endpoint_id="ep")
        # Pushed to this client's stream as they finish (it watches what it submits).
        wait_until(lambda: all(t in c.aio._results for t in real), 30,
                   "the results to reach the client")
        with pytest.raises(errors.InvalidRequest):
            c.get_batch_result(real + ["x" * 200], timeout=20)
        assert all(t in c.aio._results for t in real)
        assert c.get_batch_result(real, timeout=20) == [3 * i for i in range(30, 35)]


def wait_for_file(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def test_a_timed_out_wait_keeps_the_results_that_came(fab, tmp_path):
    release = tmp_path / "release"
    with Client(fab.address) as c, Client(fab.address) as other:
        fid = c.register_function(triple)
        fast = c.run(40, function_id=fid, endpoint_id="ep")
        wait_until(lambda: other.get_batch_result([fast], return_exceptions=True) == [120], 30,
                   "the fast task to finish at the hub")
        slow = c.run(str(release), function_id=c.register_function(wait_for_file),
                     endpoint_id="ep")
        with pytest.raises(errors.TaskTimeout):
            c.get_batch_result([fast, slow], timeout=5)
        assert fast in c.aio._results  # came for the call that timed out: kept
        release.write_text("go")
        assert c.get_batch_result([fast, slow], timeout=60) == [120, "released"]
