"""The CLI's `endpoint share`, `function share` and `token revoke --user`, against a
real hub: each changes what another user may do, seen through that user's client."""

from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import pytest

from fabric import errors
from fabric.client import Client
from fabric.hub.tokens import TokenBook
from fabric.testing import wait_until

pytestmark = pytest.mark.processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def triple(x):
    return 3 * x


def fabric_cli(fab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **fab.env})


def refused(call) -> bool:
    try:
        call()
    except errors.PermissionDenied:
        return True
    return False


def test_share_an_endpoint_and_a_function_then_revoke(local_fabric):
    fab = local_fabric(["mine"], workers=1)
    with TokenBook(fab.store) as book:
        bob_token = book.create("bob")[0]
    with Client(fab.address) as me, Client(fab.address, token=bob_token) as bob:
        me.wait_for_endpoints(1, timeout=30)
        fid = me.register_function(triple)
        bobs = bob.register_function(triple)  # his own copy: owned by him
        # Not shared: bob may use neither my endpoint nor my function.
        assert refused(lambda: bob.run(1, function_id=bobs, endpoint_id="mine"))
        assert refused(lambda: bob.run(1, function_id=fid))

        out = fabric_cli(fab, "endpoint", "share", "mine", "--with", "bob", "--hub", fab.address)
        assert out.returncode == 0, out.stderr
        assert bob.get_result(bob.run(2, function_id=bobs, endpoint_id="mine"), timeout=30) == 6
        out = fabric_cli(fab, "function", "share", fid, "--with", "bob", "--hub", fab.address)
        assert out.returncode == 0, out.stderr
        assert bob.get_result(bob.run(3, function_id=fid, endpoint_id="mine"), timeout=30) == 9

        for kind, ref in (("endpoint", "mine"), ("function", fid)):
            out = fabric_cli(fab, kind, "share", ref, "--with", "bob", "--revoke",
                             "--hub", fab.address)
            assert out.returncode == 0, out.stderr
        assert refused(lambda: bob.run(1, function_id=bobs, endpoint_id="mine"))
        assert refused(lambda: bob.run(1, function_id=fid))
        # Only the owner may share.
        with pytest.raises(errors.FabricError):
            bob.share("endpoint", "mine", ["bob"])


def test_token_revoke_user_revokes_every_token_of_that_user(local_fabric):
    fab = local_fabric([], workers=1)
    with TokenBook(fab.store) as book:
        first, second = book.create("carol")[0], book.create("carol")[0]
        dave = book.create("dave")[0]
    clients = {name: Client(fab.address, token=tok, retry_timeout=5)
               for name, tok in (("first", first), ("second", second), ("dave", dave))}
    try:
        for c in clients.values():
            c.status()  # every token works
        out = fabric_cli(fab, "token", "revoke", "--user", "carol", "--store", str(fab.store))
        assert out.returncode == 0, out.stderr

        def rejected(c: Client) -> bool:
            try:
                c.status()
            except errors.AuthError:
                return True
            return False

        wait_until(lambda: rejected(clients["first"]) and rejected(clients["second"]), 10,
                   "both of carol's tokens to be refused")
        assert clients["dave"].status()  # another user's token is untouched
    finally:
        for c in clients.values():
            c.close()
