"""Big payloads as blobs, against real hub and endpoint processes.

Arguments and results over `config.INLINE_PAYLOAD_MAX` travel as blobs
(PutBlob/GetBlob, files in `<store>.blobs/`). Checked here: they round-trip
through Client, Executor and mixed batches and are deleted once nothing
refers to them; the hub's size limit refuses them precisely and keeps
nothing; only their owners (and the endpoint running the task) may read
them; a malformed upload is refused with its precise code and leaves no
file; an endpoint's result may only name the blob it uploaded for that task;
a retried Submit stays a no-op after its task's arguments were deleted; and
blobs survive an endpoint killed mid-task, a result stuck in an endpoint's
outbox across its restart, and a hub restart.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import re
import signal
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import cloudpickle
import grpc
import pytest

from fabric import errors
from fabric._proto import fabric_pb2 as pb
from fabric.client import Client
from fabric.client.executor import Executor
from fabric.hub.tokens import TokenBook
from fabric.launch import LocalFabric
from fabric.serialize import dumps_args
from fabric.states import TaskState
from fabric.testing import Ledger, wait_until
from fabric.wire import ERROR_KEY

pytestmark = pytest.mark.processes
# Workers cannot import this module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MiB = 1 << 20
LIMIT = 2 * MiB  # --max-payload of the shared fabric below
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- what the workers run
def grow(data: bytes, size: int, nap: float = 0.0) -> tuple[str, bytes]:
    """The digest of the arguments the worker got, and `size` bytes made from them."""
    import hashlib
    import time

    time.sleep(nap)
    return hashlib.sha256(data).hexdigest(), (data * (size // max(len(data), 1) + 1))[:size]


def marked_grow(ledger: str, i: int, data: bytes, size: int, nap: float) -> tuple[str, bytes]:
    """`grow`, recording each execution in a ledger first (fabric.testing.mark)."""
    from fabric.testing import mark

    mark(ledger, i)
    return grow(data, size, nap)


def expected(data: bytes, size: int) -> tuple[str, bytes]:
    return grow(data, size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- observing
def blob_dir(fab: LocalFabric) -> Path:
    return Path(str(fab.store) + ".blobs")


def blob_files(fab: LocalFabric) -> set[str]:
    """Every file in the hub's blob directory, `.part` files included."""
    d = blob_dir(fab)
    return {p.name for p in d.iterdir()} if d.exists() else set()


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def task_row(fab: LocalFabric, task_id: str) -> dict[str, Any] | None:
    rows = query(fab.store, "SELECT state, args_blob, value_blob FROM tasks WHERE task_id=?",
                 task_id)
    if not rows:
        return None
    state, args_blob, value_blob = rows[0]
    return {"state": TaskState(state), "args_blob": args_blob, "value_blob": value_blob}


def blob_rows(fab: LocalFabric) -> dict[str, tuple[str, int, str]]:
    """blob id -> (owner, size, task id) for every blob the store knows."""
    return {b: (o, s, t) for b, o, s, t in query(
        fab.store, "SELECT blob_id, owner, size, task_id FROM blobs")}


