"""What a careless or hostile user does to a running fabric, and what must hold.

Real hub and endpoint processes: a client SIGKILLed in the middle of a
`batch_run`, connections that never speak, an endpoint whose name the hub
refuses, a store the hub cannot open. Each test failed on the code before
its fix (issue 13) and passes after.
"""

from __future__ import annotations

import select
import socket
import sys
import textwrap

import psutil
import pytest

from fabric.client import Client
from fabric.launch import spawn_command
from fabric.names import endpoint_dir
from fabric.states import TaskState
from fabric.testing import value_of, wait_until

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


def test_silent_connections_are_closed_and_do_not_lock_clients_out(local_fabric):
    """500 sockets that never speak (and a few that only say the HTTP/2 preface),
    against a hub whose file limit they exceed: the hub closes them all within its
    handshake and idle bounds, and a client runs tasks meanwhile."""
    fab = local_fabric(["solo"], hub_args=("--handshake-timeout", "1", "--idle-timeout", "2"))
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=60)
        fid = c.register_function(value_of)
    hub = psutil.Process(fab.hub.pid)
    limit = hub.num_fds() + 100
    hub.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    silent = [socket.create_connection(("127.0.0.1", fab.port)) for _ in range(500)]
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    idle = [socket.create_connection(("127.0.0.1", fab.port)) for _ in range(5)]
    for s in idle:
        s.sendall(preface)
    try:
        with Client(fab.address) as c:  # a new client, behind the silent ones
            ids = c.batch_run(fid, [((i,), {}) for i in range(20)], endpoint_id="solo")
            assert c.get_batch_result(ids, timeout=120) == [value_of(i) for i in range(20)]
        still_open = set(silent + idle)

        def all_closed() -> bool:
            readable, _, _ = select.select(list(still_open), [], [], 0)
            for s in readable:
                try:
                    if not s.recv(65536):
                        still_open.discard(s)
                except ConnectionError:
                    still_open.discard(s)
            return not still_open

        wait_until(all_closed, 60, "the hub to close every silent and idle connection")
    finally:
        for s in silent + idle:
            s.close()
    fab.hub.wait_for("file descriptors in use", 30)  # and it said why clients waited


def test_an_endpoint_the_hub_refuses_exits_with_the_reason(local_fabric):
    """The hub refuses an endpoint whose allow-list is over its limit: retrying the
    same Hello cannot help, so the endpoint stops and says why (it used to retry
    forever)."""
    fab = local_fabric([])
    folder = endpoint_dir("picky", fab.home)
    folder.mkdir(parents=True)
    many = ", ".join(f'"f{i}"' for i in range(100_001))
    (folder / "config.toml").write_text(f"allow_functions = [{many}]\n")
    child = fab.start_endpoint("picky")
    assert child.proc.wait(60) == 1, child.tail(20)
    child.wait_for("stopped: the hub refused it: allow-list too long", 1)
    assert len([line for line in child.lines if "allow-list too long" in line]) <= 2


@pytest.mark.parametrize("store, message", [
    ("postgresql://user@localhost/fabric", "SQLite stores only"),
    ("postgresql:/user@localhost/fabric", "SQLite stores only"),
    ("mysql://localhost/db", "unknown kind of store 'mysql'"),
    ("{tmp}", "is a folder"),
    ("{tmp}/notes.txt", "is not a SQLite database"),
])
def test_a_store_the_hub_cannot_open_is_a_precise_error_at_start(tmp_path, store, message):
    (tmp_path / "notes.txt").write_text("not a database\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    child = spawn_command("hub", [sys.executable, "-m", "fabric", "hub", "--port", "0",
                                  "--store", store.format(tmp=tmp_path)],
                          env={"FABRIC_HOME": str(tmp_path / "home")})
    assert child.proc.wait(60) == 2  # a usage error, before anything is opened
    child.wait_for(message, 1)
    assert not any("Traceback" in line for line in child.lines), child.tail(20)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no postgresql:/ folder
    assert (tmp_path / "notes.txt").read_text() == "not a database\n"
