"""A malicious or broken peer against a live hub: fuzzed frames, wrong types, huge
fields, bad ids, oversize payloads. Every call gets a precise status (never
INTERNAL/UNKNOWN); afterwards the hub is up, another user's run completes,
and nothing of another user's in the store changed.

Also: the hub process never unpickles user data (an audit hook in a real
hub process watches for `pickle.find_class`, which any unpickling of a
cloudpickled function, argument or result would trigger).
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import time
from pathlib import Path

import cloudpickle
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric import config
from fabric._proto import fabric_pb2 as pb
from fabric.client import Client
from fabric.credentials import remember
from fabric.hub.tokens import TokenBook
from fabric.launch import (LISTENING, LocalFabric, provision_endpoint_token, provision_tokens,
                           spawn_command, start_endpoint, stop_all)
from fabric.wire import ERROR_KEY

pytestmark = pytest.mark.processes
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MAX_PAYLOAD = 1 << 20
#: What a bad request may get back: each a precise refusal, never INTERNAL or UNKNOWN.
PRECISE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE}
UNARY = {  # method -> a valid request to truncate and mutate
    "RegisterFunction": pb.RegisterFunctionRequest(name="f", body=b"\x80\x05N.", python_version="3.11"),
    "Submit": pb.SubmitRequest(tasks=[pb.TaskSubmission(task_id="t1", function_id="fn-x",
                                                        args=b"abc", endpoint="steady")],
                               session_id="s1"),
    "GetResults": pb.GetResultsRequest(task_ids=["t1", "t2"]),
    "Subscribe": pb.SubscribeRequest(session_id="s1", task_ids=["t1"]),
    "Cancel": pb.CancelRequest(task_ids=["t1"]),
    "ListEndpoints": pb.ListEndpointsRequest(),
    "ListTasks": pb.ListTasksRequest(limit=5),
    "Status": pb.StatusRequest(),
    "Share": pb.ShareRequest(kind="endpoint", ref="steady", users=["mallory"]),
    "Health": pb.HealthRequest(),
}
tried = {"frames": 0}


def square(x):
    return x * x


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    with LocalFabric(tmp_path_factory.mktemp("bad"), ["steady"], workers=1,
                     hub_args=("--max-payload", str(MAX_PAYLOAD))) as f:
        with TokenBook(f.store) as book:
            f.mallory = book.create("mallory")[0]
            f.mallory_ep = book.create("mallory", "endpoint", "mal-ep")[0]
        with Client(f.address) as c:
            c.wait_for_endpoints(1, timeout=30)
            fid = c.register_function(square)
            assert c.get_result(c.run(3, function_id=fid), timeout=30) == 9
        yield f


def others(store) -> dict[str, set]:
    """What the store holds that is not mallory's (the columns a bad request could corrupt)."""
    columns = {"functions": "function_id, name, body, python_version, owner",
               "endpoints": "endpoint_id, name, owner",
               "tasks": "task_id, function_id, state, owner, args, value, error"}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Tasks once final (a result's commit may trail its delivery by a moment).
        return {t: set(db.execute(f"SELECT {cols} FROM {t} WHERE owner != 'mallory'"
                                  + (" AND completed_at IS NOT NULL" if t == "tasks" else "")))
                for t, cols in columns.items()}


def _call(channel, method: str, frame: bytes, token: str, timeout: float = 5.0,
          by_grpc: bool = False):
    """Send raw bytes as the request of ClientService/METHOD; returns the status code.
    A refusal must come from the hub (with its error kind) unless `by_grpc`."""
    tried["frames"] += 1
    md = (("authorization", f"Bearer {token}"),)
    path = f"/fabric.v1.ClientService/{method}"
    try:
        if method == "Watch":
            call = channel.unary_stream(path)(frame, metadata=md, timeout=0.5)
            next(call)
            call.cancel()
        else:
            channel.unary_unary(path)(frame, metadata=md, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.CANCELLED) and not by_grpc:
            assert dict(exc.trailing_metadata() or ()).get(ERROR_KEY), (method, exc)
        return exc.code()


frames = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(sorted(UNARY)), st.integers(0, 400), st.binary(max_size=8)).map(
        lambda t: UNARY[t[0]].SerializeToString()[: t[1]] + t[2]),  # truncated, junk appended
)


