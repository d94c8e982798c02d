"""Tier 3: what a task prints stays with the task, not in its endpoint's log.

A real hub and endpoint; the endpoint's log is its stdout and stderr, which
LocalFabric collects line by line. The worker writes a task's output before
it sends the task's result, so once a later line from the endpoint itself
(the death of a worker, logged by the pool) is in the log, anything the first
task's output would have put there is too.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.processes

MiB = 1024 * 1024


def shout(n_bytes):
    line = "y" * 1023 + "\n"
    for i in range(n_bytes // 1024):
        (sys.stdout if i % 2 else sys.stderr).write(line)
    return n_bytes


def die():
    import os

    os._exit(7)


def log_size(child) -> int:
    return sum(len(line) + 1 for line in child.lines)


def test_a_task_printing_50_mib_grows_the_endpoint_log_by_a_bounded_amount(local_fabric):
    fab = local_fabric(["loud"], workers=1, endpoint_args=("--output-tail", "65536"))
    endpoint = fab.endpoints["loud"]
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        before = log_size(endpoint)
        tid = c.run(50 * MiB, function_id=c.register_function(shout), endpoint_id="loud")
        assert c.get_result(tid, timeout=120) == 50 * MiB
        # A line the endpoint logs after that task's output was written.
        since = len(endpoint.lines)
        with pytest.raises(errors.WorkerDied):
            c.get_result(c.run(function_id=c.register_function(die), endpoint_id="loud"),
                         timeout=60)
        endpoint.wait_for(r"worker pid \d+ died \(exit code 7\)", 30, since)
        grown = log_size(endpoint) - before
        assert grown < 64 * 1024, f"the endpoint's log grew by {grown} bytes"
