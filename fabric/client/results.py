"""Turning a TaskResult from the hub into a value or the right exception."""

from __future__ import annotations

from typing import Any

from fabric import errors
from fabric._proto import fabric_pb2 as pb
from fabric.models import error_from_proto
from fabric.serialize import loads

FINAL = frozenset({pb.SUCCESS, pb.FAILED, pb.CANCELLED, pb.PURGED})


def is_final(r: pb.TaskResult) -> bool:
    """Final: has a value or an error the client can act on (unknown ids included)."""
    return r.state in FINAL or (r.state == pb.TASK_STATE_UNSPECIFIED and r.HasField("error"))


def outcome(r: pb.TaskResult) -> Any:
    """The task's return value, or raise what it ended with."""
    if r.state == pb.SUCCESS:
        return loads(r.value)
    if r.state == pb.TASK_STATE_UNSPECIFIED and r.error.type_name == "TaskNotFound":
        raise errors.TaskNotFound(r.error.message)
    if r.state in (pb.FAILED, pb.CANCELLED, pb.PURGED):
        raise error_from_proto(r.error).to_exception(r.task_id)
    raise errors.TaskPending(f"task {r.task_id} is {pb.TaskState.Name(r.state).lower()}")


def exception_of(r: pb.TaskResult) -> BaseException | None:
    try:
        outcome(r)
    except BaseException as exc:  # noqa: BLE001 - we hand it back, not swallow it
        return exc
    return None