def test_fuzzed_frames_get_precise_errors_and_change_nothing(fab):
    before = others(fab.store)
    with grpc.insecure_channel(fab.address) as channel:
        @settings(max_examples=400, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(method=st.sampled_from([*sorted(UNARY), "Watch"]), frame=frames)
        def fuzz(method, frame):
            code = _call(channel, method, frame, fab.mallory)
            allowed = PRECISE | ({grpc.StatusCode.DEADLINE_EXCEEDED} if method == "Watch" else set())
            assert code in allowed, (method, frame, code)

        fuzz()
        # Precise answers for the classic abuses.
        huge = pb.GetResultsRequest(task_ids=[f"t{i}" for i in range(100_001)]).SerializeToString()
        assert _call(channel, "GetResults", huge, fab.mallory, 30) == grpc.StatusCode.INVALID_ARGUMENT
        for bad_id in ("", "x" * 500, "\x00\xff"):
            frame = pb.GetResultsRequest(task_ids=[bad_id]).SerializeToString()
            assert _call(channel, "GetResults", frame, fab.mallory) in (
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK)
        unknown_fn = pb.SubmitRequest(tasks=[pb.TaskSubmission(task_id="t-x", function_id="fn-nope")])
        assert _call(channel, "Submit", unknown_fn.SerializeToString(), fab.mallory) == \
            grpc.StatusCode.NOT_FOUND
        big = pb.RegisterFunctionRequest(name="big", body=b"x" * (MAX_PAYLOAD + 1), python_version="3.11")
        assert _call(channel, "RegisterFunction", big.SerializeToString(), fab.mallory) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        # A frame beyond the gRPC message limit is refused by gRPC itself, precisely.
        beyond = b"\x12" + b"\xff" * 5 + b"x" * (config.GRPC_MESSAGE_LIMIT + 2**20)
        assert _call(channel, "RegisterFunction", beyond, fab.mallory, 30, by_grpc=True) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
    print(f"\nbad-input suite: {tried['frames']} unary frames tried")
    assert tried["frames"] >= 400
    _still_serving(fab, before)


def _still_serving(fab, before) -> None:
    """The hub is up, another user's run completes, and nothing of theirs changed
    (the run just made only adds rows)."""
    with Client(fab.address) as c:
        fid = c.register_function(square)
        assert c.get_result(c.run(7, function_id=fid, endpoint_id="steady"), timeout=30) == 49
    after = others(fab.store)
    for table, rows in before.items():
        assert rows <= after[table], table
    assert after["endpoints"] == before["endpoints"]


def _stream(channel, frames_in: list[bytes], token: str,
            method: str = "/fabric.v1.EndpointService/Connect"):
    """Raw frames on a stream (an endpoint's link, by default); the status it ended with."""
    tried["frames"] += len(frames_in)
    call = channel.stream_stream(method)(
        iter(frames_in), metadata=(("authorization", f"Bearer {token}"),), timeout=5)
    try:
        for _ in call:
            pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(junk=st.binary(min_size=1, max_size=200))
def _fuzz_streams(channel, token, junk):
    code = _stream(channel, [junk], token)
    assert code in PRECISE | {grpc.StatusCode.DEADLINE_EXCEEDED}, (junk, code)


def test_bad_endpoint_streams_are_refused(fab):
    before = others(fab.store)
    hello = pb.EndpointMessage(hello=pb.Hello(name="mal-ep")).SerializeToString()
    with grpc.insecure_channel(fab.address) as channel:
        # Wrong message types: a client request where an endpoint message belongs.
        wrong = pb.SubmitRequest(tasks=[pb.TaskSubmission(task_id="t", function_id="f")])
        assert _stream(channel, [wrong.SerializeToString()], fab.mallory_ep) == \
            grpc.StatusCode.INVALID_ARGUMENT
        # No Hello first; a bad name; a credit grant out of range; junk after a Hello.
        assert _stream(channel, [pb.EndpointMessage(credits=5).SerializeToString()],
                       fab.mallory_ep) == grpc.StatusCode.INVALID_ARGUMENT
        bad_name = pb.EndpointMessage(hello=pb.Hello(name="mal-ep/../x")).SerializeToString()
        assert _stream(channel, [bad_name], fab.mallory_ep) == grpc.StatusCode.INVALID_ARGUMENT
        credits = pb.EndpointMessage(credits=-7).SerializeToString()
        assert _stream(channel, [hello, credits], fab.mallory_ep) == grpc.StatusCode.INVALID_ARGUMENT
        huge = pb.EndpointMessage(hello=pb.Hello(name="mal-ep", allow_functions=["f"] * 100_001))
        assert _stream(channel, [huge.SerializeToString()], fab.mallory_ep) == \
            grpc.StatusCode.INVALID_ARGUMENT
        # A user token cannot open an endpoint stream at all.
        assert _stream(channel, [hello], fab.mallory) == grpc.StatusCode.PERMISSION_DENIED
        _fuzz_streams(channel, fab.mallory_ep)
    print(f"\nbad-input suite: {tried['frames']} frames tried in all")
    _still_serving(fab, before)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(frames_in=st.lists(st.one_of(frames, st.just(UNARY["Submit"].SerializeToString())),
                          min_size=1, max_size=4))
def _fuzz_submit_stream(channel, token, frames_in):
    code = _stream(channel, frames_in, token, "/fabric.v1.ClientService/SubmitStream")
    assert code in PRECISE | {grpc.StatusCode.DEADLINE_EXCEEDED}, (frames_in, code)


def test_bad_frames_on_the_submission_stream_get_precise_errors(fab):
    before = others(fab.store)
    with grpc.insecure_channel(fab.address) as channel:
        _fuzz_submit_stream(channel, fab.mallory)
        # An endpoint token may not submit; nor may no token at all.
        ok = UNARY["Submit"].SerializeToString()
        assert _stream(channel, [ok], fab.mallory_ep,
                       "/fabric.v1.ClientService/SubmitStream") == grpc.StatusCode.PERMISSION_DENIED
    _still_serving(fab, before)


def _blob_upload(channel, frames_in: list[bytes], token: str,
                 service: str = "ClientService") -> grpc.StatusCode:
    """Raw frames as a PutBlob stream; the status it ended with."""
    tried["frames"] += len(frames_in)
    try:
        channel.stream_unary(f"/fabric.v1.{service}/PutBlob")(
            iter(frames_in), metadata=(("authorization", f"Bearer {token}"),), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _blob_download(channel, frame: bytes, token: str, service: str = "ClientService"):
    tried["frames"] += 1
    try:
        for _ in channel.unary_stream(f"/fabric.v1.{service}/GetBlob")(
                frame, metadata=(("authorization", f"Bearer {token}"),), timeout=5):
            pass
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


GOOD_CHUNK = pb.BlobChunk(data=b"abc", size=3, sha256=hashlib.sha256(b"abc").hexdigest())
blob_frames = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.integers(0, 120), st.binary(max_size=8)).map(
        lambda t: GOOD_CHUNK.SerializeToString()[: t[0]] + t[1]),
    st.builds(lambda size, sha, data: pb.BlobChunk(size=size, sha256=sha, data=data)
              .SerializeToString(),
              st.integers(-2**62, 2**62), st.text(max_size=70), st.binary(max_size=64)),
)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(frames_in=st.lists(blob_frames, min_size=1, max_size=3),
       service=st.sampled_from(["ClientService", "EndpointService"]))
