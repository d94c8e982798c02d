"""Tier 1: pure logic, no sockets: task states, error mapping, codecs."""

from __future__ import annotations

import grpc
import pytest

from fabric import errors
from fabric.models import Capabilities, EndpointInfo, TaskInfo
from fabric.serialize import ErrorInfo, dumps_args, function_id, loads_args
from fabric.states import FINAL, Action, Event, IllegalTransition, TaskState, can, next_state, step
from fabric.wire import ERROR_KEY, from_rpc_error, to_status

# The scheduler's tests live in tests/test_scheduler.py.


# ---------------------------------------------------------------- link measurements

def test_a_link_times_one_large_batch_at_a_time_and_learns_its_bandwidth():
    from fabric.hub.live import PROBE_MIN_BYTES, EndpointRecord, Link

    link = Link(EndpointRecord("ep-1", "a", "local", None))
    link.heard_echo(echo=100.0, now=100.002)  # 2 ms round trip: 1 ms each way
    assert link.latency_s == pytest.approx(0.001)
    assert link.probe_stamp(PROBE_MIN_BYTES - 1, now=200.0) == 0.0  # too small to time
    assert link.probe_stamp(10_000_000, now=200.0) == 200.0
    assert link.probe_stamp(10_000_000, now=200.001) == 0.0  # one probe in flight at a time
    link.heard_batch_echo(echo=123.0, now=200.1)  # not our probe: ignored
    assert link.bandwidth_Bps is None
    link.heard_batch_echo(echo=200.0, now=200.012)  # 12 ms less 2 ms of latency
    assert link.bandwidth_Bps == pytest.approx(10_000_000 / 0.010)
    assert link.probe_stamp(10_000_000, now=200.02) == 200.02  # free for the next
    link.heard_batch_echo(echo=200.02, now=200.02)  # no measurable time: clamped, finite
    assert 1e9 < link.bandwidth_Bps < float("inf")


# ---------------------------------------------------------------- task states

@pytest.mark.parametrize("state", list(TaskState))
@pytest.mark.parametrize("event", list(Event))
def test_every_transition_is_either_legal_or_raises(state, event):
    if can(state, event):
        assert isinstance(next_state(state, event), TaskState)
    else:
        with pytest.raises(IllegalTransition, match=state.name):
            next_state(state, event)


def test_final_states_only_lead_to_purged():
    for state in FINAL:
        assert state.final
        ways_out = {e for e in Event if can(state, e)}
        assert ways_out == (set() if state is TaskState.PURGED else {Event.PURGE})


# The whole table, written out independently of the implementation: every
# (state, event) pair not listed here must be illegal.
EXPECTED = {
    (TaskState.QUEUED, Event.DISPATCH): TaskState.DISPATCHED,
    (TaskState.QUEUED, Event.CANCEL): TaskState.CANCELLED,
    (TaskState.QUEUED, Event.FAIL): TaskState.FAILED,
    (TaskState.QUEUED, Event.SUCCEED): TaskState.SUCCESS,
    (TaskState.DISPATCHED, Event.REQUEUE): TaskState.QUEUED,
    (TaskState.DISPATCHED, Event.SUCCEED): TaskState.SUCCESS,
    (TaskState.DISPATCHED, Event.FAIL): TaskState.FAILED,
    (TaskState.DISPATCHED, Event.CANCEL): TaskState.CANCELLED,
    (TaskState.SUCCESS, Event.PURGE): TaskState.PURGED,
    (TaskState.FAILED, Event.PURGE): TaskState.PURGED,
    (TaskState.CANCELLED, Event.PURGE): TaskState.PURGED,
}


@pytest.mark.parametrize("state", list(TaskState))
@pytest.mark.parametrize("event", list(Event))
def test_transition_table_is_exactly_the_lifecycle(state, event):
    if (state, event) in EXPECTED:
        assert step(state, event).state is EXPECTED[(state, event)]
    else:
        assert not can(state, event)
        with pytest.raises(IllegalTransition):
            step(state, event)


