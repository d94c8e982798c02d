"""Tokens, ownership and sharing against a real hub and real endpoints.

One hub (auth on, as always) with an endpoint of the LocalFabric user and one
of alice's; alice and bob are users with their own tokens. Every refusal is
checked by its gRPC code and Fabric error kind; the hub's audit log names
the peer and the reason and never the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time

import cloudpickle
import grpc
import pytest
from jose import jwt

from fabric import errors
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.client import Client
from fabric.credentials import save_token
from fabric.hub.auth import AUDIENCE, ISSUER, SigningKey, key_path
from fabric.hub.tokens import TokenBook
from fabric.launch import LocalFabric
from fabric.states import TaskState
from fabric.wire import ERROR_KEY

pytestmark = pytest.mark.processes
# Workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def double(x):
    return 2 * x


def triple(x):
    return 3 * x


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    f = LocalFabric(tmp_path_factory.mktemp("auth"), ["house"], workers=1,
                    hub_args=("--heartbeat", "0.5"))
    f.start()
    try:
        with TokenBook(f.store) as book:
            f.tokens = {u: book.create(u)[0] for u in ("alice", "bob")}
            # alice's endpoint: her endpoint token where the endpoint looks first
            save_token(book.create("alice", "endpoint", "alice-ep")[0],
                       f.home / "endpoints" / "alice-ep" / "token")
        f.start_endpoint("alice-ep")
        with Client(f.address) as c:
            c.wait_for_endpoints(1, timeout=30)  # "house", the LocalFabric user's own
        with Client(f.address, token=f.tokens["alice"]) as a:
            _wait(lambda: any(e.name == "alice-ep" and e.online for e in a.endpoints()), 30)
        yield f
    finally:
        print(f.output())
        f.stop()


def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over):
    now = int(time.time())
    c = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "kind": "user", "jti": "t-forged",
         "iat": now, "nbf": now, "exp": now + 600}
    c.update(over)
    return c


def _status(address: str, token: str | None, method: str = "Status"):
    """Call a ClientService method on a raw channel; returns (code, fabric error kind)."""
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.ClientServiceStub(ch)
        md = (("authorization", f"Bearer {token}"),) if token is not None else None
        request = pb.StatusRequest() if method == "Status" else pb.HealthRequest()
        try:
            getattr(stub, method)(request, metadata=md, timeout=10)
            return grpc.StatusCode.OK, None
        except grpc.RpcError as exc:
            kind = dict(exc.trailing_metadata() or ()).get(ERROR_KEY)
            return exc.code(), kind


def test_forged_expired_and_misdirected_tokens_are_refused(fab):
    key = SigningKey.load_or_create(key_path(fab.store))
    other_hub = SigningKey.generate()
    sign = lambda claims, k=key: jwt.encode(claims, k._signer, algorithm="ES256")  # noqa: E731
    header_hs = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    resigned = f"{header_hs}.{body}." + _b64(hmac.new(key.public_pem, f"{header_hs}.{body}".encode(),
                                                       hashlib.sha256).digest())
    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + f".{body}."
    now = time.time()
    unauthenticated = {
        "missing": None,
        "garbage": "not-a-jwt",
        "expired": key.issue("alice", ttl_s=60, now=now - 3600)[0],
        "not yet valid": sign(_claims(nbf=int(now) + 3600)),
        "issued in the future": sign(_claims(iat=int(now) + 3600)),
        "wrong audience": sign(_claims(aud="someone-else")),
        "wrong issuer": sign(_claims(iss="evil-hub")),
        "alg none": unsigned,
        "HS256 with the hub's public key": resigned,
        "another hub's key": other_hub.issue("alice")[0],
        "tampered": fab.tokens["alice"][:-6] + ("AAAAAA" if not fab.tokens["alice"].endswith("AAAAAA") else "BBBBBB"),
    }
    for why, token in unauthenticated.items():
        assert _status(fab.address, token) == (grpc.StatusCode.UNAUTHENTICATED, "AUTH_FAILED"), why
    # A genuine token works; health needs none.
    assert _status(fab.address, fab.tokens["alice"]) == (grpc.StatusCode.OK, None)
    assert _status(fab.address, None, "Health") == (grpc.StatusCode.OK, None)
    # An endpoint token can connect its endpoint and nothing else.
    ep_token = (fab.home / "endpoints" / "alice-ep" / "token").read_text().strip()
    assert _status(fab.address, ep_token) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    with pytest.raises(errors.PermissionDenied, match="endpoint token"):
        with Client(fab.address, token=ep_token) as c:
            c.endpoints()
    # The audit log names the reason and the peer, never a token.
    hub_log = "\n".join(fab.hub.lines)
    assert "auth-failed peer=ipv4:127.0.0.1" in hub_log and "reason=token expired" in hub_log
    assert "denied peer=" in hub_log and "user=alice kind=endpoint" in hub_log
    assert not any(t and t in hub_log for t in [*unauthenticated.values(), ep_token])


def _connect(address: str, token: str, name: str):
    """Open an endpoint stream with `token` as endpoint `name`; the first reply, or the error."""
    with grpc.insecure_channel(address) as ch:
        call = pb_grpc.EndpointServiceStub(ch).Connect(
            iter([pb.EndpointMessage(hello=pb.Hello(name=name))]),
            metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        try:
            return next(call)
        except grpc.RpcError as exc:
            return exc.code()


def test_endpoint_tokens_are_bound_to_their_endpoint(fab):
    ep_token = (fab.home / "endpoints" / "alice-ep" / "token").read_text().strip()
    assert _connect(fab.address, ep_token, "not-alice-ep") == grpc.StatusCode.PERMISSION_DENIED
    assert _connect(fab.address, fab.tokens["alice"], "alice-ep") == grpc.StatusCode.PERMISSION_DENIED


def test_users_see_and_use_only_their_own_or_shared_things(fab):
    with Client(fab.address, token=fab.tokens["alice"]) as alice, \
            Client(fab.address, token=fab.tokens["bob"]) as bob:
        fid = alice.register_function(double)
        tid = alice.run(21, function_id=fid, endpoint_id="alice-ep")
        assert alice.get_result(tid, timeout=30) == 42
        # Bob sees none of it.
        with pytest.raises(errors.PermissionDenied, match="another user"):
            bob.get_result(tid)
        with pytest.raises(errors.PermissionDenied):
            bob._call(bob.aio.status_of([tid]))
        assert tid not in {t.task_id for t in bob.tasks()}
        assert "alice-ep" not in {e.name for e in bob.endpoints()}
        # Status counts only what the caller may see: bob has no tasks, functions or endpoints.
        bob_view, alice_view = bob.status(), alice.status()
        assert sum(bob_view.tasks_by_state.values()) == 0 and bob_view.functions == 0
        assert bob_view.endpoints_total == 0
        assert alice_view.tasks_by_state.get("SUCCESS", 0) >= 1 and alice_view.functions >= 1
        assert alice_view.endpoints_total >= 1
        with pytest.raises(errors.PermissionDenied, match="function"):
            bob.run(1, function_id=fid)
        bob_fid = bob.register_function(triple)
        with pytest.raises(errors.PermissionDenied, match="endpoint alice-ep"):
            bob.run(1, function_id=bob_fid, endpoint_id="alice-ep")
        # Unnamed, bob's task may go only where bob may run: nowhere yet.
        with pytest.raises(errors.NoEligibleEndpoint):
            bob.run(1, function_id=bob_fid, fail_fast=True)
        # A running task of alice's cannot be cancelled by bob.
        slow = alice.register_function(time.sleep)
        running = alice.run(30, function_id=slow, endpoint_id="alice-ep")
        with pytest.raises(errors.PermissionDenied):
            bob.cancel([running])
        assert alice.cancel([running]) == [running]

        # Shared: bob may run his function on alice's endpoint, and alice's function.
        assert alice.share("endpoint", "alice-ep", ["bob"]) == ["bob"]
        assert bob.get_result(bob.run(5, function_id=bob_fid, endpoint_id="alice-ep"),
                              timeout=30) == 15
        alice.share("function", fid, ["bob"])
        assert bob.get_result(bob.run(4, function_id=fid), timeout=30) == 8
        # ... but still not her results; and bob cannot share what is not his.
        with pytest.raises(errors.PermissionDenied):
            bob.get_result(tid)
        with pytest.raises(errors.PermissionDenied, match="only the owner"):
            bob.share("function", fid, ["mallory"])
        alice.share("endpoint", "alice-ep", ["bob"], revoke=True)
        with pytest.raises(errors.PermissionDenied):
            bob.run(1, function_id=bob_fid, endpoint_id="alice-ep")


def test_queued_tasks_are_withdrawn_when_their_endpoint_stops_being_shared(fab):
    """Sharing checked at submission is checked again before sending: a revoke (or a
    new allow-list) between the two fails pinned tasks and re-routes the others."""
    with Client(fab.address, token=fab.tokens["alice"]) as alice, \
            Client(fab.address, token=fab.tokens["bob"]) as bob:
        slow = alice.register_function(time.sleep)
        # Fill every credit alice-ep grants, so what comes next waits at the hub.
        busy = alice.batch_run(slow, [((30,), {})] * 80, endpoint_id="alice-ep")
        alice.share("endpoint", "alice-ep", ["bob"])
        bob_fid = bob.register_function(triple)
        pinned = bob.run(1, function_id=bob_fid, endpoint_id="alice-ep")
        free = bob.run(2, function_id=bob_fid, endpoints=["alice-ep"])
        alice.share("endpoint", "alice-ep", ["bob"], revoke=True)
        alice.cancel(busy)  # credits come back: the hub re-checks before it sends
        with pytest.raises(errors.TaskFailed, match="no longer accepts"):
            bob.get_result(pinned, timeout=30)
        _wait(lambda: {t.task_id: t for t in bob.tasks()}[free].endpoint_name == "", 30)
        info = {t.task_id: t for t in bob.tasks()}[free]
        assert info.state is TaskState.QUEUED, info  # held: bob may run nowhere now
        bob.cancel([free])


def test_revoking_a_token_ends_its_open_streams(fab):
    with TokenBook(fab.store) as book:
        ep_token, ep_info = book.create("local", "endpoint", "doomed")
        user_token, user_info = book.create("carol")
    save_token(ep_token, fab.home / "endpoints" / "doomed" / "token")
    doomed = fab.start_endpoint("doomed")
    doomed.wait_for("connected to hub", 30)
    # carol holds a result stream open
    with grpc.insecure_channel(fab.address) as ch:
        watch = pb_grpc.ClientServiceStub(ch).Watch(
            pb.WatchRequest(session_id="s-carol"),
            metadata=(("authorization", f"Bearer {user_token}"),), timeout=30)
        next(watch)  # subscribed
        env = {**os.environ, **fab.env}
        for jti in (ep_info.jti, user_info.jti):
            out = subprocess.run([sys.executable, "-m", "fabric", "token", "revoke", jti,
                                  "--store", str(fab.store)], env=env, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0 and jti in out.stdout, out.stderr
        with pytest.raises(grpc.RpcError) as info:
            next(watch)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in info.value.details()
    # The endpoint's stream was ended too; it is refused on reconnect and exits saying why.
    assert doomed.proc.wait(30) == 1
    doomed.wait_for("the hub refused it: token revoked", 1)
    assert _status(fab.address, user_token) == (grpc.StatusCode.UNAUTHENTICATED, "AUTH_FAILED")


def test_token_cli_saves_lists_and_refuses_bad_requests(fab, tmp_path):
    env = {**os.environ, "FABRIC_HOME": str(tmp_path)}

    def fabric(*args):
        return subprocess.run([sys.executable, "-m", "fabric", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    out = fabric("token", "create", "--user", "dave", "--ttl", "2h", "--save", "--store", str(fab.store))
    assert out.returncode == 0, out.stderr
    saved = tmp_path / "token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().strip() == out.stdout.strip()
    with Client(fab.address, token=saved.read_text().strip()) as dave:
        assert dave.endpoints() == []  # nothing of his, nothing shared with him
    listed = fabric("token", "list", "--store", str(fab.store))
    assert "dave" in listed.stdout and out.stdout.strip() not in listed.stdout
    assert fabric("token", "create", "--user", "x", "--kind", "endpoint",
                  "--store", str(fab.store)).returncode == 1  # an endpoint token needs --endpoint
    assert fabric("hub", "--no-auth", "--host", "0.0.0.0").returncode == 2  # loopback only


def test_admins_list_everything_but_read_no_ones_results(fab):
    with TokenBook(fab.store) as book:
        admin = book.create("root", "admin")[0]
    with Client(fab.address, token=fab.tokens["alice"]) as alice, \
            Client(fab.address, token=admin) as root:
        tid = alice.run(1, function_id=alice.register_function(double), endpoint_id="alice-ep")
        assert alice.get_result(tid, timeout=30) == 2
        assert {"house", "alice-ep"} <= {e.name for e in root.endpoints()}
        assert tid in {t.task_id for t in root.tasks(limit=1000)}
        with pytest.raises(errors.PermissionDenied):
            root.get_result(tid)


def test_a_store_from_before_auth_opens_and_keeps_its_data(tmp_path):
    from fabric.hub import schema

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a version-3 store: no tokens, no shares
        schema.ensure(db)
        db.execute("DROP TABLE tokens")
        db.execute("DROP TABLE shares")
        db.execute("INSERT INTO functions (function_id, name, body, python_version, owner, "
                   "created_at) VALUES ('fn-1', 'f', x'00', '3.11', 'local', 0)")
        db.execute("PRAGMA user_version=3")
    with TokenBook(path) as book:  # opening migrates
        book.create("alice")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert db.execute("SELECT owner FROM functions").fetchall() == [("local",)]
        assert db.execute("SELECT user FROM tokens").fetchall() == [("alice",)]


def test_another_users_task_id_cannot_be_resubmitted_to_watch_it(fab):
    with Client(fab.address, token=fab.tokens["alice"]) as alice, \
            Client(fab.address, token=fab.tokens["bob"]) as bob:
        tid = alice.run(4, function_id=alice.register_function(double), endpoint_id="alice-ep")
        assert alice.get_result(tid, timeout=30) == 8
        bob_fid = bob.register_function(triple)
        for _ in range(2):  # stored and final now; and live (below)
            req = pb.SubmitRequest(tasks=[pb.TaskSubmission(task_id=tid, function_id=bob_fid)],
                                   session_id=bob.aio.session_id)
            with pytest.raises(errors.PermissionDenied, match="another user"):
                bob._call(bob.aio._call("Submit", req))
            slow = alice.register_function(time.sleep)
            tid = alice.run(20, function_id=slow, endpoint_id="alice-ep")
        alice.cancel([tid])


def slow_double(x):
    time.sleep(0.5)
    return 2 * x


def test_an_endpoint_cannot_claim_or_answer_another_users_tasks(fab):
    with TokenBook(fab.store) as book:
        bob_ep = book.create("bob", "endpoint", "bob-ep")[0]
    with Client(fab.address, token=fab.tokens["alice"]) as alice:
        tid = alice.run(21, function_id=alice.register_function(slow_double), endpoint_id="alice-ep")
        forged = pb.TaskResult(task_id=tid, state=pb.SUCCESS, value=cloudpickle.dumps(666))
        frames = iter([pb.EndpointMessage(hello=pb.Hello(name="bob-ep", held_task_ids=[tid])),
                       pb.EndpointMessage(results=[forged])])
        with grpc.insecure_channel(fab.address) as ch:
            call = pb_grpc.EndpointServiceStub(ch).Connect(
                frames, metadata=(("authorization", f"Bearer {bob_ep}"),), timeout=3)
            replies = list(call)  # the hub ends the stream when our frames end
        assert tid in {c for m in replies for c in m.cancel}  # its claim was refused
        assert alice.get_result(tid, timeout=30) == 42  # the real result, not the forged one
    assert "sent a result for task" in "\n".join(fab.hub.lines)


def test_simulated_endpoints_with_a_wrong_token_fail_at_once(fab, tmp_path):
    out = subprocess.run([sys.executable, "-m", "fabric", "endpoint", "simulate", "--hub", fab.address,
                          "--count", "3", "--token", fab.tokens["bob"], "--connect-timeout", "60"],
                         env={**os.environ, "FABRIC_HOME": str(tmp_path)}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "refused endpoint sim-" in out.stderr, out.stderr
    assert "needs an endpoint token" in out.stderr