def _fuzz_blob_uploads(channel, fab, frames_in, service):
    token = fab.mallory if service == "ClientService" else fab.mallory_ep
    code = _blob_upload(channel, frames_in, token, service)
    assert code in PRECISE, (frames_in, code)  # (it may draw a valid upload)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(frame=st.one_of(st.binary(max_size=120), st.builds(
           lambda b, o, t, e: pb.GetBlobRequest(blob_id=b, offset=o, task_id=t, endpoint_id=e)
           .SerializeToString(),
           st.one_of(st.text(max_size=40), st.just("b-" + "0" * 32)), st.integers(-5, 2**62),
           st.text(max_size=20), st.text(max_size=20))),
       service=st.sampled_from(["ClientService", "EndpointService"]))
def _fuzz_blob_downloads(channel, fab, frame, service):
    token = fab.mallory if service == "ClientService" else fab.mallory_ep
    code = _blob_download(channel, frame, token, service)
    assert code in PRECISE, (frame, code)


def test_bad_blob_transfers_get_precise_errors_and_leave_nothing(fab):
    before = others(fab.store)
    blobs_dir = Path(str(fab.store) + ".blobs")
    with grpc.insecure_channel(fab.address) as channel:
        _fuzz_blob_uploads(channel, fab)
        _fuzz_blob_downloads(channel, fab)
        # The classic abuses, each with its own precise answer.
        sha = hashlib.sha256(b"abcd").hexdigest()
        assert _blob_upload(channel, [pb.BlobChunk(data=b"abc", size=4, sha256=sha)
                                      .SerializeToString()], fab.mallory) == \
            grpc.StatusCode.INVALID_ARGUMENT  # short
        assert _blob_upload(channel, [pb.BlobChunk(data=b"abcde", size=4, sha256=sha)
                                      .SerializeToString()], fab.mallory) == \
            grpc.StatusCode.INVALID_ARGUMENT  # long
        assert _blob_upload(channel, [pb.BlobChunk(data=b"abce", size=4, sha256=sha)
                                      .SerializeToString()], fab.mallory) == \
            grpc.StatusCode.INVALID_ARGUMENT  # damaged
        assert _blob_upload(channel, [pb.BlobChunk(data=b"", size=MAX_PAYLOAD + 1, sha256=sha)
                                      .SerializeToString()], fab.mallory) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED  # over the hub's limit, refused up front
        assert _blob_upload(channel, [], fab.mallory) == grpc.StatusCode.INVALID_ARGUMENT
        assert _blob_upload(channel, [GOOD_CHUNK.SerializeToString()], fab.mallory_ep) == \
            grpc.StatusCode.PERMISSION_DENIED  # an endpoint token on the user service
        assert _blob_download(channel, pb.GetBlobRequest(blob_id="b-" + "0" * 32)
                              .SerializeToString(), fab.mallory) == grpc.StatusCode.NOT_FOUND
        assert _blob_download(channel, pb.GetBlobRequest(blob_id="../hub.db")
                              .SerializeToString(), fab.mallory) == grpc.StatusCode.INVALID_ARGUMENT
        # A good upload is the uploader's alone: another user gets PERMISSION_DENIED.
        ref = pb.BlobRef.FromString(channel.stream_unary("/fabric.v1.ClientService/PutBlob")(
            iter([GOOD_CHUNK.SerializeToString()]),
            metadata=(("authorization", f"Bearer {fab.mallory}"),), timeout=5))
        with TokenBook(fab.store) as book:
            eve = book.create("eve")[0]
        assert _blob_download(channel, pb.GetBlobRequest(blob_id=ref.blob_id).SerializeToString(),
                              eve) == grpc.StatusCode.PERMISSION_DENIED
        assert _blob_download(channel, pb.GetBlobRequest(blob_id=ref.blob_id).SerializeToString(),
                              fab.mallory) == grpc.StatusCode.OK
    assert not list(blobs_dir.glob("*.part")), "a refused upload left a partial file"
    assert {p.name for p in blobs_dir.iterdir()} <= _blob_rows(fab.store)
    print(f"\nbad-input suite: {tried['frames']} frames tried in all")
    _still_serving(fab, before)