def test_actions_of_the_transitions_that_matter():
    # Reaching a final state always stores, tells waiting clients, and drops the arguments.
    for (state, event), target in EXPECTED.items():
        actions = step(state, event).actions
        assert Action.STORE in actions
        if target in (TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED):
            assert Action.PUBLISH in actions and Action.DROP_PAYLOAD in actions
    # Only results are acknowledged to the endpoint; only a cancel of a dispatched
    # task reaches the endpoint; only a requeue routes again.
    assert Action.ACK in step(TaskState.DISPATCHED, Event.SUCCEED).actions
    assert Action.ACK not in step(TaskState.DISPATCHED, Event.CANCEL).actions
    assert Action.STOP_REMOTE in step(TaskState.DISPATCHED, Event.CANCEL).actions
    assert Action.STOP_REMOTE not in step(TaskState.QUEUED, Event.CANCEL).actions
    assert {e for (s, e) in EXPECTED if Action.ROUTE in step(s, e).actions} == {Event.REQUEUE}
    assert Action.PUBLISH not in step(TaskState.SUCCESS, Event.PURGE).actions


def test_a_second_result_is_illegal():
    done = next_state(TaskState.DISPATCHED, Event.SUCCEED)
    for event in (Event.SUCCEED, Event.FAIL, Event.CANCEL, Event.REQUEUE, Event.DISPATCH):
        with pytest.raises(IllegalTransition, match="SUCCESS"):
            step(done, event)


def test_lifecycle_paths():
    s = next_state(TaskState.QUEUED, Event.DISPATCH)
    assert s is TaskState.DISPATCHED
    assert next_state(s, Event.REQUEUE) is TaskState.QUEUED
    assert next_state(s, Event.SUCCEED) is TaskState.SUCCESS
    assert next_state(TaskState.QUEUED, Event.CANCEL) is TaskState.CANCELLED
    assert next_state(TaskState.CANCELLED, Event.PURGE) is TaskState.PURGED


# ---------------------------------------------------------------- errors on the wire

class FakeRpcError(grpc.RpcError):
    """Stands in for the outside world's gRPC error object (not one of our parts)."""

    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


@pytest.mark.parametrize("cls", [errors.FunctionNotFound, errors.EndpointNotFound,
                                 errors.TaskNotFound, errors.PayloadTooLarge,
                                 errors.VersionMismatch, errors.EndpointOffline,
                                 errors.NoEligibleEndpoint, errors.InvalidRequest])
def test_every_hub_error_round_trips_to_the_same_class(cls):
    code, details, trailers = to_status(cls("boom"))
    back = from_rpc_error(FakeRpcError(code, details, trailers))
    assert type(back) is cls and "boom" in str(back)


def test_transport_errors_become_fabric_errors():
    exc = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed"), "h:1")
    assert isinstance(exc, errors.HubUnavailable) and "h:1" in str(exc)
    assert ERROR_KEY == "fabric-error"


def test_task_timeout_is_a_timeout_error():
    assert issubclass(errors.TaskTimeout, TimeoutError)
    assert issubclass(errors.WorkerDied, errors.TaskFailed)


# ---------------------------------------------------------------- codecs

def test_error_info_keeps_the_original_exception():
    try:
        {}["missing"]
    except KeyError as exc:
        info = ErrorInfo.from_exception(exc)
    err = info.to_exception("t1")
    assert isinstance(err, errors.TaskFailed) and isinstance(err.cause, KeyError)
    assert "KeyError" in err.remote_traceback and "t1" in str(err)


def test_unpicklable_exception_falls_back_to_text():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("no")

    info = ErrorInfo.from_exception(Local("odd"))
    assert info.exception == b""
    err = info.to_exception("t2")
    assert err.cause is None and err.type_name.endswith("Local") and err.message == "odd"


def test_args_round_trip_and_function_ids_are_content_addresses():
    assert loads_args(dumps_args((1, "a"), {"k": [2]})) == ((1, "a"), {"k": [2]})
    assert function_id("u", b"x") == function_id("u", b"x") != function_id("v", b"x")


def test_domain_types_round_trip_through_protobuf():
    caps = Capabilities.detect(3, ("gpu0",))
    assert Capabilities.from_proto(caps.to_proto()) == caps
    assert Capabilities.from_dict(caps.to_dict()) == caps
    info = EndpointInfo("e", "n", True, caps, 1, 2, 3, 0.5, 10.0, 7)
    assert EndpointInfo.from_proto(info.to_proto()) == info
    t = TaskInfo("t", "f", "mod.f", TaskState.SUCCESS, "e", "n", "why", 1.0, 2.0, 0.1, "")
    assert TaskInfo.from_proto(t.to_proto()) == t


# ---------------------------------------------------------------- big payloads

