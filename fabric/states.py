"""The task state machine: which transitions are legal. Pure; no I/O.

    QUEUED ──dispatch──> DISPATCHED ──result──> SUCCESS | FAILED
      ^                      │
      └──── link lost ───────┘            cancel: QUEUED | DISPATCHED -> CANCELLED

The hub asks `next_state()` before changing a task, so an illegal event (a
result for a cancelled task, a second result) is a no-op it can count, not a
corrupted record.
"""

from __future__ import annotations

import enum


class TaskState(enum.IntEnum):
    """Numbers match the TaskState enum in protos/fabric.proto."""

    QUEUED = 1
    DISPATCHED = 2
    SUCCESS = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED})


class Event(enum.Enum):
    DISPATCH = "dispatch"
    REQUEUE = "requeue"  # the endpoint holding it went away
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"


_TRANSITIONS: dict[tuple[TaskState, Event], TaskState] = {
    (TaskState.QUEUED, Event.DISPATCH): TaskState.DISPATCHED,
    (TaskState.QUEUED, Event.CANCEL): TaskState.CANCELLED,
    # A queued task can fail without running: e.g. its function is refused.
    (TaskState.QUEUED, Event.FAIL): TaskState.FAILED,
    (TaskState.DISPATCHED, Event.REQUEUE): TaskState.QUEUED,
    (TaskState.DISPATCHED, Event.SUCCEED): TaskState.SUCCESS,
    (TaskState.DISPATCHED, Event.FAIL): TaskState.FAILED,
    (TaskState.DISPATCHED, Event.CANCEL): TaskState.CANCELLED,
    # A result may overtake the hub's own bookkeeping after a reconnect: the
    # endpoint ran a task the hub had requeued. The first result wins.
    (TaskState.QUEUED, Event.SUCCEED): TaskState.SUCCESS,
}


class IllegalTransition(Exception):
    def __init__(self, state: TaskState, event: Event) -> None:
        super().__init__(f"no transition from {state.name} on {event.value}")
        self.state = state
        self.event = event


def next_state(state: TaskState, event: Event) -> TaskState:
    """The state after `event`, or IllegalTransition."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def can(state: TaskState, event: Event) -> bool:
    return (state, event) in _TRANSITIONS