def _blob_rows(store) -> set[str]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {r[0] for r in db.execute("SELECT blob_id FROM blobs")}


HOOKED_HUB = """
import sys
def hook(event, args):
    if event == "pickle.find_class":
        print("UNPICKLE", args, flush=True)
sys.addaudithook(hook)
print("audit hook installed", flush=True)
from fabric.cli import main
main(sys.argv[1:])
"""


def boom(x):
    raise ValueError(f"no {x}")


def test_the_hub_process_never_unpickles_user_data(tmp_path):
    # The event fires for any unpickling of our payloads (checked here, in this process).
    events = []
    sys.addaudithook(lambda e, a: e == "pickle.find_class" and events.append(a))
    import pickle
    pickle.loads(cloudpickle.dumps(square))
    assert events, "pickle.find_class is audited"

    home = tmp_path / "home"
    store = tmp_path / "hub.db"
    token = provision_tokens(store, home)
    env = {"FABRIC_HOME": str(home)}
    hub = spawn_command("hub", [sys.executable, "-c", HOOKED_HUB, "hub", "--port", "0",
                                "--store", str(store)], env=env)
    children = [hub]
    try:
        address = hub.wait_for(LISTENING, 30).group(1)
        remember(address, token)
        provision_endpoint_token(store, home, "solo")
        children.append(start_endpoint("solo", address, 1, env=env))
        with Client(address) as c:
            c.wait_for_endpoints(1, timeout=30)
            fid, bad = c.register_function(square), c.register_function(boom)
            ids = c.batch_run(fid, [((i,), {}) for i in range(20)])
            assert c.get_batch_result(ids, timeout=30) == [i * i for i in range(20)]
            with pytest.raises(Exception, match="no 3"):
                c.get_result(c.run(3, function_id=bad), timeout=30)
            # an argument that is a whole object graph, and a result that is one too
            obj = {"nested": [ValueError("x"), {1, 2}], "t": time.gmtime(0)}
            assert c.get_result(c.run(obj, function_id=c.register_function(lambda o: o)),
                                timeout=30)["nested"][1] == {1, 2}
            # ... and big ones, which cross the hub as blobs in both directions
            big = {"blob": b"\x01" * (3 << 20), "err": ValueError("y")}
            assert c.get_result(c.run(big, function_id=c.register_function(lambda o: o)),
                                timeout=60)["blob"] == big["blob"]
    finally:
        stop_all(children)
    assert "audit hook installed" in hub.lines
    assert not [line for line in hub.lines if line.startswith("UNPICKLE")], hub.tail()
    assert "pickle" not in " ".join(line for line in hub.lines if "Traceback" in line)