def test_the_outbox_keeps_big_values_in_files_and_replays_them(tmp_path):
    from fabric import config
    from fabric._proto import fabric_pb2 as pb
    from fabric.endpoint.outbox import Outbox

    big = b"v" * (config.INLINE_PAYLOAD_MAX + 1)
    box = Outbox(tmp_path / "outbox.db")
    box.save_value("big", big)  # written ahead (the agent does it on a thread)...
    box.put([pb.TaskResult(task_id="small", state=pb.SUCCESS, value=b"s"),
             pb.TaskResult(task_id="big", state=pb.SUCCESS)])  # ... then the row, without it
    box.save_value("later", big)
    box.put([pb.TaskResult(task_id="later", state=pb.SUCCESS)])
    box.save_value("orphan", b"o" * 10)  # a crash before its row committed
    assert [p.name for p in sorted((tmp_path / "outbox.db.values").iterdir())] == \
        ["big", "later", "orphan"]
    with box._db:  # the big value is not in the table
        sizes = dict(box._db.execute("SELECT task_id, length(result) FROM results"))
    assert sizes["big"] < 100
    box.close()

    box = Outbox(tmp_path / "outbox.db")  # after a restart
    assert {r.task_id: r.value for r in box.pending()} == \
        {"small": b"s", "big": big, "later": big}
    assert not (tmp_path / "outbox.db.values" / "orphan").exists()
    box.ack(["big", "small"])
    assert [r.task_id for r in box.pending()] == ["later"]
    assert [p.name for p in (tmp_path / "outbox.db.values").iterdir()] == ["later"]
    box.close()


def test_the_hub_keeps_an_upload_only_when_it_is_whole_and_matches(tmp_path):
    import asyncio
    import hashlib

    from fabric._proto import fabric_pb2 as pb
    from fabric.hub.blobs import Blobs
    from fabric.hub.store import TaskStore

    data = bytes(range(256)) * 5000
    sha = hashlib.sha256(data).hexdigest()

    def stream(chunks):
        it = iter(chunks)

        async def read():
            return next(it, None)

        return read

    async def main():
        store = TaskStore(tmp_path / "hub.db")
        await store.open()
        blobs = Blobs(store, tmp_path / "blobs", max_size=len(data))
        await blobs.open()
        try:
            half = len(data) // 2
            first = pb.BlobChunk(data=data[:half], size=len(data), sha256=sha)
            ref = await blobs.receive(first, stream([pb.BlobChunk(data=data[half:])]), "ann")
            row = await blobs.meta(ref.blob_id)
            assert (row.owner, row.size, row.sha256, row.used) == ("ann", len(data), sha, False)
            got = [c async for c in blobs.stream(row, 1000)]
            assert got[0].size == len(data) and got[0].sha256 == sha
            assert b"".join(c.data for c in got) == data[1000:]
            refusals = [
                (pb.BlobChunk(data=data[:half], size=len(data), sha256=sha), [],
                 errors.InvalidRequest, "ended after"),
                (pb.BlobChunk(data=data[:half], size=half, sha256=sha), [pb.BlobChunk(data=b"x")],
                 errors.InvalidRequest, "more bytes"),
                (pb.BlobChunk(data=data[::-1], size=len(data), sha256=sha), [],
                 errors.InvalidRequest, "damaged"),
                (pb.BlobChunk(size=len(data) + 1, sha256=sha), [], errors.PayloadTooLarge, "limit"),
                (pb.BlobChunk(size=1, sha256="ab"), [], errors.InvalidRequest, "SHA-256"),
            ]
            for first, rest, exc, words in refusals:
                with pytest.raises(exc, match=words):
                    await blobs.receive(first, stream(rest), "ann")
            assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [ref.blob_id]
            check = await blobs.receive(pb.BlobChunk(size=5, sha256=sha, check_only=True),
                                        stream([]), "ann")
            assert check.blob_id == "" and check.size == 5
            with pytest.raises(errors.InvalidRequest, match="malformed blob id"):
                await blobs.meta("../hub.db")
            with pytest.raises(errors.BlobNotFound):
                await blobs.meta("b-" + "0" * 32)
            # Unused: kept for the grace period, then swept with its file.
            assert await blobs.sweep(unused_ttl_s=60) == 0
            assert await blobs.sweep(unused_ttl_s=0) == 1
            assert not list((tmp_path / "blobs").iterdir())
        finally:
            await store.close()

    asyncio.run(main())