# ---------------------------------------------------------------- raw calls
def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _failure(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    return exc.code(), dict(exc.trailing_metadata() or ()).get(ERROR_KEY)


def put_blob(address: str, chunks: list[Any], token: str,
             service: str = "ClientService") -> tuple[grpc.StatusCode, str | None, str]:
    """A raw PutBlob stream of BlobChunks (or raw bytes frames): (code, error kind, blob id)."""
    raw = any(isinstance(c, bytes) for c in chunks)
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_unary(
            f"/fabric.v1.{service}/PutBlob",
            request_serializer=None if raw else pb.BlobChunk.SerializeToString,
            response_deserializer=pb.BlobRef.FromString)
        try:
            ref = call(iter(chunks), metadata=_md(token), timeout=30)
            return OK, None, ref.blob_id
        except grpc.RpcError as exc:
            return (*_failure(exc), "")


def get_blob(address: str, request: pb.GetBlobRequest, token: str,
             service: str = "ClientService") -> tuple[grpc.StatusCode, str | None, bytes]:
    """A raw GetBlob: (code, error kind, the bytes streamed)."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_stream(f"/fabric.v1.{service}/GetBlob",
                               request_serializer=pb.GetBlobRequest.SerializeToString,
                               response_deserializer=pb.BlobChunk.FromString)
        try:
            return OK, None, b"".join(c.data for c in call(request, metadata=_md(token),
                                                            timeout=30))
        except grpc.RpcError as exc:
            return (*_failure(exc), b"")


def submit(address: str, task: pb.TaskSubmission, token: str) -> tuple[grpc.StatusCode, str | None]:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary("/fabric.v1.ClientService/Submit",
                              request_serializer=pb.SubmitRequest.SerializeToString,
                              response_deserializer=pb.SubmitReply.FromString)
        try:
            call(pb.SubmitRequest(tasks=[task]), metadata=_md(token), timeout=30)
            return OK, None
        except grpc.RpcError as exc:
            return _failure(exc)


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        ch.unary_unary("/fabric.v1.ClientService/Health",
                       request_serializer=pb.HealthRequest.SerializeToString,
                       response_deserializer=pb.HealthReply.FromString)(pb.HealthRequest(),
                                                                         timeout=10)
    return True


def upload_chunks(data: bytes, step: int = MiB, **first: Any) -> list[pb.BlobChunk]:
    """`data` as an upload: the first chunk declares size and digest (override with `first`)."""
    head = {"size": len(data), "sha256": sha(data), **first}
    parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    return [pb.BlobChunk(data=parts[0], **head), *(pb.BlobChunk(data=p) for p in parts[1:])]


def counters(client: Client) -> dict[str, int]:
    return dict(client.status().counters)


# ---------------------------------------------------------------- 1. round trips and sweeping
def test_big_arguments_and_results_round_trip_and_their_blobs_are_swept(local_fabric):
    """3 MiB arguments and a 5 MiB result through run/get_result, the Executor and a
    mixed batch. Each big payload is a file in `<store>.blobs/` while it is needed;
    an args blob goes once its task finished, a result blob once the result is purged
    (--retention 4), and `blobs_deleted` counts each of them."""
    fab = local_fabric(["ep"], workers=2, hub_args=("--retention", "4", "--blob-ttl", "60"))
    data = os.urandom(3 * MiB)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(grow)
        deleted_before = counters(c)["blobs_deleted"]

        # run/get_result. The task naps, so its args blob is still needed when run() returns.
        tid = c.run(data, 5 * MiB, 1.0, function_id=fid)
        args_blob = task_row(fab, tid)["args_blob"]  # committed before the Submit's ack
        assert args_blob and args_blob in blob_files(fab)
        assert (blob_dir(fab) / args_blob).stat().st_size > 3 * MiB
        assert c.get_result(tid, timeout=60) == expected(data, 5 * MiB)
        result_blobs = [b for b, (_, size, t) in blob_rows(fab).items() if t == tid]
        assert len(result_blobs) == 1 and blob_rows(fab)[result_blobs[0]][1] > 5 * MiB

        def status_agrees() -> bool:  # read twice, apart: the args blob's sweep is due
            status, rows = c.status(), blob_rows(fab)  # `fabric status` shows what the
            return (status.blobs, status.blob_bytes) == (  # caller keeps at the hub
                len(rows), sum(size for _, size, _ in rows.values()))

        wait_until(status_agrees, 15, "`fabric status` to agree with the store's blobs")
        # The args blob goes once the task is done (at once, not after --blob-ttl).
        wait_until(lambda: args_blob not in blob_files(fab), 15, "args blob deleted")
        assert counters(c)["blobs_deleted"] > deleted_before

        # The Executor takes the same path.
        with Client(fab.address) as ce, Executor(client=ce) as ex:
            small = os.urandom(1000)
            futures = [ex.submit(grow, data, 5 * MiB), ex.submit(grow, small, 100)]
            assert futures[0].result(timeout=60) == expected(data, 5 * MiB)
            assert futures[1].result(timeout=60) == expected(small, 100)

        # A batch mixing inline and blob payloads, both ways.
        inputs = [(os.urandom(100), 200), (os.urandom(2 * MiB), 50),
                  (os.urandom(500), 3 * MiB), (os.urandom(int(1.5 * MiB)), 4 * MiB),
                  (os.urandom(MiB // 2), MiB // 2)]
        ids = c.batch_run(fid, [((d, n), {}) for d, n in inputs])
        assert c.get_batch_result(ids, timeout=60) == [expected(d, n) for d, n in inputs]
        big_args = sum(1 for d, n in inputs if len(dumps_args((d, n), {})) > MiB)
        big_results = sum(1 for _, n in inputs if n > MiB)
        made = 2 + 2 + big_args + big_results  # run, Executor, batch

        # Every blob goes: args ones at once, result ones once their results are purged.
        wait_until(lambda: not blob_files(fab), 30, "blob directory empty")
        assert not blob_rows(fab)
        assert (c.status().blobs, c.status().blob_bytes) == (0, 0)
        assert task_row(fab, tid)["state"] is TaskState.PURGED
        assert counters(c)["blobs_deleted"] - deleted_before == made


# ---------------------------------------------------------------- a fabric with a 2 MiB limit
@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """A hub refusing payloads over 2 MiB, with endpoints `house` and `other` of the
    LocalFabric user; bob is another user."""
    f = LocalFabric(tmp_path_factory.mktemp("payloads"), ["house", "other"], workers=1,
                    hub_args=("--max-payload", str(LIMIT)))
    f.start()
    try:
        with TokenBook(f.store) as book:
            f.alice = book.create("local")[0]  # the user whose token Client uses here
            f.bob = book.create("bob")[0]
            f.ep_tokens = {n: book.create("local", "endpoint", n)[0] for n in f.names}
            f.bob_ep = book.create("bob", "endpoint", "house")[0]
        with Client(f.address) as c:
            c.wait_for_endpoints(2, timeout=30)
        yield f
    finally:
        print(f.output())
        f.stop()


def test_payloads_over_the_limit_are_refused_and_nothing_is_kept(fab):
    with Client(fab.address) as c:
        fid = c.register_function(grow)
        tasks_before = {t.task_id for t in c.tasks(limit=10_000)}
        files_before, rows_before = blob_files(fab), blob_rows(fab)

        # Arguments over the limit: refused before anything is stored, naming both sizes.
        data = os.urandom(3 * MiB)
        n = len(dumps_args((data, 10), {}))
        with pytest.raises(errors.PayloadTooLarge,
                           match=rf"arguments are {n} bytes; the limit is {LIMIT} bytes; "
                                 rf"this payload is {n}"):
            c.run(data, 10, function_id=fid)
        assert {t.task_id for t in c.tasks(limit=10_000)} == tasks_before
        # Nothing new (what an earlier test left may be swept meanwhile).
        assert not blob_files(fab) - files_before and not set(blob_rows(fab)) - set(rows_before)

        # The hub is up; payloads just under the limit still go as blobs, both ways.
        assert healthy(fab.address)
        assert c.get_result(c.run(b"ok", 10, function_id=fid), timeout=30) == expected(b"ok", 10)
        under = os.urandom(LIMIT - 4096)
        known = set(blob_rows(fab))
        tid = c.run(under, LIMIT - 4096, function_id=fid)
        assert c.get_result(tid, timeout=30) == expected(under, LIMIT - 4096)
        # The arguments' blob (task id "": a client's upload) goes as soon as the task
        # is done: this hub purges every 300 s, so only the prompt path fits in 10 s.
        wait_until(lambda: not [b for b, (_, _, t) in blob_rows(fab).items()
                                if b not in known and not t], 10, "the args blob deleted")
        assert [b for b, (_, _, t) in blob_rows(fab).items() if t == tid]  # the result's stays

        # A result over the limit: the endpoint's upload is refused and the task fails
        # with an error naming the limit (no hang, no half-stored blob).
        tid = c.run(b"seed", 3 * MiB, function_id=fid)
        with pytest.raises(errors.TaskFailed) as failed:
            c.get_result(tid, timeout=30)
        assert failed.value.type_name == "PayloadTooLarge"
        assert re.search(rf"could not be stored at the hub: the limit is {LIMIT} bytes",
                         failed.value.message), failed.value.message
        # (The result's commit may trail its delivery by a moment.)
        wait_until(lambda: task_row(fab, tid)["state"] is TaskState.FAILED, 10, "failure stored")
        assert task_row(fab, tid)["value_blob"] is None
        assert not [f for f in blob_files(fab) if f.endswith(".part")]
        assert not [b for b, (_, _, t) in blob_rows(fab).items() if t == tid]
        # ... and the endpoint carries on.
        assert c.get_result(c.run(b"ok", 20, function_id=fid), timeout=30) == expected(b"ok", 20)


def test_blobs_belong_to_their_owner_and_to_the_endpoint_running_the_task(fab):
    with Client(fab.address) as a, Client(fab.address, token=fab.bob) as b:
        fid = a.register_function(grow)
        # A result blob of alice's.
        tid = a.run(b"seed", int(1.5 * MiB), function_id=fid, endpoint_id="house")
        assert a.get_result(tid, timeout=30) == expected(b"seed", int(1.5 * MiB))
        value_blob = wait_until(lambda: task_row(fab, tid)["value_blob"], 10, "result committed")
        want = pb.GetBlobRequest
        code, _, got = get_blob(fab.address, want(blob_id=value_blob), fab.alice)
        assert code is OK and len(got) == blob_rows(fab)[value_blob][1]
        assert get_blob(fab.address, want(blob_id=value_blob), fab.bob)[:2] == \
            (DENIED, "PERMISSION_DENIED")
        assert get_blob(fab.address, want(blob_id="b-" + "0" * 32), fab.alice)[:2] == \
            (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")
        for bad in ("", "../hub.db", "b-" + "X" * 32, value_blob + "/..", value_blob.upper()):
            assert get_blob(fab.address, want(blob_id=bad), fab.alice)[:2] == \
                (INVALID, "INVALID_REQUEST"), bad
        assert get_blob(fab.address, want(blob_id=value_blob), fab.ep_tokens["house"])[0] is DENIED

        # Arguments alice uploaded: bob may neither read them nor run a task on them.
        mine = dumps_args((os.urandom(int(1.2 * MiB)), 10), {})
        code, _, args_blob = put_blob(fab.address, upload_chunks(mine), fab.alice)
        assert code is OK and args_blob in blob_files(fab)
        assert get_blob(fab.address, want(blob_id=args_blob), fab.bob)[0] is DENIED
        bob_fid = b.register_function(grow)
        bobs_task = "t-" + uuid.uuid4().hex
        assert submit(fab.address, pb.TaskSubmission(task_id=bobs_task, function_id=bob_fid,
                                                     args_blob=args_blob), fab.bob) == \
            (DENIED, "PERMISSION_DENIED")
        assert task_row(fab, bobs_task) is None and b.tasks() == []
        # Alice may (the same call with her token and function works).
        alices_task = "t-" + uuid.uuid4().hex
        assert submit(fab.address, pb.TaskSubmission(task_id=alices_task, function_id=fid,
                                                     args_blob=args_blob), fab.alice) == (OK, None)
        args, _ = pickle.loads(mine)
        assert a.get_result(alices_task, timeout=30) == expected(args[0], 10)

        # EndpointService.GetBlob: only the endpoint that holds the task, for its arguments.
        eids = {e.name: e.endpoint_id for e in a.endpoints()}
        data = os.urandom(int(1.5 * MiB))
        running = a.run(data, 10, 3.0, function_id=fid, endpoint_id="house")
        row = task_row(fab, running)
        # (That a task was sent lives in the hub's memory, not in its store.)
        wait_until(lambda: running in {t.task_id for t in a.tasks(state=TaskState.DISPATCHED,
                                                                 endpoint="house")}, 10,
                   "task dispatched to house")
        ask = lambda token, eid, blob=row["args_blob"], task=running: get_blob(  # noqa: E731
            fab.address, want(blob_id=blob, task_id=task, endpoint_id=eid), token,
            "EndpointService")
        code, _, got = ask(fab.ep_tokens["house"], eids["house"])
        assert code is OK and pickle.loads(got)[0][0] == data  # the holder may
        assert ask(fab.ep_tokens["other"], eids["other"])[:2] == (DENIED, "PERMISSION_DENIED")
        assert ask(fab.ep_tokens["other"], eids["house"])[0] is DENIED  # another's link
        assert ask(fab.bob_ep, eids["house"])[0] is DENIED  # bob's "house" is not alice's
        assert ask(fab.ep_tokens["house"], eids["house"], blob=value_blob)[0] is DENIED
        assert ask(fab.ep_tokens["house"], "ep-" + uuid.uuid4().hex)[:2] == \
            (grpc.StatusCode.UNAVAILABLE, "ENDPOINT_OFFLINE")
        assert ask(fab.alice, eids["house"])[0] is DENIED  # a user token, on EndpointService
        # Nor may an endpoint upload a result blob for a task it does not hold.
        files = blob_files(fab)
        assert put_blob(fab.address, upload_chunks(b"r" * (MiB + 1), task_id=running,
                                                   endpoint_id=eids["other"]),
                        fab.ep_tokens["other"], "EndpointService")[0] is DENIED
        assert blob_files(fab) == files
        assert a.get_result(running, timeout=30) == expected(data, 10)
        # Finished: not even its endpoint may read its arguments now.
        assert ask(fab.ep_tokens["house"], eids["house"])[0] is DENIED


def test_malformed_uploads_get_precise_errors_and_leave_no_file(fab):
    data = os.urandom(MiB + MiB // 2)
    good = sha(data)
    cases: dict[str, tuple[list[Any], grpc.StatusCode, str]] = {
        "wrong sha256": (upload_chunks(data, sha256=sha(b"other")), INVALID, "INVALID_REQUEST"),
        "fewer bytes than declared": (upload_chunks(data, size=len(data) + 1), INVALID,
                                      "INVALID_REQUEST"),
        "more bytes than declared": (upload_chunks(data, size=len(data) - 1), INVALID,
                                     "INVALID_REQUEST"),
        "sha256 too short": (upload_chunks(data, sha256=good[:40]), INVALID, "INVALID_REQUEST"),
        "sha256 upper case": (upload_chunks(data, sha256=good.upper()), INVALID,
                              "INVALID_REQUEST"),
        "sha256 not hex": (upload_chunks(data, sha256="g" * 64), INVALID, "INVALID_REQUEST"),
        "no chunks at all": ([], INVALID, "INVALID_REQUEST"),
        "declared size over the limit": (upload_chunks(data, size=LIMIT + 1),
                                         grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"),
        "task_id on a user upload": (upload_chunks(data, task_id="t-1"), INVALID,
                                     "INVALID_REQUEST"),
        "endpoint_id on a user upload": (upload_chunks(data, endpoint_id="ep-1"), INVALID,
                                         "INVALID_REQUEST"),
        "a frame that is not a BlobChunk": ([b"\x0a\xff\xff\xff\xff\x0f"], INVALID,
                                            "INVALID_REQUEST"),
        "negative size": (upload_chunks(b"", size=-5), INVALID, "INVALID_REQUEST"),
        "check_only, over the limit": ([pb.BlobChunk(size=LIMIT + 1, sha256=good,
                                                     check_only=True)],
                                       grpc.StatusCode.RESOURCE_EXHAUSTED, "PAYLOAD_TOO_LARGE"),
        "check_only, acceptable (stores nothing)": (
            [pb.BlobChunk(size=len(data), sha256=good, check_only=True)], OK, None),
    }
    files_before, rows_before = blob_files(fab), blob_rows(fab)
    got = {name: put_blob(fab.address, chunks, fab.alice)[:2]
           for name, (chunks, _, _) in cases.items()}
    assert got == {name: (code, kind) for name, (_, code, kind) in cases.items()}
    # An upload the client abandons half-way leaves nothing either.
    release = threading.Event()

    def held_open() -> Iterator[pb.BlobChunk]:
        yield upload_chunks(data)[0]
        release.wait(30)  # (until the call is cancelled)

    with grpc.insecure_channel(fab.address) as ch:
        call = ch.stream_unary("/fabric.v1.ClientService/PutBlob",
                               request_serializer=pb.BlobChunk.SerializeToString,
                               response_deserializer=pb.BlobRef.FromString).future(
            held_open(), metadata=_md(fab.alice), timeout=30)
        try:
            wait_until(lambda: [f for f in blob_files(fab) if f.endswith(".part")], 10,
                       "the upload's .part file")
        finally:
            call.cancel()
            release.set()
    # Nothing new is left. (Files may also go meanwhile: an earlier test's args blob
    # is deleted about 1 s after its task finished.)
    wait_until(lambda: not blob_files(fab) - files_before, 10,
               f"no file left (have {sorted(blob_files(fab) - files_before)})")
    assert not set(blob_rows(fab)) - set(rows_before)
    assert healthy(fab.address)
    # A well-formed upload right after still works, and its bytes come back whole.
    code, _, blob_id = put_blob(fab.address, upload_chunks(data), fab.alice)
    assert code is OK and get_blob(fab.address, pb.GetBlobRequest(blob_id=blob_id),
                                   fab.alice)[2] == data


class RawEndpoint:
    """An endpoint speaking EndpointService by hand (for what a real one never sends):
    `with RawEndpoint(address, token, name) as ep: ep.task()`, `ep.send(message)`."""

    def __init__(self, address: str, token: str, name: str) -> None:
        self.address, self.token, self.name = address, token, name
        self._out: queue.Queue[pb.EndpointMessage | None] = queue.Queue()

    def __enter__(self) -> "RawEndpoint":
        self.channel = grpc.insecure_channel(self.address)
        self.call = self.channel.stream_stream(
            "/fabric.v1.EndpointService/Connect",
            request_serializer=pb.EndpointMessage.SerializeToString,
            response_deserializer=pb.HubMessage.FromString)(
                iter(self._out.get, None), metadata=_md(self.token), timeout=60)
        self.send(pb.EndpointMessage(hello=pb.Hello(name=self.name)))
        self.endpoint_id = next(self.call).welcome.endpoint_id
        return self

    def send(self, msg: pb.EndpointMessage) -> None:
        self._out.put(msg)

    def task(self) -> pb.TaskSubmission:
        """Grant one credit; the next task the hub sends."""
        self.send(pb.EndpointMessage(credits=1))
        for msg in self.call:  # (the call's own timeout bounds this)
            if msg.tasks:
                (t,) = msg.tasks
                return t
        raise AssertionError("the hub closed the stream")

    def __exit__(self, *exc: Any) -> None:
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


def test_a_result_must_name_a_blob_uploaded_for_that_task(fab):
    """An endpoint's result may only name the value blob it uploaded for that very task:
    naming another blob (another task's, or any blob of the submitter's) would hand the
    submitter bytes that are not the task's result, so the task fails with ResultLost."""
    with TokenBook(fab.store) as book:
        token = book.create("local", "endpoint", "rogue")[0]
    with Client(fab.address) as c, RawEndpoint(fab.address, token, "rogue") as ep:
        fid = c.register_function(grow)
        _, _, someone = put_blob(fab.address, upload_chunks(os.urandom(MiB + 1)), fab.alice)
        first = c.run(b"1", 1, function_id=fid, endpoint_id="rogue")
        second = c.run(b"2", 2, function_id=fid, endpoint_id="rogue")
        third = c.run(b"3", 3, function_id=fid, endpoint_id="rogue")
        t1, t2 = ep.task(), ep.task()
        assert {t1.task_id, t2.task_id} == {first, second}
        value = pickle.dumps(("ours", os.urandom(MiB + 1)))
        code, _, uploaded = put_blob(fab.address, upload_chunks(
            value, task_id=t1.task_id, endpoint_id=ep.endpoint_id), token, "EndpointService")
        assert code is OK
        ep.send(pb.EndpointMessage(results=[  # t1's blob named by t2, and a stranger's by t1
            pb.TaskResult(task_id=t2.task_id, state=pb.SUCCESS, value_blob=uploaded),
            pb.TaskResult(task_id=t1.task_id, state=pb.SUCCESS, value_blob=someone)]))
        for tid in (first, second):
            with pytest.raises(errors.TaskFailed) as lost:
                c.get_result(tid, timeout=30)
            assert lost.value.type_name == "ResultLost", lost.value
        # The blob uploaded for a task, named by its result: delivered as it is.
        t3 = ep.task()
        assert t3.task_id == third
        code, _, uploaded = put_blob(fab.address, upload_chunks(
            value, task_id=third, endpoint_id=ep.endpoint_id), token, "EndpointService")
        ep.send(pb.EndpointMessage(results=[
            pb.TaskResult(task_id=third, state=pb.SUCCESS, value_blob=uploaded)]))
        assert c.get_result(third, timeout=30) == pickle.loads(value)


def test_the_hub_keeps_the_first_result_and_drops_a_second_different_one(fab):
    """An endpoint that sends a second, different result for a task it already
    finished (a re-execution after a reconnect looks like this): the hub keeps the
    first, counts and acknowledges the second, and never pushes it to the client
    (watched before the client's own dedup)."""
    with TokenBook(fab.store) as book:
        token = book.create("local", "endpoint", "twice")[0]
    with Client(fab.address) as c, RawEndpoint(fab.address, token, "twice") as ep:
        pushed: list[pb.TaskResult] = []
        c.aio.push_observer = lambda r: pushed.append(r) if r.state else None
        tid = c.run(b"x", 1, function_id=c.register_function(grow), endpoint_id="twice")
        assert ep.task().task_id == tid
        ep.send(pb.EndpointMessage(results=[pb.TaskResult(
            task_id=tid, state=pb.SUCCESS, value=pickle.dumps("first"), runtime_s=1.0)]))
        assert c.get_result(tid, timeout=30) == "first"
        dropped = c.status().counters["duplicates_dropped"]
        ep.send(pb.EndpointMessage(results=[pb.TaskResult(
            task_id=tid, state=pb.SUCCESS, value=pickle.dumps("second"), runtime_s=2.0)]))
        wait_until(lambda: c.status().counters["duplicates_dropped"] > dropped, 30,
                   "the hub to count the second result as a duplicate")
        acks = 0
        for msg in ep.call:  # ... and acknowledge it too, so the endpoint may forget it
            acks += list(msg.acks).count(tid)
            if acks == 2:
                break
        with Client(fab.address) as fresh:  # no cache: the hub's stored result
            assert fresh.get_result(tid, timeout=30) == "first"
        (row,) = [t for t in c.tasks(limit=50) if t.task_id == tid]
        assert row.state is TaskState.SUCCESS
        assert {pickle.loads(r.value) for r in pushed if r.task_id == tid} == {"first"}


def test_a_retried_submit_is_a_no_op_after_its_arguments_were_deleted(local_fabric):
    """A client whose Submit ack was lost (the hub restarted after committing) sends
    the same submission again, naming the same args blob. If the task has finished
    meanwhile, the blob is gone; the retry must still be the no-op it is for inline
    arguments, not a BLOB_NOT_FOUND failure of a task that succeeded."""
    fab = local_fabric(["a"], workers=1, hub_args=("--blob-ttl", "2"))  # sweeps every 0.5 s
    with TokenBook(fab.store) as book:
        token = book.create("local")[0]
    data = os.urandom(MiB + 1)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(grow)
        _, _, blob_id = put_blob(fab.address, upload_chunks(dumps_args((data, 10), {})), token)
        sub = pb.TaskSubmission(task_id="t-" + uuid.uuid4().hex, function_id=fid,
                                args_blob=blob_id)
        assert submit(fab.address, sub, token) == (OK, None)
        assert c.get_result(sub.task_id, timeout=30) == expected(data, 10)
        wait_until(lambda: blob_id not in blob_files(fab), 15, "args blob deleted")
        inline = pb.TaskSubmission(task_id=sub.task_id, function_id=fid,
                                   args=dumps_args((data[:10], 10), {}))
        assert submit(fab.address, inline, token) == (OK, None)  # the same retry, inline
        assert submit(fab.address, sub, token) == (OK, None)
        assert c.get_result(sub.task_id, timeout=30) == expected(data, 10)


# ---------------------------------------------------------------- 5. faults
def test_endpoint_killed_while_running_a_task_with_big_arguments(local_fabric, tmp_path):
    """SIGKILL the endpoint mid-task: the task is requeued with its args blob intact and
    completes on the endpoint started next, which fetches the same bytes."""
    fab = local_fabric(["a"], workers=1, hub_args=("--heartbeat", "0.5"))
    ledger = Ledger(tmp_path / "runs.log")
    data = os.urandom(3 * MiB)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(marked_grow)
        tid = c.run(str(ledger), 1, data, 2 * MiB, 2.0, function_id=fid)
        wait_until(lambda: ledger.count() >= 1, 30, "the task started on a")
        fab.kill_endpoint("a")
        fab.start_endpoint("b")
        assert c.get_result(tid, timeout=60) == expected(data, 2 * MiB)
        assert len(ledger.by_input()[1]) == 2  # once on a (killed), once on b
        (info,) = [t for t in c.tasks(limit=100) if t.task_id == tid]
        assert info.endpoint_name == "b" and info.state is TaskState.SUCCESS


def test_big_result_survives_an_endpoint_restart_without_running_again(local_fabric, tmp_path):
    """The hub is frozen while the task finishes, so its 5 MiB result cannot be uploaded;
    once it is in the endpoint's outbox the endpoint is SIGKILLed. Restarted under the
    same name, the endpoint uploads the saved value: the client gets it, and the task
    ran only once."""
    fab = local_fabric(["a"], workers=1)
    ledger = Ledger(tmp_path / "runs.log")
    seed = os.urandom(1000)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(marked_grow)
        tid = c.run(str(ledger), 7, seed, 5 * MiB, 1.0, function_id=fid)
        wait_until(lambda: ledger.count() >= 1, 30, "the task started")
        state = fab.home / "endpoints" / "a"
        value_file = state / "outbox.db.values" / tid

        def in_outbox() -> bool:  # the value's file, then its row: both survive a kill
            return value_file.exists() and bool(
                query(state / "outbox.db", "SELECT 1 FROM results WHERE task_id=?", tid))

        fab.hub.signal(signal.SIGSTOP)
        try:
            wait_until(in_outbox, 30, "the result saved in the endpoint's outbox")
            assert value_file.stat().st_size > 5 * MiB
            fab.kill_endpoint("a")
        finally:
            fab.hub.signal(signal.SIGCONT)
        fab.start_endpoint("a").wait_for("1 results from before the restart will be replayed",
                                         30)
        assert c.get_result(tid, timeout=60) == expected(seed, 5 * MiB)
        assert ledger.by_input() == {7: [ledger.runs()[0][1]]}, "the task ran again"
        wait_until(lambda: not value_file.exists(), 15, "outbox value dropped once acked")


def test_uploaded_blob_survives_a_hub_restart(local_fabric):
    """Blobs are durable once their id is handed out: upload, SIGKILL the hub, restart
    it, then submit a task naming the blob; it runs on those bytes."""
    fab = local_fabric(["a"], workers=1)
    with TokenBook(fab.store) as book:
        token = book.create("local")[0]
    data = os.urandom(2 * MiB)
    payload = dumps_args((data, 100), {})
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(grow)
        code, _, blob_id = put_blob(fab.address, upload_chunks(payload), token)
        assert code is OK and blob_id in blob_files(fab)
        fab.kill_hub()
        fab.restart_hub()
        assert blob_id in blob_files(fab)  # not swept as a leftover of the crash
        tid = "t-" + uuid.uuid4().hex
        assert submit(fab.address, pb.TaskSubmission(task_id=tid, function_id=fid,
                                                     args_blob=blob_id), token) == (OK, None)
        assert c.get_result(tid, timeout=60) == expected(data, 100)


def test_a_queued_task_with_big_arguments_survives_a_hub_restart(local_fabric):
    """Held for its (offline) endpoint when the hub is SIGKILLed: the restarted hub
    reloads it with its blob and its size, and sends it when the endpoint returns."""
    fab = local_fabric(["a"], workers=1)
    data = os.urandom(3 * MiB)
    with Client(fab.address) as c:
        c.wait_for_endpoints(1, timeout=30)
        fid = c.register_function(grow)
        fab.kill_endpoint("a")
        wait_until(lambda: not c.endpoints()[0].online, 30, "endpoint a offline")
        tid = c.run(data, 7, function_id=fid, endpoint_id="a")  # pinned: held for a
        blob_id = task_row(fab, tid)["args_blob"]
        assert blob_id and blob_id in blob_files(fab)
    fab.kill_hub()
    fab.restart_hub()
    fab.start_endpoint("a")
    with Client(fab.address) as c:
        assert c.get_result(tid, timeout=60) == expected(data, 7)
    wait_until(lambda: blob_id not in blob_files(fab), 10, "its args blob deleted")


def test_many_inline_results_past_one_message_come_back_whole(fab):
    """80 results of 900 KB each ride inline (under 1 MiB), 72 MB together: more than
    one gRPC message may carry (64 MiB). The result stream and GetResults both split
    them, and the client gets every one."""
    with Client(fab.address) as c:
        fid = c.register_function(grow)
        seeds = [os.urandom(64) for _ in range(80)]
        ids = c.batch_run(fid, [((s, 900_000), {}) for s in seeds], endpoint_id="house")
        want = [expected(s, 900_000) for s in seeds]
        assert c.get_batch_result(ids, timeout=60) == want  # pushed on the result stream
        assert not [t for t in ids if task_row(fab, t)["value_blob"]]  # all inline
        assert c.get_batch_result(ids) == want  # asked for: GetResults, in several replies
        # Waited for again: all 80 are pushed at once on the stream, in several batches.
        assert c.get_batch_result(ids, timeout=60) == want
