"""What a careless or hostile user does to a running fabric, and what must hold.

Real hub and endpoint processes: a client SIGKILLed in the middle of a
`batch_run`, connections that never speak, an endpoint whose name the hub
refuses, a store the hub cannot open. Each test failed on the code before
its fix (issue 13) and passes after.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from fabric.client import Client
from fabric.launch import spawn_command
from fabric.states import TaskState
from fabric.testing import wait_until

pytestmark = pytest.mark.processes

UNFINISHED = (TaskState.QUEUED.name, TaskState.DISPATCHED.name)

#: A client that submits a long batch to one endpoint until it is killed.
SUBMITTER = textwrap.dedent("""
    import sys
    from fabric.client import Client
    from fabric.testing import value_of

    with Client(sys.argv[1]) as c:
        fid = c.register_function(value_of)
        print("submitting", flush=True)
        c.batch_run(fid, [((i,), {}) for i in range(150_000)], endpoint_id=sys.argv[2])
""")


def stored_states(c: Client) -> dict[str, int]:
    return {k: v for k, v in c.status().tasks_by_state.items() if v}


def test_a_client_killed_mid_batch_run_leaves_nothing_queued(local_fabric):
    """Whatever the hub committed of a killed client's submissions runs: the hub used
    to cancel the queueing of a batch whose commit went on without it (2,048 tasks
    queued forever, with the endpoint online and idle)."""
    fab = local_fabric(["solo"], workers=2)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        submitted = 0
        for attempt in range(3):  # each kill lands in a different batch's commit
            child = spawn_command(f"submitter {attempt}",
                                  [sys.executable, "-c", SUBMITTER, fab.address, "solo"],
                                  env=fab.env)
            try:
                child.wait_for("submitting", timeout=60)
                # Kill once several batches are stored and more are on their way in.
                wait_until(lambda: sum(stored_states(c).values()) >= submitted + 6000, 120,
                           "the killed client's batches to be stored", every=0.01)
            finally:
                child.kill()
            submitted = sum(stored_states(c).values())
        # Every stored task runs to its end; none waits for a queue nobody fills.
        states = wait_until(
            lambda: (s := stored_states(c)) and not any(s.get(k) for k in UNFINISHED) and s,
            120, "every stored task to finish")
        assert set(states) == {TaskState.SUCCESS.name}, states
        assert states[TaskState.SUCCESS.name] >= submitted
