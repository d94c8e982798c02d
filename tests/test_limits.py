"""Limits: the per-user caps on unfinished tasks and on stored arguments are
backpressure, not errors; payloads over the hub's limit are refused precisely;
the endpoint allow-list."""

from __future__ import annotations

import os
import sys
import threading
import time

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client
from fabric.credentials import save_token
from fabric.hub.tokens import TokenBook
from fabric.states import TaskState
from fabric.testing import wait_until

pytestmark = pytest.mark.processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap(x):
    time.sleep(0.1)
    return x


def echo(x):
    return x


def unfinished(client: Client) -> int:
    """The caller's tasks the hub holds that have not finished (its own view)."""
    return sum(n for name, n in client.status().tasks_by_state.items()
               if not TaskState[name].final)


def test_per_user_cap_makes_clients_wait_not_fail(local_fabric, tmp_path):
    fab = local_fabric(["one"], workers=1,
                       hub_args=("--max-queued-per-user", "2", "--max-payload", str(1 << 20)))
    with TokenBook(fab.store) as book:
        other = book.create("other")[0]
    release = str(tmp_path / "release")
    with Client(fab.address) as c, Client(fab.address, token=other) as o:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(wait_for_file)  # unfinished until released
        acked: list[str] = []
        submitter = threading.Thread(
            target=lambda: acked.extend(c.run(release, "x" * i, function_id=fid) for i in range(6)))
        submitter.start()
        peak = 0

        def observe() -> int:
            nonlocal peak
            peak = max(peak, unfinished(c))
            return peak

        try:
            # Two taken; the third is refused (QueueFull) and retried, not failed.
            wait_until(lambda: observe() and c.status().counters["queue_full"] > 0, 30,
                       "a submission over the cap to be refused and retried")
            assert submitter.is_alive() and len(acked) == 2
            # The cap is per user: with this user's queue full, another's run is taken.
            # (Under a cap shared by all it would wait, as backpressure does, for good.)
            theirs: list[str] = []
            fid_o = o.register_function(echo)
            other_user = threading.Thread(target=lambda: theirs.append(o.run(1, function_id=fid_o)),
                                          daemon=True)
            other_user.start()
            other_user.join(30)
            assert theirs, "another user's submission waited behind this user's cap"
            (held,) = theirs  # held at the hub: no endpoint of theirs
            assert o.cancel([held]) == [held]
            assert len(acked) == 2 and observe() == 2
        finally:
            open(release, "w").close()
        # Released: the rest get in as earlier ones finish, never more than 2 at once.
        wait_until(lambda: observe() and not submitter.is_alive(), 60, "all six submitted")
        assert c.get_batch_result(acked, timeout=30) == list(range(6))
        assert peak == 2, peak
        # Oversize arguments are refused before anything is stored, naming the sizes.
        with pytest.raises(errors.PayloadTooLarge, match=r"arguments are \d+ bytes; the limit is 1048576"):
            c.run(b"x" * (1 << 20), function_id=c.register_function(echo))


def test_endpoint_allow_list(local_fabric):
    fab = local_fabric([], workers=1)
    with Client(fab.address) as c:
        allowed = c.register_function(echo)
        other = c.register_function(nap)
        fab.start_endpoint("picky", "--allow-function", allowed)
        c.wait_for_endpoints(1, timeout=30)
        assert c.get_result(c.run(5, function_id=allowed, endpoint_id="picky"), timeout=30) == 5
        with pytest.raises(errors.PermissionDenied, match="allow-list"):
            c.run(1, function_id=other, endpoint_id="picky")
        with pytest.raises(errors.NoEligibleEndpoint):  # never routed there either
            c.run(1, function_id=other, fail_fast=True)
    # alice's functions may run there when her name is on its list of owners
    with TokenBook(fab.store) as book:
        alice = book.create("alice")[0]
        save_token(book.create("local", "endpoint", "owners")[0],
                   fab.home / "endpoints" / "owners" / "token")
    fab.start_endpoint("owners", "--allow-owner", "alice")
    with Client(fab.address, token=alice) as a, Client(fab.address) as c:
        c.wait_for_endpoints(2, timeout=30)
        c.share("endpoint", "owners", ["alice"])
        fid = a.register_function(echo)
        assert a.get_result(a.run(7, function_id=fid, endpoint_id="owners"), timeout=30) == 7
        with pytest.raises(errors.PermissionDenied, match="allow-list"):
            c.run(1, function_id=c.register_function(echo), endpoint_id="owners")


def wait_for_file(path, x):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return len(x)


def test_per_user_cap_on_stored_arguments_makes_uploads_wait_not_fail(local_fabric, tmp_path):
    fab = local_fabric(["two"], workers=2, hub_args=("--max-stored-per-user", str(4 << 20)))
    release = str(tmp_path / "release")
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(wait_for_file)
        big = b"x" * (3 << 19)  # 1.5 MiB: a blob
        first = [c.run(release, big, function_id=fid) for _ in range(2)]  # 3 MiB stored
        third: list = []
        submit = threading.Thread(target=lambda: third.append(c.run(release, big, function_id=fid)))
        submit.start()
        submit.join(1.5)
        assert submit.is_alive() and not third  # 4.5 MiB would pass the cap: it waits...
        open(release, "w").close()  # ... until the first two finish and their blobs go
        submit.join(30)
        assert not submit.is_alive() and third
        assert c.get_batch_result(first + third, timeout=30) == [len(big)] * 3
