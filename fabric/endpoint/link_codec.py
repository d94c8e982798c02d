"""The endpoint link's codec: wire messages (`fabric._proto`) to and from the link's
domain types (`fabric.endpoint.link_events`).

The only endpoint module, with the outbox (its file format) and the blob
transfers (their stub), that imports the generated protobuf code; the link
protocol and its driver see dataclasses. Reading a protobuf bytes field
copies it, so each is read once here and the `bytes` object is passed on.
"""

from __future__ import annotations

from typing import Any

from fabric import __version__
from fabric._proto import fabric_pb2 as pb
from fabric._proto import fabric_pb2_grpc as pb_grpc
from fabric.endpoint.link_events import FromHub, Hello, Outgoing, Result, Task
from fabric.models import Capabilities, error_from_proto, error_to_proto


def connect(channel: Any, metadata: Any) -> Any:
    """Open the link's bidirectional stream on `channel`."""
    return pb_grpc.EndpointServiceStub(channel).Connect(metadata=metadata)


def hello_message(h: Hello, name: str, capabilities: Capabilities) -> pb.EndpointMessage:
    hello = pb.Hello(name=name, capabilities=capabilities.to_proto(),
                     held_task_ids=h.held_task_ids, fabric_version=__version__,
                     allow_functions=h.allow_functions, allow_owners=h.allow_owners)
    return pb.EndpointMessage(hello=hello, credits=h.credits, draining=h.draining)


def welcome_of(msg: Any) -> tuple[str, float] | None:
    """(endpoint id, heartbeat period) of a Welcome; None for anything else."""
    if not isinstance(msg, pb.HubMessage) or not msg.HasField("welcome"):
        return None
    return msg.welcome.endpoint_id, msg.welcome.heartbeat_period_s


def from_hub(msg: pb.HubMessage, now: float) -> FromHub:
    tasks = [Task(t.task_id, t.function_id, t.args, t.args_blob, t.walltime_s,
                  t.max_retries if t.HasField("max_retries") else None, t.runtime)
             for t in msg.tasks] if msg.tasks else ()
    functions = [(f.function_id, f.body) for f in msg.functions] if msg.functions else ()
    return FromHub(now, tasks, functions, msg.acks, msg.cancel,
                   msg.heartbeat.sent_at if msg.HasField("heartbeat") else 0.0, msg.sent_at)


def outgoing_message(out: Outgoing, endpoint_id: str, *, load: float = 0.0,
                     free_slots: int = 0, queued: int = 0,
                     sent_at: float = 0.0) -> pb.EndpointMessage:
    """The wire message for `out`; the heartbeat's measurements are the driver's."""
    msg = pb.EndpointMessage(credits=out.credits, draining=out.draining,
                             batch_echo=out.batch_echo)
    if out.results:
        add = msg.results.add
        for r in out.results:
            _fill(add(), r, endpoint_id)  # built in place: extend() would copy each
    if out.returned:
        msg.returned.extend(out.returned)
    if out.heartbeat:
        hb = msg.heartbeat
        hb.load, hb.free_slots, hb.queued = load, free_slots, queued
        hb.sent_at, hb.echo = sent_at, out.heartbeat_echo
    return msg


def _fill(m: pb.TaskResult, r: Result, endpoint_id: str) -> None:
    m.task_id, m.state, m.endpoint_id = r.task_id, pb.SUCCESS if r.ok else pb.FAILED, endpoint_id
    if r.value:
        m.value = r.value
    if r.value_blob:
        m.value_blob = r.value_blob
    if r.runtime_s:
        m.runtime_s = r.runtime_s
    if r.cold:
        m.cold = True
    if r.error is not None:
        m.error.CopyFrom(error_to_proto(r.error))


def result_to_proto(r: Result, endpoint_id: str = "") -> pb.TaskResult:
    m = pb.TaskResult()
    _fill(m, r, endpoint_id)
    return m


def result_from_proto(m: pb.TaskResult) -> Result:
    return Result(m.task_id, m.state == pb.SUCCESS, m.value,
                  error_from_proto(m.error) if m.HasField("error") else None,
                  m.runtime_s, m.cold, m.value_blob)


__all__ = ["connect", "from_hub", "hello_message", "outgoing_message", "result_from_proto",
           "result_to_proto", "welcome_of"]
